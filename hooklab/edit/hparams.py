"""What every edit method's hyperparameters share: a frozen dataclass, loaded strictly.

They hold numbers only. Where to write is a layer index (``sites`` knows the module), and
devices and dtypes are the model's. Loading from a dict, JSON or YAML is strict: every field
must be given and no other, so a typo fails instead of silently using a default. Each method
folder defines its subclass (``rome/hparams.py``, ...) with its defaults per model size.

Edit layers: other models edit at the same relative depth as SmolLM2-135M (``EDIT_DEPTH``, ROME's
layer 5 of 30, chosen on the CounterFact known dev facts), which also matches the published
choices (GPT-J layer 5 of 28, Llama-2-7B layer 5 of 32).
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hooklab.errors import HparamsError
from hooklab.layers import check_layers

if TYPE_CHECKING:
    from hooklab.model import HookedModel

EDIT_DEPTH = (5, 30)  # (layer, n_layers): ROME's layer on SmolLM2-135M-Instruct, chosen on dev
SMALL = 1_000_000_000  # parameters


@dataclass(frozen=True)
class Hparams:
    """Base of the methods' hyperparameters: subclasses add fields, ``edit_layers`` and ``for_model``."""

    @property
    def edit_layers(self) -> tuple[int, ...]:
        """The layers whose MLP output projection the method writes (or keeps a copy of)."""
        raise NotImplementedError

    @classmethod
    def for_model(cls, model: HookedModel) -> Hparams:
        """The defaults for ``model``."""
        raise NotImplementedError

    def check(self, n_layers: int) -> None:
        """Raise unless every edit layer exists; subclasses also check their numbers."""
        check_layers(self.edit_layers, n_layers, HparamsError)

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
                + f". Give exactly {sorted(fields)} (start from {cls.__name__}.for_model(model).to_dict())."
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

    @classmethod
    def resolve(cls, model: HookedModel, hparams: Hparams | dict[str, Any] | str | os.PathLike | None):
        """``hparams`` as this class: the defaults for ``model`` when None, else checked or read strictly."""
        if hparams is None:
            return cls.for_model(model)
        if isinstance(hparams, Hparams):
            if not isinstance(hparams, cls):
                raise HparamsError(f"this method takes {cls.__name__}, got {type(hparams).__name__}.")
            return hparams
        if isinstance(hparams, typing.Mapping):
            return cls.from_dict(dict(hparams))
        if isinstance(hparams, (str, os.PathLike)):
            return cls.from_file(hparams)
        raise HparamsError(f"{cls.__name__}: give an instance, a dict or a JSON/YAML file, got {type(hparams).__name__}.")


def check_value_settings(hp: Any, n_layers: int) -> None:
    """The checks of a method that optimises a value vector at its edit layers (ROME, MEMIT)."""
    for layer in hp.edit_layers:
        if layer == n_layers - 1:
            # After the last block nothing mixes positions: a change at the subject's token
            # cannot reach the prediction at the prompt's end.
            raise HparamsError(f"layer {layer} is the last layer, whose output at the subject cannot change the "
                               f"prediction; edit layers 0..{n_layers - 2}.")  # fmt: skip
    positive = {"v_steps": hp.v_steps, "v_lr": hp.v_lr, "mom2_tokens": hp.mom2_tokens}
    bad = [name for name, value in positive.items() if value <= 0]
    bad += [name for name in ("v_weight_decay", "kl_factor") if getattr(hp, name) < 0]
    if hp.clamp_norm_factor <= 0:
        bad.append("clamp_norm_factor")
    if bad:
        raise HparamsError(f"{type(hp).__name__}: {bad} must be positive (weight decay and KL: not negative).")


def edit_layer(n_layers: int) -> int:
    """ROME's default layer: ``EDIT_DEPTH``'s relative depth in a model of ``n_layers``."""
    layer, of = EDIT_DEPTH
    return max(0, min(n_layers - 2, round(layer * n_layers / of)))


def n_params(model: HookedModel) -> int:
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
