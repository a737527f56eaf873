"""The small safetensors files hooklab writes and reads back: edits, WISE memories, statistics.

Each is written aside and renamed into place, so an interrupted save never leaves a
half-written file under the real name. Reading checks before any tensor is read: the
metadata says it is the kind of file the caller expects (format, version, fields, JSON), and
every tensor is one the caller declares from that metadata and the model (:class:`TensorSpec`),
with no tensor missing or extra. A file that fails raises the caller's error naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from hooklab.errors import EditMismatchError, HooklabError

FLOATING = ("F16", "BF16", "F32", "F64")  # safetensors' names of the floating dtypes


@dataclass(frozen=True)
class TensorSpec:
    """What one tensor of a file must be: one of ``dtypes``, of ``shape``.

    A dimension given as a name (``"d_model"``) must have the same size in every tensor that
    names it, and the size the caller knows for it, if any (from the metadata or the model).
    """

    shape: tuple[int | str, ...]
    dtypes: tuple[str, ...] = FLOATING


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


def read_metadata(
    path: str | os.PathLike,
    *,
    fmt: str,
    what: str,
    error: type[HooklabError],
    version: str | None = None,
    required: Iterable[str] = (),
) -> dict[str, str]:
    """The metadata of ``path``, checked to say ``format=fmt`` (and ``version``) and to hold ``required``."""
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file"
        raise error(f"no {what} at {path} ({found}); give the path of a {what}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise error(f"{path} is not a readable safetensors file ({e}).") from e
    if meta.get("format") != fmt:
        raise error(f"{path} is not a hooklab {what} (its metadata has no format={fmt!r}).")
    if version is not None and meta.get("version") != version:
        raise error(f"{path} is a {what} of version {meta.get('version')}; this hooklab reads version {version}.")
    missing = sorted(set(required) - set(meta))
    if missing:
        raise error(f"{path} lacks metadata {missing}; it is damaged or was not written by hooklab. Write it again.")
    return meta


def json_field(
    meta: Mapping[str, str], key: str, path: str | os.PathLike, error: type[HooklabError], kind: type | tuple
) -> Any:
    """Metadata field ``key`` parsed as JSON and checked to be a ``kind``."""
    try:
        value = json.loads(meta[key])
    except (KeyError, TypeError, ValueError) as e:
        raise error(f"{path}: metadata {key!r} is not JSON ({e}); the file is damaged. Write it again.") from None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # JSON true is no number
        names = " or ".join(k.__name__ for k in kinds)
        raise error(
            f"{path}: metadata {key!r} is {type(value).__name__}, not {names}; the file is damaged. Write it again."
        )
    return value


def check_tensors(
    path: str | os.PathLike,
    expected: Mapping[str, TensorSpec],
    *,
    error: type[HooklabError],
    dims: Mapping[str, int] | None = None,
    fix: str = "the file is damaged or was not written by hooklab; write it again",
) -> dict[str, int]:
    """Raise unless ``path`` holds exactly the tensors ``expected``, each of its dtype and shape; reads only
    the header. Returns the size of every named dimension."""
    sizes = dict(dims or {})
    found = _header(path, error)
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing:
        raise error(f"{path} lacks tensor(s) {missing} that its metadata implies; {fix}.")
    if extra:
        raise error(f"{path} holds tensor(s) {extra} that its metadata does not account for; {fix}.")
    for name, spec in expected.items():
        dtype, shape = found[name]
        if dtype not in spec.dtypes:
            raise error(f"{path}: tensor {name} is {dtype}, but it must be {' or '.join(spec.dtypes)}; {fix}.")
        wrong = len(shape) != len(spec.shape)
        for size, want in zip(shape, spec.shape):
            wrong = wrong or size != (sizes.setdefault(want, size) if isinstance(want, str) else want)
        if wrong:
            wanted = ", ".join(f"{d}={sizes[d]}" if isinstance(d, str) and d in sizes else str(d) for d in spec.shape)
            raise error(f"{path}: tensor {name} has shape {list(shape)}, but it must be [{wanted}]; {fix}.")
    return sizes


def tensor_names(path: str | os.PathLike, error: type[HooklabError]) -> set[str]:
    """The names of the tensors in ``path`` (only the header is read)."""
    return set(_header(path, error))


def _header(path: str | os.PathLike, error: type[HooklabError]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor's safetensors dtype and shape."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise error(f"{path} is not a readable safetensors file ({e}).") from e


def refuse_other_base(meta: dict[str, str], path: str | os.PathLike, fingerprint: str) -> None:
    """Raise unless the file's ``base_fingerprint`` is ``fingerprint``: its tensors only mean
    something on the weights they were computed from."""
    if meta["base_fingerprint"] != fingerprint:
        raise EditMismatchError(
            f"{path} was made for a model with fingerprint {meta['base_fingerprint']} ({meta.get('model') or 'unnamed'}), "
            f"but this model's is {fingerprint}; load the base model it was made on (with the same earlier edits "
            "applied)."
        )

