"""Routing: per token, the side memory or the main weights answer at the side memory's layer.

For the MLP keys a(x) of a token (the input of layer L's output projection) and each side
change Δ = W_side − W_main, the activation score is ‖Δ a(x)‖. Where the highest score is above
the threshold ε, that side's weights answer (the output becomes W_main a + b + Δ a = W_side a + b);
elsewhere the main weights' output passes unchanged. The router is a forward hook on the
projection's module, present only while a memory is attached: without one, nothing runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooklab import sites
from hooklab.errors import WiseMemoryError


class Router:
    """The forward hook: ``output + Δ_k a`` where ``max_k ‖Δ_k a‖ > threshold``, else ``output``."""

    def __init__(self, sides: Sequence[Float[Tensor, "d_model d_mlp"]], threshold: float, dtype: torch.dtype):
        # All sides in one matrix: one matmul scores every side. (k·d_model, d_mlp)
        self.stacked = torch.cat([s.to(dtype) for s in sides]) if sides else None
        self.n_sides = len(sides)
        self.threshold = threshold

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if self.stacked is None:
            return output
        keys = args[0]  # (B, T, d_mlp)
        changes = (keys @ self.stacked.T.to(keys.device)).unflatten(-1, (self.n_sides, -1))  # (B, T, k, d_model)
        scores = changes.float().norm(dim=-1)  # (B, T, k)
        best, which = scores.max(-1)  # (B, T)
        routed = best > self.threshold
        change = changes.gather(-2, which[..., None, None].expand(*which.shape, 1, changes.shape[-1]))[..., 0, :]
        return output + change.to(output.dtype) * routed[..., None].to(output.dtype)


def scores(
    keys: Float[Tensor, "n d_mlp"], sides: Sequence[Float[Tensor, "d_model d_mlp"]]
) -> Float[Tensor, "n k"]:
    """‖Δ_k a‖ of each key under each side change (float32), as the router computes them."""
    return torch.stack([(keys.float() @ s.T.float()).norm(dim=-1) for s in sides], -1)


def attached_router(module: nn.Module) -> Router | None:
    """The router hooked on ``module``, if any."""
    return next((h for h in module._forward_hooks.values() if isinstance(h, Router)), None)


def add_router(site: sites.MlpOut, router: Router) -> torch.utils.hooks.RemovableHandle:
    """Hook ``router`` on the site's module; refuses a second router on the same layer."""
    if attached_router(site.module) is not None:
        raise WiseMemoryError(
            f"layer {site.layer} already has a WISE side memory attached; detach it first "
            "(one memory per layer: add further edits to that memory)."
        )
    return site.module.register_forward_hook(router)
