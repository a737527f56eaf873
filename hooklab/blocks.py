"""The model's blocks replayed one by one from a layer on, and the pieces a forward is cut into.

Causal tracing and editing both recompute a small part of a forward many times: tracing restores
one clean state at layer L and token t, so everything below L and before t is the corrupted run;
editing changes the residual at one layer from a split position on, so everything below that
layer and before the split is fixed. :class:`BlockRecord` records, in one ordinary forward, what
the model hands each block from layer ``first`` on (masks, rotary tables, ...) and the input of
block ``first``; it then runs TransformerLens's blocks one at a time on any hidden state, over a
key/value cache the caller gives: a fresh copy of a prefix's (editing), or recorded keys and
values of the positions before p0 (tracing, :class:`KVPrefix` / :class:`KVRecorder`). The
blocks are the bridge's own, so hooks fire as in any forward, on the device that holds each block.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from accelerate.utils import send_to_device
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge.exceptions import StopAtLayerException

from hooklab import sites
from hooklab.errors import UnsupportedArchitectureError
from hooklab.loading.kv_cache import CACHE_ARGUMENTS, cache_argument

if TYPE_CHECKING:
    from hooklab.model import HookedModel

log = logging.getLogger(__name__)

T = TypeVar("T")

# Block arguments that run along the positions, and the axis to slice for a suffix p0..T-1.
_POSITIONAL = {"position_ids": -1, "cache_position": -1}
# Arguments not replayed as recorded: the cache is the caller's, attention weights are not wanted.
_OWN = (*CACHE_ARGUMENTS, "output_attentions")


def stop_forward(x: Tensor, hook: object) -> None:
    """A hook that ends the forward where it fires: TransformerLens's forward catches it and returns ``x``."""
    raise StopAtLayerException(x)


def stop_after(layer: int) -> tuple[str, Callable[[Tensor, object], None]]:
    """The hook that ends the forward after block ``layer`` (give it last: it fires after the others)."""
    return sites.resid_post(layer), stop_forward


def unembed(model: HookedModel, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """Logits from final residuals: the final norm, then the unembedding, each on its own device."""
    bridge = model.bridge
    normed = bridge.ln_final(resid.to(next(bridge.ln_final.parameters()).device))
    return bridge.unembed(normed.to(next(bridge.unembed.parameters()).device))


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


class BlockRecord:
    """Blocks ``first``..n-1 of ``model``, callable as the recorded forward called them.

    Built by :meth:`capture`. Attributes:
        resid: the input of block ``first`` in the recorded forward (None if ``first`` is n_layers).
        devices: the device of every layer's block.
        slices_positions: False when a block receives an argument whose layout along the positions
            hooklab does not know (or takes no cache); suffix runs (p0 > 0) are then not possible.
    """

    def __init__(self, model: HookedModel, first: int, block_kwargs: list[dict[str, Any]], resid: Tensor | None):
        self.model, self.first, self.resid = model, first, resid
        self.n_layers = model.cfg.n_layers
        self.devices = [sites.layer_device(model, layer) for layer in range(self.n_layers)]
        # Each block's arguments live on its own device.
        self._kwargs = [send_to_device(kw, self.devices[first + i]) for i, kw in enumerate(block_kwargs)]
        # The name under which the blocks take HF's cache object.
        self._cache_arg = cache_argument(model.bridge.blocks[0].original_component.forward)

    @classmethod
    def capture(cls, model: HookedModel, forward: Callable[[], T], first: int = 0) -> tuple[BlockRecord, T]:
        """Run ``forward()`` (one ordinary forward of ``model``) and record blocks ``first``.. on the way."""
        calls: dict[int, tuple[tuple, dict]] = {}
        layers = range(first, model.cfg.n_layers)
        handles = []
        try:  # forward pre-hooks that keep each block's (args, kwargs); always removed
            for layer in layers:

                def keep(module: torch.nn.Module, args: tuple, kwargs: dict, layer: int = layer) -> None:
                    calls[layer] = (args, dict(kwargs))

                handles.append(model.bridge.blocks[layer].register_forward_pre_hook(keep, with_kwargs=True))
            out = forward()
        finally:
            for handle in handles:
                handle.remove()
        if sorted(calls) != list(layers):
            raise UnsupportedArchitectureError(
                f"hooklab replays blocks one by one, but a forward of {model.cfg.architecture} called blocks "
                f"{sorted(calls)} instead of {first}..{model.cfg.n_layers - 1} once each."
            )
        resid = calls[first][0][0].detach() if calls else None
        return cls(model, first, [_as_kwargs(model, layer, *calls[layer]) for layer in layers], resid), out

    def block(
        self, layer: int, resid: Float[Tensor, "rows suffix d_model"], p0: int = 0, cache: Any = None
    ) -> Float[Tensor, "rows suffix d_model"]:
        """Block ``layer`` on positions ``p0..T-1``; ``cache`` (HF's cache object or a stand-in)
        holds the keys and values of the positions before p0."""
        if not self.first <= layer < self.n_layers:
            raise ValueError(f"block {layer} was not recorded: the record holds blocks {self.first}..{self.n_layers - 1}")
        if p0 and not isinstance(cache, KVPrefix):
            raise ValueError("a suffix run (p0 > 0) needs the keys and values of the positions before p0")
        kwargs = {k: _suffix(k, v, p0) for k, v in self._kwargs[layer - self.first].items()}
        if self._cache_arg is not None:
            kwargs[self._cache_arg] = cache
        out = self.model.bridge.blocks[layer](resid.to(self.devices[layer]), **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def run(self, resid: Float[Tensor, "rows pos d_model"], cache: Any = None) -> Float[Tensor, "rows pos d_model"]:
        """Blocks ``first``..n-1 in turn on every position, all over one ``cache``."""
        for layer in range(self.first, self.n_layers):
            resid = self.block(layer, resid, cache=cache)
        return resid

    @cached_property
    def slices_positions(self) -> bool:
        unknown = {k for kw in self._kwargs for k, v in kw.items() if _is_unknown_positional(k, v)}
        if self._cache_arg is None or unknown:
            log.info("block arguments %s: unknown cache or position layout; every position is run", unknown)
            return False
        return True

    def recorded(self, recorder: KVRecorder) -> None:
        """After a full run with ``recorder``: run every position from now on unless it saw every
        layer's keys and values (an attention that bypasses the cache object)."""
        if self.slices_positions and sorted(recorder.keys) != list(range(self.first, self.n_layers)):
            log.info("keys/values of layers %s were not recorded; every position is run", sorted(recorder.keys))
            self.slices_positions = False


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
