"""Writing a checkpoint tensor by tensor, into a hidden folder renamed only when complete.

Every output tensor's shape and dtype is known before the first is computed, so each shard's
safetensors header (names, dtypes, shapes, byte offsets) is written first and each tensor's
bytes go straight to their offset with ``pwrite`` as soon as it is merged, in any order and
from several threads. No shard is ever assembled in memory. An interrupted merge leaves only
the hidden ``.NAME.*.partial`` folder (removed on any Python exception), never ``NAME``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from torch import Tensor

from hooklab.errors import MergeConfigError
from hooklab.folders import partial_folder, put_in_place
from hooklab.loading.checkpoint import DTYPES, INDEX_NAME
from hooklab.loading.stream import TensorIO
from hooklab.merge.sources import TensorSpec

log = logging.getLogger(__name__)

_NAME_OF_DTYPE = {dtype: name for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class Slot:
    """Where one output tensor goes: ``spec.nbytes`` bytes at ``offset`` in shard ``shard``."""

    name: str
    spec: TensorSpec
    shard: int
    offset: int


@dataclass(frozen=True)
class Plan:
    """The output's shard files, their headers, and every tensor's slot."""

    files: tuple[str, ...]
    headers: tuple[bytes, ...]
    slots: dict[str, Slot]

    @property
    def nbytes(self) -> int:
        return sum(s.spec.nbytes for s in self.slots.values())


def plan_shards(specs: dict[str, TensorSpec], shard_bytes: int) -> Plan:
    """Cut the tensors (in order) into shards of about ``shard_bytes`` and lay out each file."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, spec in specs.items():
        if groups[-1] and size + spec.nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += spec.nbytes
    n = len(groups)
    files = ("model.safetensors",) if n == 1 else tuple(f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n))
    headers, slots = [], {}
    for shard, names in enumerate(groups):
        # Widest dtypes first, as safetensors orders them, so every tensor stays aligned.
        names = sorted(names, key=lambda name: (-specs[name].dtype.itemsize, name))
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        begin = 0
        for name in names:
            spec = specs[name]
            header[name] = {"dtype": _NAME_OF_DTYPE[spec.dtype], "shape": list(spec.shape),
                            "data_offsets": [begin, begin + spec.nbytes]}  # fmt: skip
            begin += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        blob = struct.pack("<Q", len(raw)) + raw
        headers.append(blob)
        for name in names:
            start = header[name]["data_offsets"][0]  # type: ignore[index]
            slots[name] = Slot(name, specs[name], shard, len(blob) + start)
    return Plan(files, tuple(headers), slots)


class StagedCheckpoint:
    """The output folder under construction: shards written in place, committed by a rename.

    Use as a context manager: leaving it by an exception deletes everything written.
    """

    def __init__(self, out: Path, plan: Plan, *, overwrite: bool = False):
        self.out = out
        self.plan = plan
        self.overwrite = overwrite
        out.parent.mkdir(parents=True, exist_ok=True)
        self.folder = partial_folder(out)
        self._fds: list[int] = []
        try:
            for file, header, size in zip(plan.files, plan.headers, self._file_sizes()):
                fd = os.open(self.folder / file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                self._fds.append(fd)
                os.pwrite(fd, header, 0)
                os.ftruncate(fd, size)
        except BaseException:
            self.abort()
            raise

    def _file_sizes(self) -> list[int]:
        sizes = [len(h) for h in self.plan.headers]
        for slot in self.plan.slots.values():
            sizes[slot.shard] += slot.spec.nbytes
        return sizes

    def write(self, name: str, tensor: Tensor, io: TensorIO) -> None:
        """Write merged tensor ``name`` (on any device) to its place in its shard."""
        slot = self.plan.slots[name]
        if tuple(tensor.shape) != slot.spec.shape or tensor.dtype != slot.spec.dtype:
            raise RuntimeError(
                f"{name}: merged to {tuple(tensor.shape)} {tensor.dtype}, planned {slot.spec.shape} {slot.spec.dtype}"
            )
        io.write(tensor.contiguous(), self._fds[slot.shard], slot.offset)

    def commit(self) -> Path:
        """Close the shards, write the index, and move the finished folder to ``out``.

        With ``overwrite``, ``out`` stays the old complete folder until the new one takes its
        name in one step (see :mod:`hooklab.folders` for systems that cannot swap folders).
        """
        self._close()
        if len(self.plan.files) > 1:
            weight_map = {s.name: self.plan.files[s.shard] for s in sorted(self.plan.slots.values(), key=lambda s: s.name)}
            index = {"metadata": {"total_size": self.plan.nbytes}, "weight_map": weight_map}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
        if os.path.lexists(self.out) and not self.overwrite:
            raise MergeConfigError(f"{self.out} appeared while merging; pass overwrite=True or choose another out.")
        put_in_place(self.folder, self.out)
        return self.out

    def abort(self) -> None:
        """Delete everything written so far."""
        self._close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> StagedCheckpoint:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self.abort()
            log.info("merge into %s stopped (%s); nothing was left behind", self.out, kind.__name__)
