"""Activations on disk: one safetensors file per hook, appended shard by shard, resumable.

Layout of an ``out`` folder::

    manifest.json                          what was asked (the plan); per finished shard, each file's rows,
                                           length and checksum
    index.safetensors                      (n, 3) int64: sequence, position and token id of each row
    blocks.5.hook_resid_post.safetensors   (n, d_model): one row per collected token

Each file is a valid single-tensor safetensors file whose header has a fixed size, so rows
are appended at the end and only the header's row count changes: readers memory-map one
tensor per hook (no concatenation), and ``safetensors.torch.load_file`` reads them too. A
file is opened when its hook's first rows arrive, which fixes its dtype and row shape.

A *shard* is a fixed run of batches. When one is finished, every file is flushed to disk,
then ``manifest.json`` is replaced atomically: the manifest is the only record of what is
done, with each file's length and a checksum of the bytes each shard wrote (``manifest``).
Re-running with the same ``out`` and the same plan checks the finished shards, truncates each
file to the rows of the last intact one and skips those; a folder whose manifest says
``complete`` and whose files check out is simply opened. Anything else in the way (a
different plan, a foreign folder) is refused.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zlib
from pathlib import Path

import torch

from hooklab.cache.manifest import (
    DTYPES, FORMAT, HEADER_BYTES, INDEX, MANIFEST, Damage, check_files, header_bytes, read_manifest, stream_file,
)  # fmt: skip
from hooklab.errors import OutputDirError

__all__ = ["DTYPES", "HEADER_BYTES", "INDEX", "MANIFEST", "ActivationStore", "read_manifest", "stream_file"]
log = logging.getLogger(__name__)


class _StreamFile:
    """One growing single-tensor safetensors file: rows of ``shape`` in ``dtype``."""

    def __init__(self, path: Path, name: str, dtype: torch.dtype, shape: tuple[int, ...], rows: int) -> None:
        self.path, self.name, self.dtype, self.shape = path, name, dtype, shape
        self.row_bytes = dtype.itemsize * int(torch.Size(shape).numel())
        flags = os.O_RDWR | os.O_CREAT
        self.fd = os.open(path, flags, 0o644)
        self.rows = rows
        self.crc = 0  # of the bytes appended since the last finished shard
        # Whatever lies past the recorded rows is an unfinished shard: cut it off.
        os.ftruncate(self.fd, HEADER_BYTES + rows * self.row_bytes)
        self.write_header()

    def append(self, tensor: torch.Tensor) -> None:
        data = memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
        self.crc = zlib.crc32(data, self.crc)
        offset = HEADER_BYTES + self.rows * self.row_bytes
        while data:  # a single pwrite may write less than asked (2 GiB at most on Linux)
            written = os.pwrite(self.fd, data, offset)
            data, offset = data[written:], offset + written
        self.rows += tensor.shape[0]

    def write_header(self) -> None:
        os.pwrite(self.fd, header_bytes(self.name, self.dtype, self.shape, self.rows), 0)

    def sync(self) -> dict:
        """Make the rows written so far durable and visible in the header; returns what the manifest keeps
        of them: rows, the file's length and the checksum of the bytes since the last sync."""
        self.write_header()
        os.fsync(self.fd)
        end = {"rows": self.rows, "bytes": HEADER_BYTES + self.rows * self.row_bytes, "crc32": f"{self.crc:08x}"}
        self.crc = 0
        return end

    def close(self) -> None:
        os.close(self.fd)


