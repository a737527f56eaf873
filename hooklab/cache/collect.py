"""``hooklab.collect``: chosen activations over a corpus, in memory, streamed to disk, or reduced."""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal, overload

import torch
from torch import Tensor

from hooklab.cache.activations import Activations
from hooklab.cache.corpus import Corpus, Data
from hooklab.cache.moments import REDUCTIONS, Accumulator, Mean, SecondMoment
from hooklab.cache.names import resolve_hooks
from hooklab.cache.run import HookSpec, Positions, Selector, hook_device, run
from hooklab.cache.stats_cache import StatsCache, stats_key
from hooklab.cache.store import INDEX, ActivationStore
from hooklab.cache.transfer import Drain, MemorySink
from hooklab.errors import CollectArgumentError, OutputDirError
from hooklab.loading.dtypes import resolve_dtype
from hooklab.model import HookedModel
from hooklab.paths import cache_dir, human_bytes

log = logging.getLogger(__name__)

Reduction = Literal["mean", "second_moment"]


@overload
def collect(model: HookedModel, data: Data, *, reduce: None = None, **kwargs) -> Activations: ...
@overload
def collect(model: HookedModel, data: Data, *, reduce: Reduction, **kwargs) -> dict[str, Mean | SecondMoment]: ...


def collect(
    model: HookedModel,
    data: Data,
    *,
    names: str | Sequence[str] | None = None,
    layers: Iterable[int] | None = None,
    positions: Positions = "all",
    batch_size: int = 8,
    max_length: int | None = None,
    out: str | os.PathLike | None = None,
    reduce: Reduction | None = None,
    max_tokens: int | None = None,
    pack: bool | None = None,
    dtype: torch.dtype | str | None = None,
    stats_dtype: torch.dtype = torch.float64,
    stats_cache: str | os.PathLike | bool = True,
    shard_tokens: int = 1 << 16,
    verify: bool = False,
    progress: bool = True,
) -> Activations | dict[str, Mean | SecondMoment]:
    """Run the model over ``data`` with only the requested hooks; keep their activations, or reduce them.

    Args:
        data: a text file's path (read lazily, one document per non-blank line), a list of
            strings (one sequence each), or token ids ((n,) a stream, (n_seq, pos) rows).
        names: hook names: full (``"blocks.5.hook_resid_post"``) or block-relative
            (``"mlp.out.hook_in"``, expanded over ``layers``). Default ``"hook_resid_post"``.
        layers: the layers block-relative names are taken at (default: all).
        positions: ``"all"`` real tokens, each sequence's ``"last"``, or a bool mask (n_seq, pos).
        max_length: row length; packed rows default to 512, unpacked sequences to the context.
        out: a folder to stream activations to (memory-mapped on return; rerun to resume).
        reduce: ``"mean"`` or ``"second_moment"`` (E[x xᵀ] with count and mean) per hook,
            accumulated on the hook's device; saved in ``stats_cache`` and read from there next time.
        max_tokens: stop after this many tokens of ``data``.
        pack: pack documents into full rows (default for files and 1-D ids), or one row each.
        dtype: dtype activations are stored in (default: the model's); bfloat16 halves the disk.
        stats_dtype: accumulator dtype of reductions (float64 or float32).
        stats_cache: folder for saved reductions (True: ``$HOOKLAB_CACHE/stats``; False: none).
        shard_tokens: tokens per shard of ``out``: the unit a rerun resumes from.
        verify: when ``out`` holds finished shards, check each against its checksum (reads them all),
            not only the files' lengths and headers; damaged shards are redone either way.

    Example:
        >>> acts = hooklab.collect(model, ["The Eiffel Tower is in"], layers=[10, 20], positions="last")
        >>> acts["blocks.20.hook_resid_post"].shape                     # (1, 576)
        >>> stats = hooklab.collect(model, "wiki.txt", names="mlp.out.hook_in", reduce="second_moment")
    """
    if reduce is not None and reduce not in REDUCTIONS:
        raise CollectArgumentError(f"reduce must be None, 'mean' or 'second_moment', got {reduce!r}")
    if reduce is not None and out is not None:
        raise CollectArgumentError("out= stores activations; a reduction is kept in stats_cache. Drop one of the two.")
    if stats_dtype not in (torch.float32, torch.float64):
        raise CollectArgumentError(f"stats_dtype must be torch.float64 or torch.float32, got {stats_dtype}")
    hooks = resolve_hooks(model, names, layers)
    selector = Selector(positions)
    corpus = Corpus(
        data, model.tokenizer, batch_size=batch_size, max_length=max_length, pack=pack,
        max_tokens=max_tokens, context_length=model.cfg.n_ctx,
    )  # fmt: skip
    if selector.mask is not None and corpus.pack:
        raise CollectArgumentError("a positions mask needs one row per sequence: pass pack=False (packed rows cut documents).")
    store_dtype = None if dtype is None else resolve_dtype(dtype, torch.float32, ())
    if out is None and reduce is None:
        return _in_memory(model, corpus, hooks, selector, store_dtype, progress)
    settings = {
        "corpus": corpus.digest(), "positions": selector.key, "max_length": corpus.max_length,
        "pack": corpus.pack, "max_tokens": max_tokens,
    }  # fmt: skip
    if reduce is not None:
        return _reduce(model, corpus, hooks, selector, reduce, stats_dtype, stats_cache, settings, progress)
    plan = {
        "model": model.fingerprint, **settings, "hooks": hooks, "batch_size": batch_size,
        "dtype": None if store_dtype is None else str(store_dtype),
        "shard_batches": max(1, math.ceil(shard_tokens / (batch_size * corpus.max_length))),
    }  # fmt: skip
    store = ActivationStore(out, plan, verify=verify)
    if store.complete:
        log.info("%s already holds this collection; opening it", out)
        return Activations.load(out)
    return _to_disk(model, corpus, hooks, selector, store_dtype, store, progress)


