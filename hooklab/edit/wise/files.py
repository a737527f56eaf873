"""WISE memory files: the shards' changes and masks in safetensors, everything else in its metadata.

A file records the fingerprint of the model the memory was made for, and loading refuses any
other model (as edit files do). Tensors are float32 changes of the side weights relative to the
main weights (so the file is independent of the model's dtype) and boolean shard masks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open

from hooklab.edit.request import EditRequest
from hooklab.edit.wise.hparams import WiseHparams
from hooklab.edit.wise.shards import Shard, Shards
from hooklab.errors import EditMismatchError, WiseMemoryError
from hooklab.model import HookedModel
from hooklab.tensorfiles import read_metadata, refuse_other_base, save_atomic

if TYPE_CHECKING:
    from hooklab.edit.wise.memory import WiseMemory

FORMAT = "hooklab-wise"
VERSION = "4"  # 2: the threshold's floor; 3: its quantile (floor_quantile); 4: every side's keys (routing)
NOT_WEIGHT_SHAPED = (".keys", ".values")  # name endings of the tensors not shaped like the side weights


def save_memory(memory: WiseMemory, path: str | os.PathLike) -> Path:
    """Write ``memory`` to ``path`` (atomically: a failed write leaves any earlier file as it was)."""
    path = Path(path)
    shards = memory.shards
    tensors: dict[str, torch.Tensor] = {}
    if shards.merged is not None:
        tensors["merged"], tensors["merged.keys"] = shards.merged, shards.merged_keys
    for i, shard in enumerate(shards.done):
        tensors[f"done.{i}.delta"], tensors[f"done.{i}.mask"], tensors[f"done.{i}.keys"] = shard.delta, shard.mask, shard.keys
    if shards.current is not None:
        tensors["current.delta"], tensors["current.mask"] = shards.current.delta, shards.current.mask
        if shards.current.keys is not None:  # what routing compares with, and later edits of this shard replay
            tensors["current.keys"], tensors["current.values"] = shards.current.keys, shards.current.values
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "base_fingerprint": memory.base_fingerprint,
        "model": memory.model.name,
        "hparams": json.dumps(memory.hparams.to_dict()),
        "templates": json.dumps(memory.templates),
        "unrelated": json.dumps(memory.unrelated),
        "requests": json.dumps([r.to_dict() for r in memory.requests]),
        "edit_scores": json.dumps(memory.edit_scores),
        "unrelated_ceiling": json.dumps(memory.unrelated_ceiling),
        "shard_edits": json.dumps({"done": [s.n_edits for s in shards.done],
                                   "current": shards.current.n_edits if shards.current else None,
                                   "started": shards.n_started, "merged": shards.n_merged}),  # fmt: skip
        "seconds": json.dumps(memory.seconds),
    }
    return save_atomic(tensors, path, metadata)


def load_memory(cls: type[WiseMemory], model: HookedModel, path: str | os.PathLike) -> WiseMemory:
    """A memory read from ``path`` for ``model``, attached; refuses a model with another fingerprint."""
    path = Path(path)
    meta = _metadata(path)
    refuse_other_base(meta, path, model.fingerprint)
    hparams = WiseHparams.from_dict(json.loads(meta["hparams"]))
    memory = cls.__new__(cls)
    memory._setup(model, hparams, json.loads(meta["unrelated"]), json.loads(meta["templates"]))
    counts = json.loads(meta["shard_edits"])
    device = memory.site.device
    shape = tuple(memory.site.weight.shape)
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        names = set(f.keys())
        for name in {n for n in names if not n.endswith(NOT_WEIGHT_SHAPED)}:
            if tuple(f.get_slice(name).get_shape()) != shape:
                raise EditMismatchError(
                    f"{path}: tensor {name} has shape {tuple(f.get_slice(name).get_shape())}, but layer "
                    f"{hparams.layer}'s MLP output projection is {shape}; the memory is for another architecture."
                )
        shards = Shards(n_started=counts["started"], n_merged=counts["merged"])
        if "merged" in names:
            shards.merged, shards.merged_keys = f.get_tensor("merged"), f.get_tensor("merged.keys")
        shards.done = [Shard(f.get_tensor(f"done.{i}.delta"), f.get_tensor(f"done.{i}.mask"), n, f.get_tensor(f"done.{i}.keys"))
                       for i, n in enumerate(counts["done"])]  # fmt: skip
        if counts["current"] is not None:
            shards.current = Shard(f.get_tensor("current.delta"), f.get_tensor("current.mask"), counts["current"])
            if "current.keys" in names:
                shards.current.keys, shards.current.values = f.get_tensor("current.keys"), f.get_tensor("current.values")
    memory.shards = shards
    memory.edit_scores = [float(s) for s in json.loads(meta["edit_scores"])]
    memory.unrelated_ceiling = float(json.loads(meta["unrelated_ceiling"]))
    memory.requests = [EditRequest.from_dict(r) for r in json.loads(meta["requests"])]
    memory.seconds = float(json.loads(meta["seconds"]))
    return memory.attach()


def _metadata(path: Path) -> dict[str, str]:
    meta = read_metadata(path, fmt=FORMAT, what="WISE memory file", error=WiseMemoryError)
    if meta.get("version") != VERSION:
        raise WiseMemoryError(f"{path} is a WISE memory file of version {meta.get('version')}; this hooklab reads {VERSION}.")
    needed = {"base_fingerprint", "hparams", "templates", "unrelated", "requests", "edit_scores", "unrelated_ceiling",
              "shard_edits"}  # fmt: skip
    missing = needed - set(meta)
    if missing:
        raise WiseMemoryError(f"{path} lacks metadata {sorted(missing)}; it was not written by hooklab.")
    return meta
