"""The merge methods hooklab knows, in one table, with their parameters checked up front.

A method's parameters are numbers, flags or choices; a number may also be a list, a gradient
over depth (mergekit's ``t: [0, 0.5, 1]``): embeddings read its first value, the final norm
and unembedding its last, layer i the value interpolated at i / (n_layers - 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hooklab.errors import MergeConfigError
from hooklab.merge import methods

Value = float | bool | str | None
Resolved = Mapping[str, Value | tuple[float, ...]]


@dataclass(frozen=True)
class Param:
    """One parameter: its default, the values it takes, and whether it may vary over depth."""

    default: Value
    choices: tuple[Value, ...] | None = None  # None: a number
    low: float | None = None
    high: float | None = None
    by_depth: bool = False

    def check(self, method: str, name: str, value: Any) -> Value | tuple[float, ...]:
        if self.choices is not None:
            if value not in self.choices:
                raise MergeConfigError(f"{method}'s {name} is {value!r}; use one of {list(self.choices)}.")
            return value
        values = value if isinstance(value, (list, tuple)) and self.by_depth else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                shape = "a number or a list of numbers (a gradient over depth)" if self.by_depth else "a number"
                raise MergeConfigError(f"{method}'s {name} is {value!r}; it must be {shape}, finite (not NaN or inf).")
            if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
                raise MergeConfigError(f"{method}'s {name} is {v}; it must lie in [{self.low}, {self.high}].")
        if isinstance(value, (list, tuple)):
            if not value:
                raise MergeConfigError(f"{method}'s {name} is an empty list; give at least one value.")
            return tuple(float(v) for v in value)
        return float(value)


@dataclass(frozen=True)
class Inputs:
    """What a method gets for one tensor: the models' tensors, their weights, the base's tensor."""

    tensors: list[Tensor]
    weights: list[float]
    base: Tensor | None
    params: Mapping[str, Value]
    generator: torch.Generator | None
    out: Tensor | None = None  # where to write the result (reused memory), if the caller has one


@dataclass(frozen=True)
class Method:
    """A merge method: how many models it takes, whether it needs a base, its parameters."""

    name: str
    summary: str
    run: Callable[[Inputs], Tensor]
    params: Mapping[str, Param]
    needs_base: bool = False
    weighted: bool = True
    n_models: int | None = None  # counting the base; None: any number

    def resolve(self, given: Mapping[str, Any] | None) -> Resolved:
        """The method's parameters: ``given`` checked against the table, defaults filled in."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise MergeConfigError(
                f"{self.name} has no parameter(s) {unknown}; its parameters are {sorted(self.params)}."
            )
        return MappingProxyType(
            {name: spec.check(self.name, name, given[name]) if name in given else spec.default
             for name, spec in self.params.items()}
        )  # fmt: skip


def at_depth(params: Resolved, depth: float) -> dict[str, Value]:
    """Parameters for a tensor at ``depth`` in [0, 1]: gradients interpolated, the rest as given."""
    out = {}
    for name, value in params.items():
        if isinstance(value, tuple):
            grid = np.linspace(0.0, 1.0, len(value))
            value = float(np.interp(depth, grid, value))
        out[name] = value
    return out


def get(name: str) -> Method:
    """The method called ``name``, or a clear error listing the known ones."""
    if name not in METHODS:
        raise MergeConfigError(f"unknown merge method {name!r}; use one of {sorted(METHODS)}.")
    return METHODS[name]


def _family_params(*, density: float, consensus: str | None, normalize: bool) -> dict[str, Param]:
    return {
        "density": Param(density, low=0.0, high=1.0, by_depth=True),
        "sparsify": Param("magnitude", choices=("magnitude", "dare")),
        "consensus": Param(consensus, choices=(None, "sum", "count")),
        "normalize": Param(normalize, choices=(True, False)),
        "rescale": Param(None, choices=(None, True, False)),
        "scale": Param(1.0, by_depth=True),
        "seed": Param(0.0),
    }


def _task_arithmetic(x: Inputs) -> Tensor:
    p = x.params
    if p["density"] <= 0:  # a gradient may switch a layer's task vectors off entirely
        return x.base.clone()
    return methods.task_arithmetic(
        x.base, x.tensors, x.weights, density=p["density"], sparsify=p["sparsify"], consensus=p["consensus"],
        normalize=p["normalize"], rescale=p["rescale"], scale=p["scale"], generator=x.generator, out=x.out,
    )  # fmt: skip


METHODS: Mapping[str, Method] = MappingProxyType(
    {
        "linear": Method(
            "linear",
            "Σ wᵢ θᵢ / Σ wᵢ (model soup; LM-Cocktail's mix, with weights='auto')",
            lambda x: methods.linear(x.tensors, x.weights, normalize=x.params["normalize"], out=x.out),
            {"normalize": Param(True, choices=(True, False))},
        ),
        "task_arithmetic": Method(
            "task_arithmetic",
            "θ_base + λ Σ wᵢ (θᵢ − θ_base); density < 1 trims (or DARE-drops) each task vector",
            _task_arithmetic,
            _family_params(density=1.0, consensus=None, normalize=False),
            needs_base=True,
        ),
        "ties": Method(
            "ties",
            "TIES: trim task vectors to the top density, elect signs, average the agreeing entries",
            _task_arithmetic,
            _family_params(density=0.2, consensus="sum", normalize=True),
            needs_base=True,
        ),
        "slerp": Method(
            "slerp",
            "spherical interpolation between two models, t=0 the first (or the base), t=1 the second",
            lambda x: methods.slerp(x.tensors[0], x.tensors[1], x.params["t"], out=x.out),
            {"t": Param(0.5, low=0.0, high=1.0, by_depth=True)},
            weighted=False,
            n_models=2,
        ),
    }
)
