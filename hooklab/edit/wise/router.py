"""Routing: per token, one side of the memory or the main weights answer at the side memory's layer.

Each side (a knowledge shard, or several merged) keeps the MLP keys a(x) (the input of layer L's
output projection) of the tokens its edits were trained to answer. A token goes to the side
holding the stored key most like its own (cosine, compared in a fixed random projection to
``SKETCH`` dimensions: an edit's own prompt still finds its own key, and on a small model the
comparison costs a sixth of the full one), and that side's activation score ‖Δ a‖, for
its change Δ = W_side − W_main, decides: above the threshold ε the side's weights answer (the
output becomes W_main a + b + Δ a = W_side a + b); elsewhere the main weights' output passes
unchanged. Choosing the side by its stored keys, not by the highest score, matters once there are
several sides: a side is trained to fire on its own edits and to stay silent on unrelated text,
but nothing keeps it silent on other sides' edits, so the highest score often belongs to the wrong
side. The router is a forward hook on the projection's module, present only while a memory is
attached: without one, nothing runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache, cached_property

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooklab import sites
from hooklab.errors import WiseMemoryError

SKETCH = 256  # the dimensions keys are compared in (fewer than a model's d_mlp: 1536 for SmolLM2-135M)


@cache
def _projection(d_mlp: int, device: torch.device) -> Tensor | None:
    """A fixed (seeded, drawn on the CPU) orthonormal d_mlp × SKETCH projection; None when d_mlp is no larger."""
    if d_mlp <= SKETCH:
        return None
    gaussian = torch.randn(d_mlp, SKETCH, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return torch.linalg.qr(gaussian)[0].float().to(device)


def unit(keys: Float[Tensor, "n d_mlp"]) -> Float[Tensor, "n sketch"]:
    """Keys as compared for routing: projected, in float32 (near-ties must not flip with the model's dtype), unit length."""
    projection = _projection(keys.shape[-1], keys.device)
    keys = keys.float() if projection is None else keys.float() @ projection
    return nn.functional.normalize(keys, dim=-1)


def part_of(parts: Sequence[Tensor]) -> Int[Tensor, " n"]:
    """For the rows of ``torch.cat(parts)``: the index of the part each came from."""
    device = parts[0].device if parts else None
    lengths = torch.tensor([len(p) for p in parts], dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(len(parts), device=device), lengths)


class Sides:
    """The memory's side changes with the keys each one answers, ready to route tokens."""

    def __init__(self, deltas: Sequence[Float[Tensor, "d_model d_mlp"]], keys: Sequence[Float[Tensor, "n d_mlp"]],
                 dtype: torch.dtype):  # fmt: skip
        self.deltas = [d.to(dtype) for d in deltas]
        self.keys = list(keys)
        self.owner = part_of(self.keys)  # (N,): each stored key's side

    def __len__(self) -> int:
        return len(self.deltas)

    @cached_property
    def stored(self) -> Float[Tensor, "N sketch"]:
        """The stored keys as compared (computed on first use: the floor's pool needs only the sides' changes)."""
        return unit(torch.cat(self.keys))

    def nearest(self, keys: Float[Tensor, "n d_mlp"]) -> Int[Tensor, " n"]:
        """The index of the stored key most like each of ``keys`` (cosine in the projection)."""
        return (unit(keys) @ self.stored.to(keys.device).T).argmax(-1)

    def route(self, keys: Float[Tensor, "n d_mlp"]) -> tuple[Int[Tensor, " n"], Float[Tensor, "n d_model"]]:
        """Each token's side and that side's change Δ a (in the keys' dtype)."""
        which = self.owner.to(keys.device)[self.nearest(keys)]  # a no-op move: keys are on the side's device
        return which, self.changes(keys, which)

    def changes(self, keys: Float[Tensor, "n d_mlp"], which: Int[Tensor, " n"]) -> Float[Tensor, "n d_model"]:
        """Δ_which a for each token: the tokens sorted by side, each side computing only its own (one host sync)."""
        order = which.argsort()
        counts = torch.bincount(which, minlength=len(self.deltas)).tolist()
        parts = [chunk @ delta.T.to(keys.device, keys.dtype)
                 for chunk, delta in zip(keys[order].split(counts), self.deltas, strict=True) if len(chunk)]  # fmt: skip
        out = torch.empty(len(keys), self.deltas[0].shape[0], dtype=keys.dtype, device=keys.device)
        out[order] = torch.cat(parts) if parts else out[:0]
        return out


class Router:
    """The forward hook: ``output + Δ a`` where the chosen side's score ‖Δ a‖ is above the threshold, else ``output``."""

    answers_beside_weights = True  # what the model's save_pretrained looks for: no checkpoint holds this

    def __init__(self, sides: Sides, threshold: float):
        self.sides = sides
        self.threshold = threshold

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if not len(self.sides):
            return output
        keys = args[0]  # (B, T, d_mlp)
        _, change = self.sides.route(keys.flatten(0, -2))
        routed = change.float().norm(dim=-1) > self.threshold
        return output + (change * routed[:, None].to(change.dtype)).view_as(output).to(output.dtype)


def scores(
    keys: Float[Tensor, "n d_mlp"], sides: Sequence[Float[Tensor, "d_model d_mlp"]]
) -> Float[Tensor, "n k"]:
    """‖Δ_k a‖ of each key under each side change (float32)."""
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