def _emit_to(drain: Drain, dtype: torch.dtype | None) -> Callable[[str, Tensor], None]:
    def emit(name: str, rows: Tensor) -> None:
        if rows.device.type == "cpu":  # rows may be the model's own tensor: the writer gets a copy
            rows = rows.to(dtype or rows.dtype, copy=True)
        elif dtype is not None:
            rows = rows.to(dtype)  # on the device: less to copy off it
        drain.put(name, rows)

    return emit


def _in_memory(
    model: HookedModel, corpus: Corpus, hooks: list[str], selector: Selector, store_dtype: torch.dtype | None,
    progress: bool,
) -> Activations:
    sink = MemorySink()
    drain = Drain(sink, threads=1)
    specs: dict[str, HookSpec] = {}
    try:
        run(model, corpus, hooks, selector, _emit_to(drain, store_dtype), progress=progress,
            after_batch=lambda i, index: drain.put(INDEX, index), on_first_batch=specs.update)  # fmt: skip
    except BaseException:
        drain.close(raise_errors=False)
        raise
    drain.close()
    tensors = sink.result()
    index = tensors.pop(INDEX)
    for name, spec in specs.items():  # a hook whose mask kept no row at all
        tensors.setdefault(name, torch.empty(0, *spec.shape, dtype=store_dtype or spec.dtype))
    return Activations({name: tensors[name] for name in hooks}, index)


def _to_disk(
    model: HookedModel, corpus: Corpus, hooks: list[str], selector: Selector, store_dtype: torch.dtype | None,
    store: ActivationStore, progress: bool,
) -> Activations:
    out, shard_batches = store.out, store.plan["shard_batches"]
    skip = store.shards_done * shard_batches
    if skip:
        log.info("resuming %s: %d shard(s) of %d batches are done", out, store.shards_done, shard_batches)
    gpu = any(hook_device(model, name).type == "cuda" for name in hooks)
    drain = Drain(store, threads=4 if gpu else 1)

    def after_batch(i: int, index: Tensor) -> None:
        drain.put(INDEX, index)
        if (i + 1) % shard_batches == 0:
            drain.barrier((i + 1) // shard_batches)

    def check_space(specs: dict[str, HookSpec]) -> None:
        if selector.kind == "all":
            per_token = 24 + sum((store_dtype or s.dtype).itemsize * math.prod(s.shape) for s in specs.values())
            _check_free_space(out, corpus, per_token, store)

    try:
        n_batches = run(model, corpus, hooks, selector, _emit_to(drain, store_dtype), skip_batches=skip,
                        after_batch=after_batch, on_first_batch=check_space, progress=progress)  # fmt: skip
        drain.barrier(math.ceil(n_batches / shard_batches))
        drain.close()
        store.record(store.shards_done, {}, complete=True)
    except BaseException:
        drain.close(raise_errors=False)  # what was computed is written; finished shards are recorded
        raise
    finally:
        store.close()
    return Activations.load(out)


def _check_free_space(out: Path, corpus: Corpus, per_token: int, store: ActivationStore) -> None:
    """Refuse early a collection that cannot fit on the disk (where its size is known)."""
    total = corpus.n_tokens
    if total is None:
        return
    left = total - store.manifest["rows"].get(INDEX, 0)
    free = shutil.disk_usage(out).free
    if left * per_token > free:
        raise OutputDirError(
            f"collecting {left} more tokens into {out} needs {human_bytes(left * per_token)} but only "
            f"{human_bytes(free)} is free; store in dtype=torch.bfloat16, collect fewer hooks or tokens "
            "(max_tokens=), or use another disk."
        )


def _reduce(
    model: HookedModel, corpus: Corpus, hooks: list[str], selector: Selector, reduce: Reduction,
    stats_dtype: torch.dtype, stats_cache: str | os.PathLike | bool, settings: dict, progress: bool,
) -> dict[str, Mean | SecondMoment]:
    key_settings = {**settings, "reduce": reduce, "stats_dtype": str(stats_dtype)}
    cache = None
    if stats_cache is not False:
        root = cache_dir() / "stats" if stats_cache is True else Path(stats_cache)
        cache = StatsCache(root, model.fingerprint, stats_key(key_settings))
    results: dict[str, Mean | SecondMoment] = {}
    for name in hooks:
        hit = cache.get(name, hook_device(model, name)) if cache else None
        if hit is not None:
            results[name] = hit
    todo = [name for name in hooks if name not in results]
    if todo:
        accumulators = {name: Accumulator(name, reduce, stats_dtype) for name in todo}
        run(model, corpus, todo, selector, lambda name, rows: accumulators[name].add(rows),
            progress=progress, desc=reduce)  # fmt: skip
        for name in todo:
            results[name] = accumulators[name].result()
            if cache:
                cache.put(results[name], {**key_settings, "hook": name})
    return {name: results[name] for name in hooks}
