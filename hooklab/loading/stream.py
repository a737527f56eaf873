"""The streaming loader: every tensor read from its file straight onto its device.

Never holds the model in host memory. Worker threads each read a tensor with ``preadv``
(parallel reads out of the page cache, GIL released) into a pair of pinned staging buffers,
and copy each filled buffer to its GPU on the thread's own CUDA stream while the next one
fills, so reading, host-to-device copies and the several GPUs all overlap. Writes (the
streamed merge) go the same way back: device → pinned buffer → ``pwrite``.

On the CPU, tensors are memory-mapped copy-on-write by safetensors: loading costs no copy,
and writing a weight (an edit) copies only the pages it touches, never the file.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import safe_open

from hooklab.loading.checkpoint import TensorEntry
from hooklab.loading.tensors import Wanted

CHUNK_BYTES = 8 * 1024**2  # per staging buffer; each thread owns two
GPU_READERS = 16  # threads reading towards GPUs (page-cache reads and copies scale to ~this)
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux's value; Python names it from 3.14


def read_tensors(
    wanted: Iterable[tuple[Wanted, torch.device]], threads: int | None = None
) -> dict[str, torch.Tensor]:
    """Read each wanted tensor onto its device; returns ``{name: tensor}``."""
    jobs = sorted(wanted, key=lambda job: -job[0].entry.nbytes)  # biggest first: even finish
    gpu_jobs = any(device.type == "cuda" for _, device in jobs)
    if threads is None:
        threads = min(GPU_READERS, os.cpu_count() or 1) if gpu_jobs else min(4, os.cpu_count() or 1)
    reader, loaded = TensorIO(), {}

    def work(job: tuple[Wanted, torch.device]) -> None:
        name, tensor = reader.read(*job)
        loaded[name] = tensor

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            futures = [pool.submit(work, job) for job in jobs]
        errors = [e for f in futures if (e := f.exception()) is not None]
        if errors:
            loaded.clear()
            # The workers' frames hold partly read tensors: drop them with the traceback.
            raise errors[0].with_traceback(None)
        for device in {d for _, d in jobs if d.type == "cuda"}:
            torch.cuda.synchronize(device)
        return loaded
    finally:
        reader.close()


class TensorIO:
    """Per-thread file handles, pinned staging buffers and CUDA streams, shared by reads and writes.

    ``map_whole_files=False`` maps each CPU tensor on its own instead of through one map of its
    file: a merge reads each tensor once, and its pages should leave memory with the tensor,
    not stay resident until the file is closed.
    """

    def __init__(self, map_whole_files: bool = True) -> None:
        self._map_whole_files = map_whole_files
        self._local = threading.local()
        self._fds: dict[str, int] = {}
        self._maps: dict[Path, object] = {}
        self._lock = threading.Lock()

    def _fd(self, path: os.PathLike) -> int:
        key = os.fspath(path)
        with self._lock:
            if key not in self._fds:
                self._fds[key] = os.open(key, os.O_RDONLY)
            return self._fds[key]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._maps.clear()

    def read(self, want: Wanted, device: torch.device) -> tuple[str, torch.Tensor]:
        if device.type == "cuda":
            return want.name, self._read_cuda(want, device)
        if self._map_whole_files:
            tensor = self._mapped(want.entry.file).get_tensor(want.key)
        else:
            tensor = self._map_tensor(want.entry)
        return want.name, tensor if tensor.dtype == want.dtype else tensor.to(want.dtype)

    def write(self, tensor: torch.Tensor, fd: int, offset: int) -> None:
        """Write a contiguous tensor's bytes at ``offset`` of ``fd`` (from a GPU through pinned buffers)."""
        src = _bytes_of(tensor)
        if tensor.device.type != "cuda":
            _pwrite_from(fd, src, offset)
            return
        stream = self.stream(tensor.device)
        staging = self._staging()
        events = [torch.cuda.Event(), torch.cuda.Event()]  # an event belongs to one device
        stream.wait_stream(torch.cuda.current_stream(tensor.device))  # the tensor is computed
        pending = None
        with torch.cuda.stream(stream):
            # Copy chunk i into one buffer while chunk i-1 is written from the other.
            for i, start in enumerate(range(0, src.numel(), CHUNK_BYTES)):
                n = min(CHUNK_BYTES, src.numel() - start)
                slot = i % 2
                staging[slot][:n].copy_(src[start : start + n], non_blocking=True)
                events[slot].record(stream)
                if pending is not None:
                    self._flush(pending, staging, events, fd, offset)
                pending = (slot, start, n)
            if pending is not None:
                self._flush(pending, staging, events, fd, offset)

    @staticmethod
    def _flush(pending: tuple[int, int, int], staging, events, fd: int, offset: int) -> None:
        slot, start, n = pending
        events[slot].synchronize()
        _pwrite_from(fd, staging[slot][:n], offset + start)

    def _map_tensor(self, entry: TensorEntry) -> torch.Tensor:
        """One tensor mapped copy-on-write from its file (no copy); unmapped when the tensor is freed."""
        start = entry.offset - entry.offset % mmap.ALLOCATIONGRANULARITY
        if entry.nbytes == 0 or (entry.offset - start) % entry.dtype.itemsize:
            tensor = torch.empty(entry.shape, dtype=entry.dtype)  # empty, or unaligned: read a copy
            _pread_into(self._fd(entry.file), _bytes_of(tensor), entry.offset)
            return tensor
        mapped = mmap.mmap(self._fd(entry.file), entry.offset + entry.nbytes - start, access=mmap.ACCESS_COPY, offset=start)
        try:  # fault the pages in with one call rather than one trap per 64 KB during the merge
            mapped.madvise(_MADV_POPULATE_READ)
        except OSError:  # kernels before 5.14
            mapped.madvise(mmap.MADV_WILLNEED)
        raw = torch.frombuffer(mapped, dtype=torch.uint8, offset=entry.offset - start, count=entry.nbytes)
        return raw.view(entry.dtype).reshape(entry.shape)

    def _mapped(self, path: Path):
        with self._lock:
            if path not in self._maps:
                self._maps[path] = safe_open(path, framework="pt")
            return self._maps[path]

    def _read_cuda(self, want: Wanted, device: torch.device) -> torch.Tensor:
        entry = want.entry
        raw = torch.empty(entry.shape, dtype=entry.dtype, device=device)
        stream = self.stream(device)
        staging = self._staging()
        events = [torch.cuda.Event(), torch.cuda.Event()]  # an event belongs to one device
        dst = _bytes_of(raw)
        fd = self._fd(entry.file)
        with torch.cuda.stream(stream):
            for i, start in enumerate(range(0, entry.nbytes, CHUNK_BYTES)):
                n = min(CHUNK_BYTES, entry.nbytes - start)
                slot = i % 2
                events[slot].synchronize()  # the copy that last used this buffer is done
                _pread_into(fd, staging[slot][:n], entry.offset + start)
                dst[start : start + n].copy_(staging[slot][:n], non_blocking=True)
                events[slot].record(stream)
            out = raw if entry.dtype == want.dtype else raw.to(want.dtype)
        # Staging is reused by this thread's next tensor, and a cast's source must outlive it.
        stream.synchronize()
        return out

    def stream(self, device: torch.device) -> torch.cuda.Stream:
        """This thread's CUDA stream on ``device``."""
        streams = self._local.__dict__.setdefault("streams", {})
        if device not in streams:
            streams[device] = torch.cuda.Stream(device=device)
        return streams[device]

    def _staging(self) -> list[torch.Tensor]:
        if not hasattr(self._local, "staging"):
            self._local.staging = [torch.empty(CHUNK_BYTES, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        return self._local.staging


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous tensor's storage."""
    return tensor.reshape(-1).view(torch.uint8)


def _pread_into(fd: int, buffer: torch.Tensor, offset: int) -> None:
    """Fill a CPU uint8 tensor from ``fd`` at ``offset`` (loops over short reads)."""
    view = memoryview(buffer.numpy()).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"unexpected end of file reading {len(view)} bytes at offset {offset}")
        done += n


def _pwrite_from(fd: int, buffer: torch.Tensor, offset: int) -> None:
    """Write a CPU uint8 tensor to ``fd`` at ``offset`` (loops over short writes)."""
    view = memoryview(buffer.numpy()).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
