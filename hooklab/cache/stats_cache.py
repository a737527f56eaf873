"""Reductions saved on disk, keyed by everything they depend on, so the second call is a file read.

The key digests the model's fingerprint, the hook, the corpus (its content and tokenizer),
and the settings that change which tokens are counted (token budget, row length, packing,
positions) and how (reduction, accumulator dtype). A folder per model fingerprint, a file per
hook and key: ``<root>/<fingerprint>/<hook>/<key>.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from hooklab.cache.moments import Mean, SecondMoment
from hooklab.tensorfiles import save_atomic

log = logging.getLogger(__name__)


def stats_key(settings: dict) -> str:
    """A short digest of the settings a reduction depends on (the hook aside)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


class StatsCache:
    """A folder of saved reductions for one model fingerprint and one key."""

    def __init__(self, root: Path, fingerprint: str, key: str) -> None:
        self.root = Path(root)
        self.fingerprint, self.key = fingerprint, key

    def path(self, hook: str) -> Path:
        return self.root / self.fingerprint / hook / f"{self.key}.safetensors"

    def get(self, hook: str, device: torch.device) -> Mean | SecondMoment | None:
        """The saved reduction for ``hook`` on ``device``, or None if there is none (or it is unreadable)."""
        path = self.path(hook)
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt", device=str(device)) as f:
                meta = f.metadata()
                count = int(meta["count"])
                mean = f.get_tensor("mean")
                moment = f.get_tensor("moment") if "moment" in f.keys() else None
        except Exception as e:  # a damaged file is recomputed, not trusted
            log.warning("ignoring unreadable statistics file %s (%s)", path, e)
            return None
        log.info("statistics for %s read from %s", hook, path)
        if moment is None:
            return Mean(hook, count, mean)
        return SecondMoment(hook, count, mean, moment)

    def put(self, result: Mean | SecondMoment, settings: dict) -> Path:
        """Save ``result`` atomically (written aside, then renamed into place)."""
        path = self.path(result.hook)
        tensors = {"mean": result.mean.detach().cpu().contiguous()}
        if isinstance(result, SecondMoment):
            tensors["moment"] = result.moment.detach().cpu().contiguous()
        meta = {"count": str(result.count), "hook": result.hook, "fingerprint": self.fingerprint}
        meta["settings"] = json.dumps(settings, sort_keys=True)
        return save_atomic(tensors, path, meta)
