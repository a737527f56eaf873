"""One layer's weight update, ΔW of its MLP output projection: what every weight-update method
computes and :class:`~hooklab.edit.deltas.Edit` applies, undoes, saves and loads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

PARTS = ("left", "right", "dense", "keys")  # an update's tensors in an edit file: layers.<layer>.<part>


@dataclass(frozen=True)
class Update:
    """``ΔW`` of one layer's MLP output projection, (d_model, d_mlp): factors or dense.

    ``keys`` (one column per request) are kept by methods whose later edits must know the
    earlier ones' keys (AlphaEdit); they do not change the update.
    """

    layer: int
    left: Float[Tensor, "d_model rank"] | None = None
    right: Float[Tensor, "d_mlp rank"] | None = None
    dense: Float[Tensor, "d_model d_mlp"] | None = None
    keys: Float[Tensor, "d_mlp requests"] | None = None

    @classmethod
    def from_factors(cls, layer: int, left: Tensor, right: Tensor) -> Update:
        """Factors, or the dense product where that is smaller (rank above about half the width)."""
        (m, r), n = left.shape, right.shape[0]
        if r * (m + n) >= m * n:
            return cls(layer, dense=left @ right.T)
        return cls(layer, left=left, right=right)

    @property
    def shape(self) -> tuple[int, int]:
        if self.dense is not None:
            return tuple(self.dense.shape)
        return (self.left.shape[0], self.right.shape[0])

    @property
    def rank(self) -> int:
        return self.left.shape[1] if self.dense is None else min(self.dense.shape)

    def matrix(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.dense if self.dense is not None else self.left @ self.right.T

    def to(self, device: torch.device | str) -> Update:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Update(self.layer, move(self.left), move(self.right), move(self.dense), move(self.keys))

    def tensors(self) -> dict[str, Tensor]:
        out = {f"layers.{self.layer}.keys": self.keys} if self.keys is not None else {}
        if self.dense is not None:
            return {f"layers.{self.layer}.dense": self.dense, **out}
        return {f"layers.{self.layer}.left": self.left, f"layers.{self.layer}.right": self.right, **out}
