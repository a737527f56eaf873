"""One pass of the model over a corpus with only the requested hooks, stopping after the last one.

Each hook hands the rows it keeps, ``(n, *shape)`` on its layer's device, to an ``emit``
callback (a writer, or a running reduction). Only these hooks run: there is no full cache,
and the forward stops right after the last requested block instead of computing the rest of
the model and the logits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm import tqdm

from hooklab import sites
from hooklab.blocks import stop_forward
from hooklab.cache.corpus import Batch, Corpus, prefetched
from hooklab.errors import CollectArgumentError, UnsupportedHookError
from hooklab.layers import hook_layer
from hooklab.model import HookedModel

Positions = Literal["all", "last"] | Bool[Tensor, "sequence pos"]
Emit = Callable[[str, Tensor], None]


class Selector:
    """Which of a batch's (batch × pos) rows to keep: all real tokens, each row's last, or a mask."""

    def __init__(self, positions: Positions) -> None:
        if isinstance(positions, Tensor):
            if positions.dtype != torch.bool or positions.dim() != 2:
                raise CollectArgumentError(
                    "positions must be 'all', 'last' or a bool mask of shape (n_sequences, pos), "
                    f"got a {positions.dtype} tensor of shape {tuple(positions.shape)}"
                )
            self.mask: Tensor | None = positions.cpu()
            self.kind = "mask"
        elif positions in ("all", "last"):
            self.mask, self.kind = None, positions
        else:
            raise CollectArgumentError(f"positions must be 'all', 'last' or a bool mask, got {positions!r}")
        self.keep: Tensor | None = None
        self._on: dict[torch.device, Tensor] = {}

    @property
    def key(self) -> str:
        """What the selection depends on, for manifests and cache keys."""
        if self.mask is None:
            return self.kind
        return "mask:" + hashlib.sha256(self.mask.numpy().tobytes() + str(tuple(self.mask.shape)).encode()).hexdigest()[:16]

    def set(self, batch: Batch) -> Int[Tensor, "n 3"]:
        """Choose the rows of ``batch`` to keep; returns their (sequence, position, token id)."""
        n_rows, width = batch.tokens.shape
        pos = torch.arange(width)
        if self.kind == "last":
            keep = torch.zeros(n_rows, width, dtype=torch.bool)
            keep[torch.arange(n_rows), batch.lengths - 1] = True
        else:
            keep = pos[None, :] < batch.lengths[:, None]  # (B, T): real tokens
            if self.mask is not None:
                seqs = batch.sequences
                if int(seqs.max()) >= self.mask.shape[0]:
                    raise CollectArgumentError(
                        f"the positions mask has {self.mask.shape[0]} rows but the data has more sequences; "
                        "give one mask row per sequence (per string of the list)."
                    )
                mask = self.mask[seqs, :width]
                keep[:, : mask.shape[1]] &= mask
                keep[:, mask.shape[1] :] = False
        flat = keep.reshape(-1).nonzero().squeeze(1)  # (n,) indices into B*T
        self.keep = None if flat.numel() == n_rows * width else flat
        self._on = {}
        b, t = flat // width, flat % width
        return torch.stack([batch.sequences[b], t, batch.tokens[b, t]], dim=1)

    def on(self, device: torch.device) -> Tensor | None:
        """The kept row indices on ``device`` (None: keep every row), moved there once per batch."""
        if self.keep is None:
            return None
        if device not in self._on:
            self._on[device] = self.keep.to(device, non_blocking=True)
        return self._on[device]


@dataclass(frozen=True)
class HookSpec:
    """What one requested hook gives per token."""

    dtype: torch.dtype
    shape: tuple[int, ...]


def stop_hook_name(model: HookedModel, hooks: list[str]) -> str | None:
    """The hook after which none of ``hooks`` fires (None: they need the whole forward)."""
    layers = [hook_layer(name) for name in hooks]
    if any(layer is None and not sites.is_embedding_hook(model, name) for name, layer in zip(hooks, layers)):
        return None  # final norm, unembedding: run to the end
    in_blocks = [layer for layer in layers if layer is not None]
    return sites.block_output(max(in_blocks)) if in_blocks else sites.block_input(0)


def hook_device(model: HookedModel, name: str) -> torch.device:
    """The device a hook's activations are on: its layer's, or the embedding's / head's."""
    layer = hook_layer(name)
    if layer is not None:
        return sites.layer_device(model, layer)
    p = model.placement
    return torch.device(p.devices[p.first] if sites.is_embedding_hook(model, name) else p.devices[p.last])


def check_layout(model: HookedModel, hooks: list[str]) -> None:
    """Refuse hooks whose activations are not laid out (batch, position, ...) before anything runs."""
    for name in hooks:
        if sites.position_dim(model, name) != 1:
            raise UnsupportedHookError(
                f"{name} is not laid out (batch, position, ...) (attention patterns are (batch, head, query, key)), "
                "so it cannot be collected per token; use model.run_with_cache for it."
            )


def _specs(hooks: list[str], seen: dict[str, HookSpec]) -> dict[str, HookSpec]:
    """What each hook gave on the first batch; every one must have fired."""
    missing = [name for name in hooks if name not in seen]
    if missing:
        raise UnsupportedHookError(
            f"{', '.join(missing)} never fired: this model's forward does not reach them; pick other hooks "
            "(model.hook_dict lists them all)."
        )
    return {name: seen[name] for name in hooks}


def _not_per_token(name: str, shape: tuple[int, ...], tokens: tuple[int, ...]) -> UnsupportedHookError:
    return UnsupportedHookError(
        f"{name} gives activations of shape {shape} for a batch of {tokens} tokens, not (batch, position, ...); "
        "it cannot be collected per token. Use model.run_with_cache for it."
    )


@torch.no_grad()
def run(
    model: HookedModel,
    corpus: Corpus,
    hooks: list[str],
    selector: Selector,
    emit: Emit,
    *,
    skip_batches: int = 0,
    after_batch: Callable[[int, Int[Tensor, "n 3"]], None] | None = None,
    on_first_batch: Callable[[dict[str, HookSpec]], None] | None = None,
    progress: bool = True,
    desc: str = "collect",
) -> int:
    """One pass over ``corpus``: every hook's kept rows to ``emit``; returns the number of batches.

    The first ``skip_batches`` batches are read but not run (a resumed collection).
    ``after_batch(i, index)`` is called after batch ``i`` ran, with its rows' (sequence, position, token).
    After the first batch that runs, every hook is checked to have fired with one row of
    activations per token, and ``on_first_batch`` gets what each gives (dtype, shape per token).
    """
    check_layout(model, hooks)

    seen: dict[str, HookSpec] = {}  # what the first batch gave
    shape: tuple[int, ...] = ()  # the running batch's (B, T)

    def capture(name: str) -> Callable:
        def hook(x: Tensor, hook: object) -> None:
            if tuple(x.shape[:2]) != shape:
                raise _not_per_token(name, tuple(x.shape), shape)
            if first:
                seen[name] = HookSpec(x.dtype, tuple(x.shape[2:]))
            rows = x.flatten(0, 1)  # (B*T, *shape)
            keep = selector.on(x.device)
            emit(name, rows if keep is None else rows.index_select(0, keep))

        return hook

    fwd = [(name, capture(name)) for name in hooks]
    stop = stop_hook_name(model, hooks)
    if stop is not None:
        fwd.append((stop, stop_forward))  # last: it fires after the others
    device = hook_device(model, "hook_embed")
    bar = tqdm(total=corpus.n_tokens, unit="tok", unit_scale=True, desc=desc, disable=not progress)
    n_batches, first = 0, True
    # The hooks are attached once for the pass: attaching them costs more than a small GPU forward.
    with bar, model.hooks(fwd_hooks=fwd):
        for i, batch in enumerate(prefetched(iter(corpus), pin=device.type == "cuda")):
            n_batches = i + 1
            if i < skip_batches:
                bar.set_postfix_str("skipping finished shards")
                bar.update(batch.n_tokens)
                continue
            index = selector.set(batch)
            shape = tuple(batch.tokens.shape)
            model.bridge.forward(batch.tokens.to(device, non_blocking=True), return_type=None)
            if first:
                specs = _specs(hooks, seen)
                first = False
                if on_first_batch is not None:
                    on_first_batch(specs)
            if after_batch is not None:
                after_batch(i, index)
            bar.update(batch.n_tokens)
    return n_batches
