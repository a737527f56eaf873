"""Writing a standard HF checkpoint folder from tensors on any devices (``HookedModel.save_pretrained``).

TransformerLens's bridge wraps the HF modules, so ``hf_model.save_pretrained`` sees every
weight under several names and fails. Here the weights go out under their checkpoint names
(:meth:`HookedModel.named_weights`), one tensor at a time from whichever device holds it:
host memory holds at most one shard, and the model is never gathered on one device. Tied
weights are written once, under the name HF keeps (the source of the tie). Buffers are not
written: HF derives those of the architectures TransformerLens supports (rotary tables,
masks) from the config, and its own ``save_pretrained`` leaves them out too.

Everything goes into a hidden sibling folder that is put in place only when complete
(:mod:`hooklab.folders`), so the folder appears whole or not at all.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import convert_file_size_to_int
from safetensors.torch import save_file
from torch import Tensor
from transformers import PretrainedConfig

from hooklab.errors import ExportError
from hooklab.folders import clean_leftovers, partial_folder, put_in_place
from hooklab.loading.checkpoint import INDEX_NAME
from hooklab.loading.dtypes import resolve_dtype

log = logging.getLogger(__name__)


def write_checkpoint(
    out: str | os.PathLike,
    weights: dict[str, Tensor],
    config: PretrainedConfig,
    tokenizer: Any,
    generation_config: Any = None,
    *,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``weights`` (checkpoint name → tensor, on any devices), config and tokenizer as an HF folder.

    Args:
        max_shard_size: bytes per safetensors shard (``"5GB"``, ``"500MB"`` or an int); one
            ``model.safetensors`` when everything fits, else shards and ``model.safetensors.index.json``.
        dtype: of the saved weights (default: as they are in memory).
        overwrite: replace a non-empty ``out``, only once the new one is complete.
    """
    out = Path(out).expanduser()
    _refuse_occupied(out, overwrite)
    shard_bytes = _shard_bytes(max_shard_size)
    stored = next(t.dtype for t in weights.values() if t.is_floating_point())
    dtype = resolve_dtype(dtype, stored, ["cpu"])

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    staging = partial_folder(out)
    try:
        _write_shards(weights, dtype, shard_bytes, staging)
        config = copy.deepcopy(config)
        config.dtype = dtype
        config.save_pretrained(staging)
        if generation_config is not None:
            generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _refuse_occupied(out, overwrite)  # again: something may have been written there meanwhile
        put_in_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("saved %d tensors (%s) to %s", len(weights), dtype, out)
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
