"""Streaming reductions over tokens: the mean and the second moment E[x xᵀ].

ROME and MEMIT whiten their key updates with C = E[k kᵀ], the *uncentered* second moment of an
MLP's keys over a large corpus (Meng et al. 2022, eq. 2; kmeng01/rome ``layer_stats``).
Accumulators live on the device that computes the layer, so nothing leaves it until the end;
each batch's product is taken in float32 (bf16/fp16 activations are upcast) and added to
running sums in ``dtype`` (float64 by default, so millions of tokens add up without drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from hooklab.errors import CollectArgumentError

REDUCTIONS = ("mean", "second_moment")


@dataclass(frozen=True)
class Mean:
    """The mean of a hook's activation over ``count`` tokens."""

    hook: str
    count: int
    mean: Float[Tensor, "*shape"]

    def to(self, device: torch.device | str) -> Mean:
        return Mean(self.hook, self.count, self.mean.to(device))


@dataclass(frozen=True)
class SecondMoment(Mean):
    """``moment`` = E[x xᵀ] (uncentered, what ROME and MEMIT call C) over ``count`` tokens.

    ``x`` is the activation at one token, flattened to ``d`` values (``d_mlp`` for the MLP keys).

    Example:
        >>> stats = hooklab.collect(model, "corpus.txt", names="mlp.out.hook_in", layers=[17],
        ...                         reduce="second_moment", max_tokens=100_000)
        >>> C = stats["blocks.17.mlp.out.hook_in"].moment        # (d_mlp, d_mlp), float64
    """

    moment: Float[Tensor, "d d"]

    @property
    def covariance(self) -> Float[Tensor, "d d"]:
        """E[(x - μ)(x - μ)ᵀ] = E[x xᵀ] - μ μᵀ (the population covariance; × n/(n-1) for the unbiased one)."""
        mu = self.mean.reshape(-1)
        return self.moment - torch.outer(mu, mu)

    def to(self, device: torch.device | str) -> SecondMoment:
        return SecondMoment(self.hook, self.count, self.mean.to(device), self.moment.to(device))


class Accumulator:
    """Running sums of x (and of x xᵀ) for one hook, on whichever device its activations arrive."""

    def __init__(self, hook: str, reduce: str, dtype: torch.dtype = torch.float64) -> None:
        if reduce not in REDUCTIONS:
            raise CollectArgumentError(f"unknown reduction {reduce!r}; use one of {REDUCTIONS}")
        if dtype not in (torch.float32, torch.float64):
            raise CollectArgumentError(f"accumulators are float32 or float64, got {dtype}")
        self.hook, self.reduce, self.dtype = hook, reduce, dtype
        self.count = 0
        self.shape: tuple[int, ...] | None = None
        self.total: Tensor | None = None
        self.products: Tensor | None = None

    @torch.no_grad()
    def add(self, x: Float[Tensor, "n *shape"]) -> None:
        """Add ``n`` tokens' activations."""
        if self.total is None:
            self.shape = tuple(x.shape[1:])
            d = math.prod(self.shape)
            self.total = torch.zeros(d, dtype=self.dtype, device=x.device)
            if self.reduce == "second_moment":
                self.products = torch.zeros(d, d, dtype=self.dtype, device=x.device)
        flat = x.reshape(x.shape[0], self.total.shape[0])  # (n, d)
        flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        self.total += flat.sum(0, dtype=self.dtype)
        if self.products is not None:
            if self.dtype == flat.dtype:
                self.products.addmm_(flat.T, flat)
            else:
                self.products += flat.T @ flat  # (d, d) in float32, summed in float64
        self.count += x.shape[0]

    def result(self) -> Mean | SecondMoment:
        if self.total is None or self.count == 0:
            raise CollectArgumentError(f"positions kept no token at {self.hook}: nothing to reduce; keep some tokens.")
        mean = (self.total / self.count).reshape(self.shape)
        if self.products is None:
            return Mean(self.hook, self.count, mean)
        return SecondMoment(self.hook, self.count, mean, self.products / self.count)
