"""The blocks above the side memory, run from cached inputs: what one WISE training step computes.

A WISE edit changes layer L's MLP output only at the positions it trains (the prompt's last
token and the target's tokens: each row's *suffix*). Nothing before the suffix, and no layer up
to L, depends on the side memory, so the rows run once: the prefix with its keys and values kept
(:class:`~hooklab.edit.forward.SplitRows`), then the suffix through the whole model while
recording layer L's MLP keys and residual and the arguments each block above L receives. A
training step adds the side memory's change to that residual and runs only blocks L+1.. on the
suffix tokens, over a fresh copy of the prefix's keys and values: on SmolLM2 with L = 26 of 30,
about a tenth of a full forward and backward.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformers.cache_utils import Cache

from hooklab import sites
from hooklab.edit.forward import Hooks, SplitRows
from hooklab.model import HookedModel


class UpperRows:
    """Token rows split at ``split[i]``, cached up to layer ``layer``; :meth:`run` replays the blocks above.

    Attributes (suffix coordinates: index ``j`` of row ``i`` is token ``split[i] + j``):
        keys: layer ``layer``'s MLP keys at the suffix, ``(B, S, d_mlp)``.
        resid: the residual after layer ``layer`` at the suffix, ``(B, S, d_model)``.
        prefix_keys: the MLP keys of every prefix token, ``(n_prefix_tokens, d_mlp)``.
        suffix_mask: 1 where a suffix position holds a real token, ``(B, S)``.
    """

    def __init__(
        self, model: HookedModel, rows: Sequence[Sequence[int]], split: Sequence[int], layer: int, pad: int,
        hooks: Hooks = (),
    ):  # fmt: skip
        self.model = model
        self.layer = layer
        site = sites.mlp_out(model, layer)
        prefix_keys: list[Tensor] = []

        def grab_prefix(k: Tensor, hook) -> None:
            prefix_keys.append(k.detach())

        self._rows = SplitRows(model, rows, split, pad, [*hooks, (site.hook_in, grab_prefix)])
        width = self._rows.mask.shape[1] - self._rows.suffix_ids.shape[1]  # prefix width (left-padded)
        prefix_mask = self._rows.mask[:, :width].bool()
        self.prefix_keys = prefix_keys[0][prefix_mask.to(prefix_keys[0].device)] if prefix_keys else None
        self.suffix_mask = self._rows.mask[:, width:]

        found: dict[str, Tensor] = {}

        def grab(name: str):
            def hook(x: Tensor, hook) -> None:
                found[name] = x.detach()

            return hook

        self._calls: list[tuple[torch.nn.Module, tuple, dict]] = []
        blocks = [sites.block(model, i) for i in range(layer + 1, model.cfg.n_layers)]

        def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            self._calls.append((module, args[1:], dict(kwargs)))  # args[0]: the hidden states

        handles = [b.register_forward_pre_hook(record, with_kwargs=True) for b in blocks]
        try:
            capture = [(site.hook_in, grab("keys")), (sites.resid_post(layer), grab("resid"))]
            self._rows.run([*hooks, *capture], grad=False)
        finally:
            for handle in handles:
                handle.remove()
        self.keys: Float[Tensor, "batch suffix d_mlp"] = found["keys"]
        self.resid: Float[Tensor, "batch suffix d_model"] = found["resid"]

    def run(self, change: Float[Tensor, "batch suffix d_model"]) -> Float[Tensor, "batch suffix d_model"]:
        """The final residual at the suffix when layer ``layer``'s output gains ``change`` there."""
        hidden = self.resid + change.to(self.resid.dtype)
        if not self._calls:  # the side memory sits in the last block
            return hidden
        fresh = copy.deepcopy(self._rows.cache) if self._rows.cache is not None else None
        for module, args, kwargs in self._calls:
            out = module(hidden, *_swap_cache(args, fresh), **_swap_cache(kwargs, fresh))
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


def _swap_cache(value: Any, fresh: Cache | None) -> Any:
    """``value`` with every key/value cache in it replaced by ``fresh`` (the prefix's, unextended)."""
    if isinstance(value, Cache):
        return fresh
    if isinstance(value, tuple):
        return tuple(_swap_cache(v, fresh) for v in value)
    if isinstance(value, dict):
        return {k: _swap_cache(v, fresh) for k, v in value.items()}
    return value
