"""Match a checkpoint's tensors to the model's names, shapes and dtype kinds, before anything is read."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from hooklab.errors import CheckpointMismatchError
from hooklab.loading.checkpoint import Checkpoint, TensorEntry
from hooklab.loading.skeleton import tied_keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wanted:
    """One tensor to load: its model name, its name and place on disk, the dtype it gets."""

    name: str
    key: str
    entry: TensorEntry
    dtype: torch.dtype


def match_tensors(model: PreTrainedModel, checkpoint: Checkpoint) -> list[Wanted]:
    """Every tensor the model needs, found in the checkpoint with the right shape.

    A float parameter stored as integers (or the reverse) is refused, never cast.
    Tied tensors are loaded once (whichever name the file has); names may differ from the
    model's by the base-model prefix (``transformer.``, ``model.``), as old checkpoints do.
    """
    state = model.state_dict(keep_vars=True)
    tied = tied_keys(model)
    on_disk = checkpoint.tensors
    prefix = model.base_model_prefix + "."
    wanted, missing, used = [], [], set()
    for name, tensor in state.items():
        if name in tied:
            continue
        candidates = [name, *(t for t, s in tied.items() if s == name)]
        candidates += [c[len(prefix) :] for c in candidates if c.startswith(prefix)]
        key = next((c for c in candidates if c in on_disk), None)
        if key is None:
            missing.append(name)
            continue
        entry = on_disk[key]
        used.add(key)
        if entry.shape != tuple(tensor.shape):
            raise CheckpointMismatchError(
                f"{key} in {entry.file.name} has shape {list(entry.shape)} but the config in "
                f"{checkpoint.root} says {list(tensor.shape)}; the weights and config.json come "
                "from different models. Use the config.json saved with these weights."
            )
        if entry.dtype.is_floating_point != tensor.is_floating_point():
            # Casting would turn integer bit patterns into float garbage, or truncate floats.
            kind = "floating-point" if tensor.is_floating_point() else "integer"
            raise CheckpointMismatchError(
                f"{key} in {entry.file.name} is stored as {entry.dtype}, but the model's {name} is a "
                f"{kind} tensor ({tensor.dtype}); the file's header is damaged or was written by "
                "another tool. Re-save the checkpoint with `save_pretrained`."
            )
        dtype = tensor.dtype if tensor.is_floating_point() else entry.dtype
        wanted.append(Wanted(name, key, entry, dtype))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointMismatchError(
            f"the checkpoint in {checkpoint.root} lacks {len(missing)} tensor(s) the config asks for "
            f"({shown}); the files are incomplete or belong to another model. Re-save it with "
            "`save_pretrained`."
        )
    extra = sorted(set(on_disk) - used)
    if extra:
        log.info("ignoring %d tensors the model does not use, e.g. %s", len(extra), extra[0])
    return wanted
