"""The small safetensors files hooklab writes and reads back: edits, WISE memories, statistics.

Each is written aside and renamed into place, so an interrupted save never leaves a
half-written file under the real name; each is read only after its metadata says it is the
kind of file the caller expects.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from hooklab.errors import EditMismatchError, HooklabError


def save_atomic(tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write ``tensors`` with ``metadata`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: str | os.PathLike, *, fmt: str, what: str, error: type[HooklabError]) -> dict[str, str]:
    """The metadata of ``path``, checked to say ``format=fmt``; nothing else is read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise error(f"{path} is not a readable safetensors file ({e}).") from e
    if meta.get("format") != fmt:
        raise error(f"{path} is not a hooklab {what} (its metadata has no format={fmt!r}).")
    return meta


def refuse_other_base(meta: dict[str, str], path: str | os.PathLike, fingerprint: str) -> None:
    """Raise unless the file's ``base_fingerprint`` is ``fingerprint``: its tensors only mean
    something on the weights they were computed from."""
    if meta["base_fingerprint"] != fingerprint:
        raise EditMismatchError(
            f"{path} was made for a model with fingerprint {meta['base_fingerprint']} ({meta.get('model') or 'unnamed'}), "
            f"but this model's is {fingerprint}; load the base model it was made on (with the same earlier edits "
            "applied)."
        )
