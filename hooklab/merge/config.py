"""Merge recipes in YAML (mergekit's shape), loaded strictly into frozen dataclasses.

    method: ties                  # linear | task_arithmetic | ties | slerp
    base_model: ./base            # task_arithmetic, ties; slerp's t=0 end
    models:
      - model: ./chat
        weight: 0.6
      - model: ./code
        weight: 0.4
    parameters: {density: 0.3}    # the method's; numbers may be gradients over depth: [0, 0.5, 1]
    dtype: bfloat16
    out: ./merged

LM-Cocktail: ``weights: auto`` with ``examples:`` (a .json/.jsonl file, or a list of
``{prompt, answer}``) and optionally ``temperature:``. Relative paths are read from the YAML
file's folder. An unknown or missing key is an error, never ignored.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hooklab.errors import MergeConfigError
from hooklab.loading.embedded import EMBEDDED
from hooklab.merge.streamed import MergeResult, merge


@dataclass(frozen=True)
class ModelEntry:
    """One model to merge and its weight (default 1; not with ``weights: auto``)."""

    model: str
    weight: float | None = None


@dataclass(frozen=True)
class MergeConfig:
    """A merge recipe: what ``hooklab merge config.yaml`` runs."""

    models: tuple[ModelEntry, ...]
    out: str
    method: str = "linear"
    base_model: str | None = None
    weights: str | None = None  # "auto": LM-Cocktail's weights from examples
    examples: str | tuple[Mapping[str, str], ...] | None = None
    temperature: float = 5.0
    parameters: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    dtype: str | None = None
    device: str | None = None
    shard_size: str | int = "5GB"


def load_config(path: str | os.PathLike) -> MergeConfig:
    """Read a YAML merge recipe, checking every key and type; paths resolved from its folder."""
    path = Path(path)
    if not path.is_file():
        raise MergeConfigError(f"merge config {path} does not exist; pass the path of a YAML recipe.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise MergeConfigError(f"{path} is not valid YAML ({e}).") from e
    config = _strict(MergeConfig, raw, str(path))
    here = path.parent
    return dataclasses.replace(
        config,
        models=tuple(dataclasses.replace(m, model=_where(m.model, here)) for m in config.models),
        base_model=_where(config.base_model, here) if config.base_model else None,
        out=str(here / Path(config.out).expanduser()),
        examples=_where(config.examples, here) if isinstance(config.examples, str) else config.examples,
    )


def run_config(config: MergeConfig, *, device: str | None = None, overwrite: bool = False) -> MergeResult:
    """Run a recipe (``device`` overrides the recipe's)."""
    given = [m.weight for m in config.models]
    if config.weights is not None and config.weights != "auto":
        raise MergeConfigError(f"weights: {config.weights!r}; the only value it takes is 'auto' (else give each model a weight).")
    if config.weights == "auto" and any(w is not None for w in given):
        raise MergeConfigError("weights: auto computes every model's weight; remove the per-model weights.")
    if config.weights == "auto":
        weights: Any = "auto"
    elif any(w is not None for w in given):
        weights = [1.0 if w is None else w for w in given]
    else:
        weights = None
    return merge(
        [m.model for m in config.models], out=config.out, method=config.method, weights=weights,
        base=config.base_model, parameters=dict(config.parameters), examples=config.examples,
        temperature=config.temperature, device=device or config.device, dtype=config.dtype,
        shard_size=config.shard_size, overwrite=overwrite,
    )  # fmt: skip


def _where(value: str, here: Path) -> str:
    """A model name (``smollm2``) as it is; a relative path from the YAML file's folder."""
    if value.lower() in EMBEDDED:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else here / p)


def _strict(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a YAML mapping: every key known, every required key there."""
    if not isinstance(raw, dict):
        raise MergeConfigError(f"{where}: expected a mapping of keys to values, got {type(raw).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise MergeConfigError(f"{where}: unknown key(s) {unknown}; the keys are {sorted(fields)}.")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in raw]
    if missing:
        raise MergeConfigError(f"{where}: missing key(s) {missing}.")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _typed(hints[k], v, f"{where}: {k}") for k, v in raw.items()})


def _typed(hint: Any, value: Any, where: str) -> Any:
    """``value`` checked against a field's type (the few shapes these dataclasses use)."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if dataclasses.is_dataclass(hint):
        return _strict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _typed(option, value, where)
            except MergeConfigError:
                continue
        raise MergeConfigError(f"{where} is {value!r}; expected {_name(hint)}.")
    if origin is tuple:
        if not isinstance(value, list):
            raise MergeConfigError(f"{where} is {value!r}; expected a list.")
        item = typing.get_args(hint)[0]
        return tuple(_typed(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is not None and issubclass(origin, Mapping):
        if not isinstance(value, dict):
            raise MergeConfigError(f"{where} is {value!r}; expected a mapping.")
        return types.MappingProxyType(dict(value))
    if hint is type(None):
        if value is not None:
            raise MergeConfigError(f"{where} is {value!r}; expected nothing.")
        return None
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise MergeConfigError(f"{where} is {value!r}; expected {_name(hint)}.")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