class ActivationStore:
    """The writing side of an ``out`` folder (see the module doc).

    Reopening a folder checks its finished shards (``verify``: their checksums too); the first damaged
    one and every later one are redone.
    """

    def __init__(self, out: str | os.PathLike, plan: dict, verify: bool = False) -> None:
        self.out = Path(out)
        self.plan = plan
        self.files: dict[str, _StreamFile] = {}
        self._lock = threading.Lock()  # writer threads add streams and record shards
        manifest = self.out / MANIFEST
        if self.out.exists() and not self.out.is_dir():
            raise OutputDirError(f"out={str(self.out)!r} is a file; give a folder (it is created if missing).")
        if manifest.is_file():
            self.manifest = read_manifest(self.out)
            if self.manifest["plan"] != plan:
                changed = sorted(k for k in plan.keys() | self.manifest["plan"].keys()
                                 if plan.get(k) != self.manifest["plan"].get(k))  # fmt: skip
                raise OutputDirError(
                    f"{self.out} holds a different collection (it differs in: {', '.join(changed)}). "
                    "Use another folder, or delete this one to start over."
                )
            damage = check_files(self.out, self.manifest, full=verify)
            if damage:
                self._redo(damage)
            if not self.complete:
                self._reopen()
            return
        if self.out.is_dir() and any(self.out.iterdir()):
            raise OutputDirError(
                f"{self.out} is not empty and is not an activation folder (no {MANIFEST}); "
                "give a new or empty folder, so nothing of yours is overwritten."
            )
        self.manifest = {"format": FORMAT, "plan": plan, "streams": {}, "rows": {}, "shards": 0, "files": [],
                         "complete": False}  # fmt: skip
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
        elif (file.dtype, file.shape) != (tensor.dtype, tuple(tensor.shape[1:])):
            self._refuse(name, file.dtype, file.shape, tensor.dtype, tuple(tensor.shape[1:]))
        file.append(tensor)

    def _open(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> _StreamFile:
        spec = {"file": stream_file(name), "dtype": str(dtype).removeprefix("torch."), "shape": list(shape)}
        with self._lock:
            known = self.manifest["streams"].setdefault(name, spec)
            rows = self.manifest["rows"].get(name, 0)
        if known != spec:
            self._refuse(name, DTYPES[known["dtype"]], tuple(known["shape"]), dtype, shape)
        return _StreamFile(self.out / spec["file"], name, dtype, shape, rows)

    def _refuse(self, name: str, dtype: torch.dtype, shape: tuple, now: torch.dtype, now_shape: tuple) -> None:
        raise OutputDirError(
            f"{self.out} holds {name} as {dtype} rows of shape {list(shape)}, but the model now gives {now} rows "
            f"of shape {list(now_shape)}. Use another folder, or delete this one."
        )

    def _redo(self, damage: list[Damage]) -> None:
        """Forget the shards from the first damaged one on (a rerun writes them again)."""
        keep = min((d.shard for d in damage if d.shard is not None), default=self.shards_done)
        log.warning("%s: %s; redoing shard %d onward (of %d)", self.out,
                    "; ".join(f"{d.path.name} {d.problem}" for d in damage), keep, self.shards_done)  # fmt: skip
        files = self.manifest["files"][:keep]
        rows = {name: end["rows"] for shard in files for name, end in shard.items()}
        self.manifest.update(files=files, shards=keep, rows=rows, complete=False)
        self._write_manifest()

    def _reopen(self) -> None:
        """Open every file of the finished shards, cut back to them, headers rewritten (a resumed run)."""
        for name, spec in self.manifest["streams"].items():
            rows = self.manifest["rows"].get(name, 0)
            if rows or (self.out / spec["file"]).exists():
                self.files[name] = _StreamFile(self.out / spec["file"], name, DTYPES[spec["dtype"]],
                                               tuple(spec["shape"]), rows)  # fmt: skip

    def sync(self, names: list[str]) -> dict[str, dict]:
        """Make ``names``' rows so far durable; returns what :meth:`record` keeps of each file."""
        return {name: self.files[name].sync() for name in names if name in self.files}

    def record(self, shards: int, ends: dict[str, dict], complete: bool = False) -> None:
        """Write the manifest: ``shards`` are finished, the last of them leaving each file as ``ends`` says.

        A shard recorded again (the last barrier of a run that ended on a shard's end) changes nothing.
        """
        with self._lock:
            files = self.manifest["files"]
            if shards > len(files):
                files.append(ends)
                self.manifest["rows"].update({name: end["rows"] for name, end in ends.items()})
            self.manifest.update(shards=len(files), complete=complete)
        self._write_manifest()

    def _write_manifest(self) -> None:
        with self._lock:
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
