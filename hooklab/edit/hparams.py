"""Hyperparameters of ROME and MEMIT: frozen dataclasses, defaults per model size, strict loading.

They hold numbers only. Where to write is a layer index (``sites`` knows the module), and
devices and dtypes are the model's. Loading from a dict, JSON or YAML is strict: every field
must be given and no other, so a typo fails instead of silently using a default.

Defaults by size: models under 1B parameters take the values chosen on SmolLM2-135M over the
CounterFact known dev facts (``benchmarks/results/edit-quality.md``); larger ones take the
published values for GPT-J-6B (ROME and MEMIT papers). Edit layers: ROME at layer 5 of 30 and
MEMIT over layers 4–8 (EasyEdit's choices for this model), kept because they held on dev —
ROME at layer 5 reached ES 1.00 on the first 53 dev facts with NS at most a few records below
the unedited model's, and MEMIT over 4–8 with λ = 500 (GPT-J's λ = 15000 leaves most edits
unwritten here). λ grows with batches beyond 125 requests: on dev, batches of 50 and 100 were
best at λ 500–1000 and a batch of 500 at λ 2000 (``benchmarks/results/memit-lambda-h100.md``).
Other models edit at the same relative depth (``EDIT_DEPTH``), which also matches the
published choices (GPT-J layer 5 of 28, Llama-2-7B layer 5 of 32).
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hooklab.errors import HparamsError
from hooklab.model import HookedModel

EDIT_DEPTH = (5, 30)  # (layer, n_layers): ROME's layer on SmolLM2-135M-Instruct, chosen on dev
SMALL = 1_000_000_000  # parameters


@dataclass(frozen=True)
class _Hparams:
    method: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples as lists, as in a file

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Exactly the fields of this class, with values of the right types."""
        if not isinstance(data, dict):
            raise HparamsError(f"{cls.__name__} hyperparameters must be a mapping, got {type(data).__name__}.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(data) - set(fields)), sorted(set(fields) - set(data))
        if unknown or missing:
            raise HparamsError(
                f"{cls.__name__}: "
                + "; ".join(
                    ([f"unknown field(s) {unknown}"] if unknown else []) + ([f"missing field(s) {missing}"] if missing else [])
                )
                + f". Give exactly {sorted(fields)} (start from hooklab.{cls.__name__}.for_model(model).to_dict())."
            )
        hints = typing.get_type_hints(cls)
        return cls(**{name: _coerce(cls.__name__, name, data[name], hints[name]) for name in fields})

    @classmethod
    def from_file(cls, path: str | os.PathLike):
        """Read a JSON (``.json``) or YAML (``.yaml``, ``.yml``) file strictly."""
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        return cls.from_dict(data)

    def check(self, n_layers: int) -> None:
        """Raise unless every layer exists and every number is in range."""
        for layer in self.edit_layers:
            if not 0 <= layer < n_layers:
                raise HparamsError(f"layer {layer} is out of range: the model has layers 0..{n_layers - 1}.")
            if layer == n_layers - 1:
                # After the last block nothing mixes positions: a change at the subject's token
                # cannot reach the prediction at the prompt's end.
                raise HparamsError(f"layer {layer} is the last layer, whose output at the subject cannot change the "
                                   f"prediction; edit layers 0..{n_layers - 2}.")  # fmt: skip
        positive = {"v_steps": self.v_steps, "v_lr": self.v_lr, "mom2_tokens": self.mom2_tokens}
        bad = [name for name, value in positive.items() if value <= 0]
        bad += [name for name in ("v_weight_decay", "kl_factor") if getattr(self, name) < 0]
        if self.clamp_norm_factor <= 0:
            bad.append("clamp_norm_factor")
        if bad:
            raise HparamsError(f"{type(self).__name__}: {bad} must be positive (weight decay and KL: not negative).")


@dataclass(frozen=True)
class RomeHparams(_Hparams):
    """ROME (Meng et al. 2022): one layer, rank one per request.

    Attributes:
        layer: the layer whose MLP output projection is rewritten.
        v_steps, v_lr: Adam steps and learning rate for v*.
        v_weight_decay: weight of ‖δ‖/‖h‖² in v*'s loss; kl_factor: weight of the KL term.
        clamp_norm_factor: ‖δ‖ ≤ this × ‖h‖.
        context_lengths: ((tokens, count), ...) of generated context prefixes.
        mom2_tokens: corpus tokens for the key statistics C when they are collected here.
        seed: for the context prefixes (sampled).
    """

    method: ClassVar[str] = "rome"
    layer: int
    v_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    kl_factor: float = 0.0625
    clamp_norm_factor: float = 4.0
    context_lengths: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))
    mom2_tokens: int = 100_000
    seed: int = 0

    @property
    def edit_layers(self) -> tuple[int, ...]:
        return (self.layer,)

    @classmethod
    def for_model(cls, model: HookedModel) -> RomeHparams:
        """Defaults for ``model``'s size (the same numbers for all: the published ones held on
        SmolLM2), edit layer at ``EDIT_DEPTH``."""
        return cls(layer=edit_layer(model.cfg.n_layers))


