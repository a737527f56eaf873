"""Activations off their devices without stalling them, into a sink on background threads.

On a GPU, each activation is copied on a side CUDA stream into one of a few page-locked
buffers of its hook, asynchronously; a writer thread waits for that one copy, hands the
buffer to the sink (a file write straight from pinned memory) and frees it. The forward only
waits when all of a hook's buffers are still being written, i.e. when the disk is behind.
On the CPU the tensor itself is queued and written while the next layers compute.

Each hook's rows go to one writer thread, in order. ``barrier`` marks a shard's end: every
thread makes its files durable, and the last one to get there records the shard.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

_POLL_S = 0.1


class Sink(Protocol):
    def append(self, name: str, tensor: Tensor) -> None: ...
    def sync(self, names: list[str]) -> dict[str, dict]: ...  # what record keeps of each file
    def record(self, shards: int, ends: dict[str, dict]) -> None: ...


class MemorySink:
    """Keeps every batch's rows in host memory; ``result`` joins them per hook."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Tensor]] = {}

    def append(self, name: str, tensor: Tensor) -> None:
        # A pinned buffer goes back to its ring once this returns: keep a copy, not the buffer.
        self.parts.setdefault(name, []).append(tensor.clone() if tensor.is_pinned() else tensor)

    def sync(self, names: list[str]) -> dict[str, dict]:
        return {}

    def record(self, shards: int, ends: dict[str, dict]) -> None:
        pass

    def result(self) -> dict[str, Tensor]:
        return {name: torch.cat(parts) for name, parts in self.parts.items()}


class _Barrier:
    def __init__(self, shards: int, owners: dict[int, list[str]], parties: int) -> None:
        self.shards, self.owners, self.left = shards, owners, parties
        self.ends: dict[str, dict] = {}
        self.lock = threading.Lock()


class _PinnedBudget:
    """Page-locked bytes shared by all hooks' rings: every ring gets one buffer, more only within the budget."""

    def __init__(self, nbytes: int) -> None:
        self.left = nbytes
        self.lock = threading.Lock()

    def reserve(self, nbytes: int) -> bool:
        with self.lock:
            if nbytes > self.left:
                return False
            self.left -= nbytes
            return True


class _PinnedRing:
    """Up to ``depth`` page-locked buffers for one hook's activations (beyond the first, as the budget allows)."""

    def __init__(self, depth: int, budget: _PinnedBudget) -> None:
        self.free: queue.Queue[Tensor] = queue.Queue()
        self.made, self.depth, self.budget = 0, depth, budget

    def take(self, nbytes: int, alive: Callable[[], None]) -> Tensor:
        while True:
            if self.free.empty() and self.made < self.depth and (self.made == 0 or self.budget.reserve(nbytes)):
                self.made += 1
                return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            try:
                buf = self.free.get(timeout=_POLL_S)
            except queue.Empty:
                alive()
                continue
            # A batch wider than the buffer (documents vary in length): replace it by a larger one.
            return buf if buf.numel() >= nbytes else torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


class Drain:
    """Moves per-hook activations to ``sink`` through ``threads`` writer threads (see the module doc).

    Each hook gets up to ``depth`` pinned buffers of one batch; buffers beyond the first share
    ``pinned_bytes``, which bounds host memory when many hooks are collected in wide batches.
    """

    def __init__(self, sink: Sink, threads: int = 1, depth: int = 2, pinned_bytes: int = 512 << 20) -> None:
        self.sink, self.depth = sink, depth
        self.budget = _PinnedBudget(pinned_bytes)
        self.queues: list[queue.Queue] = [queue.Queue(maxsize=4 * depth) for _ in range(threads)]
        self.owner: dict[str, int] = {}
        self.rings: dict[str, _PinnedRing] = {}
        self.streams: dict[torch.device, torch.cuda.Stream] = {}
        self.error: BaseException | None = None
        self.threads = [
            threading.Thread(target=self._work, args=(q,), name=f"hooklab-writer-{i}", daemon=True)
            for i, q in enumerate(self.queues)
        ]
        for thread in self.threads:
            thread.start()

    def put(self, name: str, x: Tensor) -> None:
        """Queue ``x`` (rows of hook ``name``) to be written; returns at once on a GPU."""
        self._alive()
        owner = self.owner.setdefault(name, len(self.owner) % len(self.queues))
        if x.device.type == "cuda":
            item = self._copy_to_host(name, x)
        else:
            item = (name, x, None, None)
        self._put(self.queues[owner], item)

    def barrier(self, shards: int) -> None:
        """After everything queued so far is written, make it durable and record ``shards`` as finished."""
        owners: dict[int, list[str]] = {i: [] for i in range(len(self.queues))}
        for name, i in self.owner.items():
            owners[i].append(name)
        mark = _Barrier(shards, owners, len(self.queues))
        for q in self.queues:
            self._put(q, mark)

    def close(self, raise_errors: bool = True) -> None:
        """Write everything queued (finished shards get recorded), stop the threads; raise what a writer raised.

        After a failure elsewhere, ``raise_errors=False`` keeps that failure the one reported.
        """
        self._stop()
        if self.error is not None and raise_errors:
            raise self.error

    # -- internals --------------------------------------------------------------------------

    def _copy_to_host(self, name: str, x: Tensor) -> tuple:
        ring = self.rings.setdefault(name, _PinnedRing(self.depth, self.budget))
        nbytes = x.numel() * x.element_size()
        buf = ring.take(nbytes, self._alive)
        host = buf[:nbytes].view(x.dtype).view(x.shape)
        stream = self.streams.get(x.device)
        if stream is None:
            stream = self.streams[x.device] = torch.cuda.Stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))  # x is ready once the forward's work is
        with torch.cuda.stream(stream):
            host.copy_(x, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(stream)
        x.record_stream(stream)  # the allocator must not reuse x's memory before the copy is done
        return (name, host, copied, (ring, buf))

    def _put(self, q: queue.Queue, item: object) -> None:
        while True:
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                self._alive()

    def _alive(self) -> None:
        if self.error is not None:
            raise self.error

    def _stop(self) -> None:
        for q, thread in zip(self.queues, self.threads):
            if thread.is_alive():
                while thread.is_alive():
                    try:
                        q.put(None, timeout=_POLL_S)
                        break
                    except queue.Full:
                        continue
            thread.join()

    def _work(self, q: queue.Queue) -> None:
        me = self.queues.index(q)
        while (item := q.get()) is not None:
            if self.error is not None:
                continue  # keep taking items so the producer never blocks on a failed writer
            try:
                if isinstance(item, _Barrier):
                    self._arrive(item, me)
                    continue
                name, tensor, copied, release = item
                if copied is not None:
                    copied.synchronize()
                self.sink.append(name, tensor)
                if release is not None:
                    ring, buf = release
                    ring.free.put(buf)
            except BaseException as e:
                self.error = e

    def _arrive(self, mark: _Barrier, me: int) -> None:
        ends = self.sink.sync(mark.owners[me])
        with mark.lock:
            mark.ends.update(ends)
            mark.left -= 1
            last = mark.left == 0
        if last:
            self.sink.record(mark.shards, mark.ends)
