"""Activations on disk: one safetensors file per hook, appended shard by shard, resumable.

Layout of an ``out`` folder::

    manifest.json                          what was asked (the plan), finished shards, rows per file
    index.safetensors                      (n, 3) int64: sequence, position and token id of each row
    blocks.5.hook_resid_post.safetensors   (n, d_model): one row per collected token

Each file is a valid single-tensor safetensors file whose header has a fixed size, so rows
are appended at the end and only the header's row count changes: readers memory-map one
tensor per hook (no concatenation), and ``safetensors.torch.load_file`` reads them too. A
file is opened when its hook's first rows arrive, which fixes its dtype and row shape.

A *shard* is a fixed run of batches. When one is finished, every file is flushed to disk,
then ``manifest.json`` is replaced atomically: the manifest is the only record of what is
done. Re-running with the same ``out`` and the same plan truncates each file to the rows the
manifest records and skips the finished shards; a folder whose manifest says ``complete`` is
simply opened. Anything else in the way (a different plan, a foreign folder) is refused.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch

from hooklab.errors import OutputDirError

MANIFEST = "manifest.json"
FORMAT = "hooklab-activations/1"
INDEX = "index"
HEADER_BYTES = 4096  # 8-byte length + JSON padded with spaces: data starts page-aligned
_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32",
}  # fmt: skip
DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in _SAFETENSORS_DTYPES}


def stream_file(name: str) -> str:
    return f"{name}.safetensors"


class _StreamFile:
    """One growing single-tensor safetensors file: rows of ``shape`` in ``dtype``."""

    def __init__(self, path: Path, name: str, dtype: torch.dtype, shape: tuple[int, ...], rows: int) -> None:
        self.path, self.name, self.dtype, self.shape = path, name, dtype, shape
        self.row_bytes = dtype.itemsize * int(torch.Size(shape).numel())
        flags = os.O_RDWR | os.O_CREAT
        self.fd = os.open(path, flags, 0o644)
        self.rows = rows
        # Whatever lies past the recorded rows is an unfinished shard: cut it off.
        os.ftruncate(self.fd, HEADER_BYTES + rows * self.row_bytes)
        self.write_header()

    def append(self, tensor: torch.Tensor) -> None:
        data = memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
        offset = HEADER_BYTES + self.rows * self.row_bytes
        while data:  # a single pwrite may write less than asked (2 GiB at most on Linux)
            written = os.pwrite(self.fd, data, offset)
            data, offset = data[written:], offset + written
        self.rows += tensor.shape[0]

    def write_header(self) -> None:
        header = {
            "__metadata__": {"format": FORMAT},
            self.name: {
                "dtype": _SAFETENSORS_DTYPES[self.dtype],
                "shape": [self.rows, *self.shape],
                "data_offsets": [0, self.rows * self.row_bytes],
            },
        }
        text = json.dumps(header).encode()
        if len(text) > HEADER_BYTES - 8:
            raise OutputDirError(f"the header of {self.path} does not fit in {HEADER_BYTES} bytes; use a shorter name")
        text = text.ljust(HEADER_BYTES - 8, b" ")
        os.pwrite(self.fd, (HEADER_BYTES - 8).to_bytes(8, "little") + text, 0)

    def sync(self) -> int:
        """Make the rows written so far durable and visible in the header; returns their count."""
        self.write_header()
        os.fsync(self.fd)
        return self.rows

    def close(self) -> None:
        os.close(self.fd)


class ActivationStore:
    """The writing side of an ``out`` folder (see the module doc)."""

    def __init__(self, out: str | os.PathLike, plan: dict) -> None:
        self.out = Path(out)
        self.plan = plan
        self.files: dict[str, _StreamFile] = {}
        self._lock = threading.Lock()  # writer threads add streams and record shards
        manifest = self.out / MANIFEST
        if self.out.exists() and not self.out.is_dir():
            raise OutputDirError(f"out={str(self.out)!r} is a file; give a folder (it is created if missing).")
        if manifest.is_file():
            self.manifest = _read_manifest(self.out)
            if self.manifest["plan"] != plan:
                changed = sorted(k for k in plan.keys() | self.manifest["plan"].keys()
                                 if plan.get(k) != self.manifest["plan"].get(k))  # fmt: skip
                raise OutputDirError(
                    f"{self.out} holds a different collection (it differs in: {', '.join(changed)}). "
                    "Use another folder, or delete this one to start over."
                )
            return
        if self.out.is_dir() and any(self.out.iterdir()):
            raise OutputDirError(
                f"{self.out} is not empty and is not an activation folder (no {MANIFEST}); "
                "give a new or empty folder, so nothing of yours is overwritten."
            )
        self.manifest = {"format": FORMAT, "plan": plan, "streams": {}, "rows": {}, "shards": 0, "complete": False}
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.record(0, {})  # from now on the folder is known as this collection's
        except OSError as e:
            raise OutputDirError(
                f"cannot write activations to {self.out} ({e.strerror or e}); give a folder you can write to."
            ) from e

    @property
    def shards_done(self) -> int:
        return self.manifest["shards"]

    @property
    def complete(self) -> bool:
        return self.manifest["complete"]

    def append(self, name: str, tensor: torch.Tensor) -> None:
        """Add rows to ``name``'s file (opened at its first rows, cut back to the recorded ones)."""
        file = self.files.get(name)
        if file is None:
            file = self.files[name] = self._open(name, tensor.dtype, tuple(tensor.shape[1:]))
        file.append(tensor)

    def _open(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> _StreamFile:
        spec = {"file": stream_file(name), "dtype": str(dtype).removeprefix("torch."), "shape": list(shape)}
        with self._lock:
            known = self.manifest["streams"].setdefault(name, spec)
            rows = self.manifest["rows"].get(name, 0)
        if known != spec:
            raise OutputDirError(
                f"{self.out} holds {name} as {known['dtype']} rows of shape {known['shape']}, but the model now "
                f"gives {spec['dtype']} rows of shape {spec['shape']}. Use another folder, or delete this one."
            )
        return _StreamFile(self.out / spec["file"], name, dtype, shape, rows)

    def sync(self, names: list[str]) -> dict[str, int]:
        """Make ``names``' rows so far durable; returns their counts."""
        return {name: self.files[name].sync() for name in names if name in self.files}

    def record(self, shards: int, rows: dict[str, int], complete: bool = False) -> None:
        """Write the manifest: ``shards`` are finished and hold ``rows`` rows per stream."""
        with self._lock:
            self.manifest.update(shards=shards, rows={**self.manifest["rows"], **rows}, complete=complete)
            text = json.dumps(self.manifest, indent=1)
        tmp = self.out / f"{MANIFEST}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.out / MANIFEST)

    def close(self) -> None:
        """Close the files, each cut back to its last recorded row (an unfinished shard is dropped)."""
        for name, file in self.files.items():
            try:
                file.rows = self.manifest["rows"].get(name, 0)
                os.ftruncate(file.fd, HEADER_BYTES + file.rows * file.row_bytes)
                file.write_header()
            finally:
                file.close()
        self.files.clear()


def _read_manifest(out: Path) -> dict:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise OutputDirError(f"{out / MANIFEST} is unreadable ({e}); delete {out} to start over.") from e
    if manifest.get("format") != FORMAT:
        raise OutputDirError(f"{out} holds {manifest.get('format')!r}, not {FORMAT!r} activations.")
    return manifest


def read_manifest(out: str | os.PathLike) -> dict:
    """The manifest of an activation folder (what was asked, what is done)."""
    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise OutputDirError(f"{out} is not an activation folder: it has no {MANIFEST}.")
    return _read_manifest(out)
