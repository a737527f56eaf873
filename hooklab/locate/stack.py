"""The model's block stack, run block by block from any layer on any suffix of the positions.

Causal tracing restores one clean state at a time, and a restoration at layer L and token t
shares everything below L and everything before t with the corrupted run. ``BlockStack``
records what the model hands each block (masks, rotary tables, ...) in one ordinary forward,
then runs TransformerLens's blocks one at a time: from any layer, on positions p0..T-1 only,
with the keys and values of the positions before p0 taken from a recorded run. The blocks are
the bridge's own, so hooks fire as in any forward, on the device that holds each block.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklab import sites
from hooklab.errors import UnsupportedArchitectureError
from hooklab.loading.kv_cache import CACHE_ARGUMENTS, cache_argument
from hooklab.model import HookedModel

log = logging.getLogger(__name__)

# Block arguments that run along the positions, and the axis to slice for a suffix p0..T-1.
_POSITIONAL = {"position_ids": -1, "cache_position": -1}
# Arguments the stack sets itself on every call.
_OWN = (*CACHE_ARGUMENTS, "use_cache", "output_attentions")


class KVRecorder:
    """Takes the place of HF's cache object in a run: keeps each layer's keys and values."""

    def __init__(self) -> None:
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}

    def update(self, keys: Tensor, values: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        self.keys[layer_idx], self.values[layer_idx] = keys, values
        return keys, values


class KVPrefix:
    """Takes the place of HF's cache object for one block call: recorded keys and values of
    the positions before p0 go in front of the ones the block computes for p0..T-1.

    The batch is ``groups`` copies of the recorded rows, so the record is broadcast, not copied.
    """

    def __init__(self, keys: Float[Tensor, "samples kv p0 d_head"], values: Float[Tensor, "samples kv p0 d_head"],
                 groups: int):  # fmt: skip
        self.keys, self.values, self.groups = keys, values, groups

    def update(self, keys: Tensor, values: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        return self._join(self.keys, keys), self._join(self.values, values)

    def _join(self, before: Tensor, new: Tensor) -> Tensor:
        samples, heads, p0, d_head = before.shape
        new = new.reshape(self.groups, samples, heads, -1, d_head)  # (G, S, kv, P, dh)
        joined = torch.cat([before.expand(self.groups, -1, -1, -1, -1), new], dim=-2)
        return joined.view(self.groups * samples, heads, -1, d_head)


class BlockStack:
    """Runs the blocks of ``model`` one by one, as its forward on ``tokens`` would.

    Built by :meth:`capture`. ``slices_positions`` is False when a block receives an argument
    whose layout along the positions hooklab does not know; callers then run every position.
    """

    def __init__(self, model: HookedModel, block_kwargs: list[dict[str, Any]]):
        self.model = model
        self.n_layers = len(block_kwargs)
        self._kwargs = block_kwargs
        self.devices = [sites.layer_device(model, layer) for layer in range(self.n_layers)]
        # The name under which the blocks take HF's cache object: where KVPrefix goes.
        self._cache_arg = _cache_argument(model)
        unknown = {k for kw in block_kwargs for k, v in kw.items() if _is_unknown_positional(k, v)}
        self.slices_positions = self._cache_arg is not None and not unknown
        if not self.slices_positions:
            log.info("block arguments %s: unknown cache or position layout; every position is run", unknown)
        bridge = model.bridge
        self._norm_device = next(bridge.ln_final.parameters()).device
        self._unembed_device = next(bridge.unembed.parameters()).device

    @classmethod
    def capture(
        cls, model: HookedModel, tokens: Int[Tensor, "1 pos"], names: Sequence[str]
    ) -> tuple[BlockStack, Float[Tensor, "1 pos vocab"], dict[str, Tensor]]:
        """One ordinary forward that records every block's arguments and the hooks ``names``."""
        calls: dict[int, tuple[tuple, dict]] = {}
        with _record_block_calls(model, calls):
            logits, cache = model.run_with_cache(tokens, names_filter=list(names), use_cache=False)
        n_layers = model.cfg.n_layers
        if sorted(calls) != list(range(n_layers)):
            raise UnsupportedArchitectureError(
                f"causal tracing runs blocks one by one, but a forward of {model.cfg.architecture} called "
                f"blocks {sorted(calls)} instead of 0..{n_layers - 1} once each."
            )
        kwargs = []
        for layer in range(n_layers):  # each block's arguments live on its own device
            device = sites.layer_device(model, layer)
            kwargs.append({k: _to(v, device) for k, v in _as_kwargs(model, layer, *calls[layer]).items()})
        return cls(model, kwargs), logits, {name: cache[name] for name in names}

    def block(
        self,
        layer: int,
        resid: Float[Tensor, "rows suffix d_model"],
        p0: int = 0,
        prefix: KVPrefix | KVRecorder | None = None,
    ) -> Float[Tensor, "rows suffix d_model"]:
        """Block ``layer`` on positions ``p0..T-1``; ``prefix`` holds the keys/values before p0."""
        if p0 and not isinstance(prefix, KVPrefix):
            raise ValueError("a suffix run (p0 > 0) needs the keys and values of the positions before p0")
        kwargs = {k: _suffix(k, v, p0) for k, v in self._kwargs[layer].items()}
        if self._cache_arg is not None:
            kwargs[self._cache_arg] = prefix
        out = self.model.bridge.blocks[layer](resid.to(self.devices[layer]), use_cache=False, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def recorded(self, recorder: KVRecorder) -> None:
        """After a full run with ``recorder``: run every position from now on unless it saw every
        layer's keys and values (an attention that bypasses the cache object)."""
        if self.slices_positions and sorted(recorder.keys) != list(range(self.n_layers)):
            log.info("keys/values of layers %s were not recorded; every position is run", sorted(recorder.keys))
            self.slices_positions = False

    def logits(self, resid: Float[Tensor, "rows d_model"]) -> Float[Tensor, "rows vocab"]:
        """The unembedded final norm of one residual vector per row (the last position's)."""
        bridge = self.model.bridge
        normed = bridge.ln_final(resid[:, None].to(self._norm_device))  # (R, 1, D)
        return bridge.unembed(normed.to(self._unembed_device))[:, 0]


@contextmanager
def _record_block_calls(model: HookedModel, calls: dict[int, tuple[tuple, dict]]) -> Iterator[None]:
    """Forward pre-hooks that keep each block's (args, kwargs); always removed."""
    handles = []
    try:
        for layer, block in enumerate(model.bridge.blocks):

            def keep(module, args, kwargs, layer=layer):
                calls[layer] = (args, dict(kwargs))

            handles.append(block.register_forward_pre_hook(keep, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _as_kwargs(model: HookedModel, layer: int, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The block's call as keyword arguments (HF passes some positionally), residual dropped."""
    hf_block = model.bridge.blocks[layer].original_component
    params = inspect.signature(hf_block.forward).parameters
    bound = inspect.signature(hf_block.forward).bind_partial(*args, **kwargs).arguments
    residual = next(iter(params))
    extra = next((name for name, p in params.items() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    named = {k: v for k, v in bound.items() if k not in (residual, extra)}
    named.update(bound.get(extra, {}) if extra else {})
    for key in _OWN:
        named.pop(key, None)
    return named


def _cache_argument(model: HookedModel) -> str | None:
    return cache_argument(model.bridge.blocks[0].original_component.forward)


def _is_unknown_positional(key: str, value: Any) -> bool:
    if key in _POSITIONAL or key in ("position_embeddings", "attention_mask") or key in _OWN:
        return False
    tensors = value if isinstance(value, (tuple, list)) else (value,)
    return any(isinstance(t, Tensor) and t.dim() > 0 for t in tensors)


def _suffix(key: str, value: Any, p0: int) -> Any:
    """``value`` for the positions p0..T-1 only."""
    if p0 == 0 or value is None:
        return value
    if key == "position_embeddings":  # (cos, sin), each (batch, pos, d_rot)
        return tuple(t[..., p0:, :] for t in value)
    if key == "attention_mask" and value.dim() == 4:  # (batch, 1, query, key): drop early queries
        return value[..., p0:, :]
    if key in _POSITIONAL:
        return value[..., p0:]
    return value


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value
