"""A local HF checkpoint folder: its config and where every tensor's bytes are.

Reading only headers (a few KB per file) lets the loaders validate names, shapes and file
integrity before any weight moves, and gives the streaming loader the byte offsets it reads.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, PretrainedConfig

from hooklab.errors import (
    CorruptCheckpointError,
    InvalidConfigError,
    MissingConfigError,
    UnsupportedArchitectureError,
)
from hooklab.loading.configs import check_config

INDEX_NAME = "model.safetensors.index.json"

DTYPES = {  # safetensors dtype names
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives on disk: ``nbytes`` bytes from ``offset`` in ``file``."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Checkpoint:
    """A validated HF folder: config, tokenizer folder and every tensor's location."""

    root: Path
    config: PretrainedConfig
    tensors: dict[str, TensorEntry]

    @property
    def files(self) -> list[Path]:
        return sorted({entry.file for entry in self.tensors.values()})

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.tensors.values())


def open_checkpoint(root: Path) -> Checkpoint:
    """Read and validate a checkpoint folder's config and safetensors headers."""
    config_path = root / "config.json"
    if not config_path.is_file():
        raise MissingConfigError(
            f"{root} has no config.json, so hooklab cannot tell which architecture the weights "
            "belong to. Point to the folder written by `save_pretrained` (it holds config.json "
            "next to the *.safetensors files), or pass a .gguf file."
        )
    try:
        config = AutoConfig.from_pretrained(root, local_files_only=True)
    except StrictDataclassError as e:  # transformers' typed config fields
        raise InvalidConfigError(
            f"{config_path} holds a value of the wrong type ({e}). Use the config.json saved with "
            "these weights."
        ) from e
    except (ValueError, KeyError, OSError, RecursionError) as e:
        raise UnsupportedArchitectureError(
            f"transformers cannot read {config_path}: {e}. Check that its model_type is one "
            "that your transformers version knows, or upgrade transformers."
        ) from e
    check_config(config, config_path)
    index = _index(root)
    files = sorted(set(index.values())) if index is not None else _unindexed_files(root)
    tensors: dict[str, TensorEntry] = {}
    for file in files:
        for name, entry in read_header(file).items():
            if name in tensors:
                raise CorruptCheckpointError(
                    f"{name} is stored twice, in {tensors[name].file.name} and {file.name}, so it is not "
                    f"clear which one is the model's; remove the stale shard or re-save {root} with "
                    "`save_pretrained`."
                )
            if index is not None and name in index and index[name] != file:
                raise CorruptCheckpointError(
                    f"{INDEX_NAME} puts {name} in {index[name].name}, but it is in {file.name}; the "
                    "shards and the index come from different saves. Re-save the checkpoint with "
                    "`save_pretrained` (or copy the matching files)."
                )
            tensors[name] = entry
    if index is not None and (absent := sorted(set(index) - set(tensors))):
        raise CorruptCheckpointError(
            f"{INDEX_NAME} lists {len(absent)} tensor(s) that its shards do not hold (e.g. {absent[0]} "
            f"in {index[absent[0]].name}); the shards and the index come from different saves. "
            "Re-save the checkpoint with `save_pretrained`."
        )
    return Checkpoint(root=root, config=config, tensors=tensors)


def _index(root: Path) -> dict[str, Path] | None:
    """The index's tensor name → shard file, every shard checked to lie in ``root``; None without an index."""
    index = root / INDEX_NAME
    if not index.is_file():
        return None
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(
            f"{index} is not a valid safetensors index ({type(e).__name__}: {e}); re-save the "
            "checkpoint with `save_pretrained`."
        ) from e
    if not isinstance(weight_map, dict):
        raise CorruptCheckpointError(
            f"{index}'s weight_map is a {type(weight_map).__name__}, not a mapping of tensor names to "
            'shard file names ({"model.embed_tokens.weight": "model-00001-of-00002.safetensors", ...}); '
            "re-save the checkpoint with `save_pretrained`."
        )
    if odd := next(((k, v) for k, v in weight_map.items() if not isinstance(v, str)), None):
        raise CorruptCheckpointError(
            f"{index}'s weight_map maps {odd[0]} to {odd[1]!r}, not to a shard file name; re-save the "
            "checkpoint with `save_pretrained`."
        )
    inside = os.path.normpath(root)
    shards = {}
    for file in set(weight_map.values()):
        path = os.path.normpath(os.path.join(inside, file))  # by name: a symlink in root stays allowed
        if os.path.commonpath([inside, path]) != inside or path == inside:
            raise CorruptCheckpointError(
                f"{index.name} names shard {file!r}, which is outside {root}; every shard must be a "
                "file in the model folder. Fix the index (or re-save the checkpoint with `save_pretrained`)."
            )
        shards[file] = Path(path)
    missing = sorted(f.name for f in shards.values() if not f.is_file())
    if missing:
        raise CorruptCheckpointError(
            f"{index.name} names shard(s) {missing} that are not in {root}; copy the "
            "missing files into the folder (or re-download the checkpoint)."
        )
    return {name: shards[file] for name, file in weight_map.items()}


def _unindexed_files(root: Path) -> list[Path]:
    single = root / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(root.glob("*.safetensors"))
    if len(files) == 1:
        return files
    if not files:
        raise CorruptCheckpointError(
            f"{root} has no *.safetensors weights. hooklab reads safetensors only: re-save "
            "the model with `model.save_pretrained(folder)` (safetensors is the default)."
        )
    raise CorruptCheckpointError(
        f"{root} holds several *.safetensors files but no {INDEX_NAME} saying which tensor is "
        "in which; re-save the model with `save_pretrained`, which writes the index."
    )


def read_header(file: Path) -> dict[str, TensorEntry]:
    """Validate one safetensors file and return where each of its tensors is."""
    try:
        with safe_open(file, framework="pt") as handle:  # checks header and file coverage
            handle.keys()
    except (SafetensorError, OSError) as e:
        raise CorruptCheckpointError(
            f"{file} is not a readable safetensors file ({e}). It is probably truncated or "
            "damaged: copy or download it again."
        ) from e
    with open(file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    data_start = 8 + header_len
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            raise CorruptCheckpointError(
                f"{file} stores {name} as {info['dtype']}, which hooklab cannot read; "
                "re-save the weights in a floating-point dtype."
            )
        entries[name] = TensorEntry(file, dtype, tuple(info["shape"]), data_start + begin, end - begin)
    return entries
