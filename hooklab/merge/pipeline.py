"""Running the per-tensor work of a merge: workers, overlapped writes, memory reused.

On a GPU each worker thread reads, merges and writes its tensors on its own CUDA stream, so
reads, kernels and writes of different tensors overlap. On the CPU one worker merges while a
background thread writes the previous tensor, so the sources still have one tensor each in
memory; results go into :class:`Scratch` memory reused from tensor to tensor, since a fresh
allocation of a tensor's size costs a page fault every 4 KB, more than the merge itself.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import torch
from torch import Tensor
from tqdm.auto import tqdm

from hooklab.loading.stream import TensorIO
from hooklab.merge.writer import Plan, StagedCheckpoint


class Scratch:
    """Named buffers that grow to the largest tensor asked for and are then reused."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < nbytes:
            buffer = self._buffers[key] = torch.empty(nbytes, dtype=torch.uint8)
        return buffer[:nbytes].view(dtype).view(shape)


MergeOne = Callable[[str, Scratch | None], Tensor]


def run_pipeline(
    plan: Plan, merge_one: MergeOne, staged: StagedCheckpoint, io: TensorIO, slot: str, workers: int, desc: str
) -> None:
    """Merge and write every planned tensor, ``workers`` at a time, with a progress bar in bytes."""
    on_gpu = slot.startswith("cuda")
    progress = tqdm(total=plan.nbytes, unit="B", unit_scale=True, desc=desc, disable=None)

    def write(name: str, tensor: Tensor) -> None:
        staged.write(name, tensor, io)
        progress.update(plan.slots[name].spec.nbytes)

    with progress:
        if on_gpu:

            def work(name: str) -> None:
                with torch.cuda.stream(io.stream(torch.device(slot))):
                    write(name, merge_one(name, None))

            for_each(interleaved(plan), work, workers)
        elif workers > 1:
            local = threading.local()

            def work(name: str) -> None:
                scratch = local.__dict__.setdefault("scratch", Scratch())
                write(name, merge_one(name, scratch))

            for_each(interleaved(plan), work, workers)
        else:
            _merge_then_write_behind(interleaved(plan), merge_one, write)


def _merge_then_write_behind(names: Iterable[str], merge_one: MergeOne, write: Callable[[str, Tensor], None]) -> None:
    """One tensor merged while the previous one is written; two scratch sets take turns."""
    scratches = (Scratch(), Scratch())
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future | None = None
        for i, name in enumerate(names):
            result = merge_one(name, scratches[i % 2])  # the other set may still be being written
            if pending is not None:
                pending.result()
            pending = writer.submit(write, name, result)
        if pending is not None:
            pending.result()


def interleaved(plan: Plan) -> list[str]:
    """Tensor names taking shards in turn, so concurrent workers write to different files."""
    by_shard: dict[int, list[str]] = {}
    for slot in sorted(plan.slots.values(), key=lambda s: s.offset):
        by_shard.setdefault(slot.shard, []).append(slot.name)
    rounds = max((len(names) for names in by_shard.values()), default=0)
    return [names[i] for i in range(rounds) for names in by_shard.values() if i < len(names)]


def for_each(items: Iterable[str], fn: Callable[[str], None], workers: int) -> None:
    """``fn`` on every item, at most ``workers`` at once; the first error stops the rest."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: set[Future] = set()
        try:
            for item in items:
                if len(pending) >= workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                pending.add(pool.submit(fn, item))
            for future in wait(pending).done:
                future.result()
        finally:
            for future in pending:
                future.cancel()