@dataclass(frozen=True)
class MemitHparams(_Hparams):
    """MEMIT (Meng et al. 2023): a window of layers, rank ≤ the batch size per layer.

    Attributes:
        layers: the edited layers, in order; z is optimised after the last.
        mom2_update_weight: λ in ΔW = R Kᵀ (λC + K Kᵀ)⁻¹: how strongly the keys' statistics
            hold the layer to its old behaviour.
        mom2_batch_scale: batches of more requests than this scale λ in proportion (K Kᵀ sums
            over the batch while C is a mean, so a fixed λ holds a large batch's layers less);
            0 keeps λ fixed, as the MEMIT paper does.
        (the others as in RomeHparams)
    """

    method: ClassVar[str] = "memit"
    layers: tuple[int, ...]
    mom2_update_weight: float = 500.0
    mom2_batch_scale: int = 125
    v_steps: int = 25
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    kl_factor: float = 0.0625
    clamp_norm_factor: float = 4.0
    context_lengths: tuple[tuple[int, int], ...] = ((10, 5),)
    mom2_tokens: int = 100_000
    seed: int = 0

    @property
    def edit_layers(self) -> tuple[int, ...]:
        return self.layers

    def update_weight(self, n_requests: int) -> float:
        """λ for a batch of ``n_requests``."""
        if self.mom2_batch_scale and n_requests > self.mom2_batch_scale:
            return self.mom2_update_weight * n_requests / self.mom2_batch_scale
        return self.mom2_update_weight

    def check(self, n_layers: int) -> None:
        super().check(n_layers)
        if not self.layers or list(self.layers) != sorted(set(self.layers)):
            raise HparamsError(f"MemitHparams.layers must be distinct and increasing, got {list(self.layers)}.")
        if self.mom2_update_weight < 0 or self.mom2_batch_scale < 0:
            raise HparamsError("MemitHparams.mom2_update_weight and mom2_batch_scale must not be negative.")

    @classmethod
    def for_model(cls, model: HookedModel) -> MemitHparams:
        """Defaults for ``model``'s size: five layers from one below ROME's layer."""
        n = model.cfg.n_layers
        top = min(edit_layer(n) + 3, n - 2)
        layers = tuple(range(max(0, top - 4), top + 1))
        if _n_params(model) < SMALL:
            return cls(layers=layers)
        return cls(layers=layers, mom2_update_weight=15000.0, mom2_batch_scale=0, clamp_norm_factor=0.75)


HPARAMS = {"rome": RomeHparams, "memit": MemitHparams}


def edit_layer(n_layers: int) -> int:
    """ROME's default layer: ``EDIT_DEPTH``'s relative depth in a model of ``n_layers``."""
    layer, of = EDIT_DEPTH
    return max(0, min(n_layers - 2, round(layer * n_layers / of)))


def _n_params(model: HookedModel) -> int:
    return sum(p.numel() for _, p in model.named_weights())


def _coerce(owner: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (lists become tuples); a wrong type fails."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise HparamsError(f"{owner}.{name} must be a list, got {value!r}.")
        if args[-1] is Ellipsis:
            return tuple(_coerce(owner, name, v, args[0]) for v in value)
        if len(value) != len(args):
            raise HparamsError(f"{owner}.{name} must have {len(args)} entries, got {value!r}.")
        return tuple(_coerce(owner, name, v, t) for v, t in zip(value, args))
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HparamsError(f"{owner}.{name} must be an integer, got {value!r}.")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HparamsError(f"{owner}.{name} must be a number, got {value!r}.")
        return float(value)
    return value
