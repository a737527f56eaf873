"""Saving a loaded model, edits applied, as a standard HF checkpoint folder.

TransformerLens's bridge wraps the HF modules, so ``hf_model.save_pretrained`` sees every
weight under several names and fails. Here the weights go out under their checkpoint names
(:meth:`HookedModel.named_weights`), one tensor at a time from whichever device holds it:
host memory holds at most one shard, and the model is never gathered on one device. Tied
weights are written once, under the name HF keeps (the source of the tie). Buffers are not
written: HF derives those of the architectures TransformerLens supports (rotary tables,
masks) from the config, and its own ``save_pretrained`` leaves them out too.

Everything goes into a hidden sibling folder that is renamed into place only when complete,
so the folder appears whole or not at all.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import shutil
from pathlib import Path

import torch
from accelerate.utils import convert_file_size_to_int
from safetensors.torch import save_file
from torch import Tensor
from transformers import PretrainedConfig

from hooklab.edit.wise.router import attached_router
from hooklab.errors import ExportError
from hooklab.loading.checkpoint import INDEX_NAME
from hooklab.loading.dtypes import resolve_dtype
from hooklab.loading.skeleton import tied_keys
from hooklab.model import HookedModel

log = logging.getLogger(__name__)


def save_pretrained(
    model: HookedModel,
    folder: str | os.PathLike,
    max_shard_size: int | str = "5GB",
    *,
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model``'s current weights, config, generation config and tokenizer to ``folder``.

    Args:
        max_shard_size: bytes per safetensors shard (``"5GB"``, ``"500MB"`` or an int); one
            ``model.safetensors`` when everything fits, else shards and ``model.safetensors.index.json``.
        dtype: of the saved weights (default: as they are in memory).
        overwrite: replace a non-empty ``folder``, only once the new one is complete.

    Example:
        >>> hooklab.apply_edit(model, "eiffel.safetensors")
        >>> model.save_pretrained("smollm2-edited")      # transformers and hooklab.load read it
    """
    out = Path(folder).expanduser()
    _refuse_attached_memory(model)
    _refuse_processed_weights(model)
    _refuse_occupied(out, overwrite)
    shard_bytes = _shard_bytes(max_shard_size)
    weights = _checkpoint_tensors(model)
    stored = next(t.dtype for t in weights.values() if t.is_floating_point())
    dtype = resolve_dtype(dtype, stored, ["cpu"])

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")  # mkdtemp's would be private (0700)
    staging.mkdir()
    try:
        _write_shards(weights, dtype, shard_bytes, staging)
        _config(model, dtype).save_pretrained(staging)
        generation = getattr(model.hf_model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(staging)
        model.tokenizer.save_pretrained(staging)
        _refuse_occupied(out, overwrite)  # again: something may have been written there meanwhile
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("saved %s (%d tensors, %s) to %s", model.name, len(weights), dtype, out)
    return out


def _refuse_occupied(out: Path, overwrite: bool) -> None:
    if out.is_file():
        raise ExportError(f"{out} is a file; save the checkpoint to a folder (a new or an empty one).")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(
            f"{out} already exists and is not an empty folder; choose another folder, or pass overwrite=True "
            "(the old one is replaced only once the new checkpoint is complete)."
        )


def _shard_bytes(size: int | str) -> int:
    """``"2GB"``, ``"500MiB"``, ``"1000"`` or 1000 as a positive number of bytes."""
    try:
        n = int(size) if isinstance(size, int) or str(size).isdigit() else convert_file_size_to_int(size)
    except ValueError:
        n = 0
    if n <= 0:
        raise ExportError(f"max_shard_size={size!r} is not a size; give bytes (an integer) or a string such as '2GB'.")
    return n


def _refuse_attached_memory(model: HookedModel) -> None:
    """A WISE memory answers through a router hook, not through weights, so it cannot be saved as them."""
    if any(attached_router(module) is not None for module in model.hf_model.modules()):
        raise ExportError(
            "a WISE side memory is attached to this model: its edits live in the memory's router, not in "
            "the weights, so a plain checkpoint cannot hold them. Save the memory with `mem.save(path)` (and "
            "`WiseMemory.load(model, path)` after loading the saved base model), then `mem.detach()` and save "
            "the model."
        )


def _refuse_processed_weights(model: HookedModel) -> None:
    """TransformerLens's weight processing keeps part of its result in its own components, out of HF's reach."""
    if getattr(model.bridge, "_weights_processed", False):  # TransformerLens's own mark, set before it starts
        raise ExportError(
            "TransformerLens's weight processing (enable_compatibility_mode() or process_weights()) rewrote this "
            "model's weights, and part of the result (for instance GPT-2's split attention, or value biases folded "
            "into output projections that have no bias) lives in TransformerLens's components, where no HF "
            "checkpoint can hold it. Save the model before processing it, or load it afresh and save that."
        )


def _checkpoint_tensors(model: HookedModel) -> dict[str, Tensor]:
    """Checkpoint name → tensor, a tied tensor under the name HF keeps (the tie's source)."""
    weights = dict(model.named_weights())
    for target, source in tied_keys(model.hf_model).items():
        if target in weights and source not in weights:
            weights[source] = weights.pop(target)
    return weights


def _write_shards(weights: dict[str, Tensor], dtype: torch.dtype, shard_bytes: int, folder: Path) -> None:
    """Shards of about ``shard_bytes`` (HF's names), each filled one tensor at a time on the CPU."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, tensor in weights.items():
        nbytes = tensor.numel() * _saved_dtype(tensor, dtype).itemsize
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    n = len(groups)
    files = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for file, names in zip(files, groups):
        shard = {name: _on_cpu(weights[name], dtype) for name in names}
        save_file(shard, folder / file, metadata={"format": "pt"})
        del shard  # freed before the next shard's tensors come to the CPU
    if n > 1:
        weight_map = {name: file for file, names in zip(files, groups) for name in names}
        total = sum(t.numel() * _saved_dtype(t, dtype).itemsize for t in weights.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def _saved_dtype(tensor: Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if tensor.is_floating_point() else tensor.dtype


def _on_cpu(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """The tensor on the CPU, contiguous, floating-point ones in ``dtype`` (no copy where it already is)."""
    return tensor.detach().to("cpu", _saved_dtype(tensor, dtype)).contiguous()


def _config(model: HookedModel, dtype: torch.dtype) -> PretrainedConfig:
    """The model's config, saying the dtype the weights are saved in and (as HF's own save does) the model class."""
    config = copy.deepcopy(model.hf_model.config)
    config.dtype = dtype
    config.architectures = [type(model.hf_model).__name__]  # a config read from a GGUF file has none
    return config


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old ``out`` is moved aside first and deleted last."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{os.getpid()}.replaced")
        out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
