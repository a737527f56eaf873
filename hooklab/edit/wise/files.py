"""WISE memory files: the shards' changes and masks in safetensors, everything else in its metadata.

A file records the fingerprint of the model the memory was made for, and loading refuses any
other model (as edit files do). Tensors are float32 changes of the side weights relative to the
main weights (so the file is independent of the model's dtype) and boolean shard masks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from safetensors import safe_open

from hooklab import sites
from hooklab.edit.request import EditRequest
from hooklab.edit.wise.hparams import WiseHparams
from hooklab.edit.wise.shards import Shard, Shards
from hooklab.errors import HooklabError, HparamsError, WiseMemoryError
from hooklab.model import HookedModel
from hooklab.tensorfiles import (
    TensorSpec,
    check_tensors,
    json_field,
    read_metadata,
    refuse_other_base,
    save_atomic,
    tensor_names,
)  # fmt: skip


class Memory(Protocol):
    """What these functions read and fill of a WISE memory (``WiseMemory``, which calls them)."""

    model: HookedModel
    hparams: WiseHparams
    site: sites.MlpOut
    base_fingerprint: str
    templates: list[str]
    unrelated: list[str]
    shards: Shards
    requests: list[EditRequest]
    edit_scores: list[float]
    unrelated_ceiling: float
    seconds: float

    def attach(self) -> Memory: ...


M = TypeVar("M", bound=Memory)

FORMAT = "hooklab-wise"
VERSION = "4"  # 2: the threshold's floor; 3: its quantile (floor_quantile); 4: every side's keys (routing)
DAMAGED = "the file is damaged or was not written by hooklab; save the memory again (WiseMemory.save)"


def save_memory(memory: Memory, path: str | os.PathLike) -> Path:
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


def load_memory(cls: Callable[..., M], model: HookedModel, path: str | os.PathLike) -> M:
    """A memory read from ``path`` for ``model``, attached; refuses a model with another fingerprint.

    Everything is checked before the memory is built: the metadata, and every tensor against what
    the shard counts and the side layer imply. A refused file leaves the model as it was.
    """
    path = Path(path)
    meta = read_metadata(path, fmt=FORMAT, what="WISE memory file", error=WiseMemoryError, version=VERSION,
                         required=_METADATA)  # fmt: skip
    refuse_other_base(meta, path, model.fingerprint)
    field = lambda key, kind: json_field(meta, key, path, WiseMemoryError, kind)  # noqa: E731
    try:
        hparams = WiseHparams.from_dict(field("hparams", dict))
        hparams.check(model.cfg.n_layers)
    except HparamsError as e:
        raise WiseMemoryError(
            f"{path}: its hparams do not fit this model ({e}); {DAMAGED}, or it is for another model."
        ) from None
    counts = _counts(field("shard_edits", dict), path)
    texts = {key: field(key, list) for key in ("templates", "unrelated", "requests", "edit_scores")}
    numbers = {key: field(key, (int, float)) for key in ("unrelated_ceiling", "seconds")}
    strings = all(isinstance(t, str) for key in ("templates", "unrelated") for t in texts[key])
    scores = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in texts["edit_scores"])
    if not (strings and scores and texts["unrelated"] and all(t.strip() for t in texts["unrelated"])):
        raise WiseMemoryError(f"{path}: its templates, unrelated texts or edit scores are malformed; {DAMAGED}.")
    try:
        requests = [EditRequest.from_dict(r) for r in texts["requests"]]
    except (HooklabError, TypeError) as e:
        raise WiseMemoryError(
            f"{path}: metadata 'requests' holds something other than edit requests ({e}); {DAMAGED}."
        ) from None
    d_model, d_mlp = sites.mlp_out(model, hparams.layer).weight.shape
    check_tensors(
        path, _expected(counts, tensor_names(path, WiseMemoryError)), error=WiseMemoryError,
        dims={"d_model": d_model, "d_mlp": d_mlp},
        fix=f"the memory is damaged or for another architecture (layer {hparams.layer}'s MLP output projection is "
            f"[{d_model}, {d_mlp}])",
    )  # fmt: skip
    memory = cls(model, hparams, unrelated=texts["unrelated"], templates=texts["templates"], attach=False)
    with safe_open(str(path), framework="pt", device=str(memory.site.device)) as f:
        names = set(f.keys())
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
    memory.edit_scores = [float(s) for s in texts["edit_scores"]]
    memory.unrelated_ceiling = float(numbers["unrelated_ceiling"])
    memory.requests = requests
    memory.seconds = float(numbers["seconds"])
    return memory.attach()


_METADATA = ("base_fingerprint", "hparams", "templates", "unrelated", "requests", "edit_scores", "unrelated_ceiling",
             "shard_edits", "seconds")  # fmt: skip


def _counts(counts: dict, path: Path) -> dict:
    """The shard counts of a memory file, checked to be counts that fit together."""

    def count(x: object) -> bool:
        return type(x) is int and x >= 0

    ok = (set(counts) == {"done", "current", "started", "merged"} and isinstance(counts["done"], list)
          and all(count(n) for n in counts["done"]) and (counts["current"] is None or count(counts["current"]))
          and count(counts["started"]) and count(counts["merged"])
          and counts["started"] >= len(counts["done"]) + (counts["current"] is not None))  # fmt: skip
    if not ok:
        raise WiseMemoryError(
            f"{path}: metadata 'shard_edits' is not a valid set of shard counts ({counts}); {DAMAGED}."
        )
    return counts


def _expected(counts: dict, names: set[str]) -> dict[str, TensorSpec]:
    """The tensors a memory file with these shard counts holds: changes and masks shaped like the side weights,
    each side's keys (d_mlp wide) and the open shard's values (d_model wide)."""
    side, mask = TensorSpec(("d_model", "d_mlp")), TensorSpec(("d_model", "d_mlp"), ("BOOL",))
    expected: dict[str, TensorSpec] = {}
    if counts["merged"]:
        expected.update({"merged": side, "merged.keys": TensorSpec(("merged keys", "d_mlp"))})
    for i in range(len(counts["done"])):
        keys = TensorSpec((f"keys {i}", "d_mlp"))
        expected.update({f"done.{i}.delta": side, f"done.{i}.mask": mask, f"done.{i}.keys": keys})
    if counts["current"] is not None:
        expected.update({"current.delta": side, "current.mask": mask})
        if names & {"current.keys", "current.values"}:
            expected.update({"current.keys": TensorSpec(("current keys", "d_mlp")),
                             "current.values": TensorSpec(("current keys", "d_model"))})  # fmt: skip
    return expected
