"""``hooklab.merge``: merge models tensor by tensor on a GPU (or the CPU), streamed to disk.

For each tensor name, each model's tensor is read from its file straight onto ``device``
(pinned staging buffers on a GPU), merged there, and written to its place in the output
shards; then it is dropped. Host memory holds staging buffers and, per worker, one tensor of
each model, never a model. Everything that can be checked is checked before the first byte
is written (methods, parameters, weights, architectures, tensor names, shapes, tokenizers,
the output folder, free disk space), and the output appears only when it is complete.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate.utils import convert_file_size_to_int
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from hooklab.errors import MergeConfigError
from hooklab.folders import clean_leftovers
from hooklab.loading.dtypes import resolve_dtype
from hooklab.loading.layout import layout_for, tensor_depth
from hooklab.loading.placement import resolve_devices
from hooklab.loading.stream import TensorIO
from hooklab.merge import methods, registry
from hooklab.merge.checks import check_compatible
from hooklab.merge.cocktail import ExamplesLike, cocktail_weights
from hooklab.merge.pipeline import Scratch, run_pipeline
from hooklab.merge.sources import FolderSource, TensorSource, TensorSpec, open_sources
from hooklab.merge.writer import StagedCheckpoint, plan_shards
from hooklab.model import HookedModel

log = logging.getLogger(__name__)

SourceLike = str | os.PathLike | HookedModel | TensorSource


@dataclass(frozen=True)
class MergeResult:
    """Where the merged checkpoint is and how it was made; ``hooklab.load(result)`` loads it."""

    path: Path
    method: str
    weights: tuple[float, ...] | None
    losses: tuple[float, ...] | None  # each model's answer loss, when weights="auto"
    nbytes: int
    seconds: float

    def __fspath__(self) -> str:
        return str(self.path)


def merge(
    sources: Sequence[SourceLike],
    *,
    out: str | os.PathLike,
    method: str = "linear",
    weights: Sequence[float] | Literal["auto"] | None = None,
    base: SourceLike | None = None,
    parameters: Mapping[str, Any] | None = None,
    examples: ExamplesLike | None = None,
    temperature: float = 5.0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    shard_size: int | str = "5GB",
    overwrite: bool = False,
    workers: int | None = None,
) -> MergeResult:
    """Merge models tensor by tensor into a new checkpoint folder ``out``.

    Args:
        sources: model folders, ``"smollm2"``, or loaded HookedModels (their current weights).
        method: ``"linear"``, ``"task_arithmetic"``, ``"ties"`` or ``"slerp"`` (see ``registry.METHODS``).
        weights: one per model (default all 1; linear divides by their sum), or ``"auto"``:
            LM-Cocktail's softmax(−loss / ``temperature``) over each model's loss on ``examples``.
        base: the model task vectors are taken from (task_arithmetic, ties); for slerp, t=0.
            A base also listed in ``sources`` is skipped there.
        parameters: the method's, e.g. ``{"density": 0.5}``, ``{"t": [0, 0.5, 1]}`` (a gradient over
            depth), ``{"sparsify": "dare"}`` for DARE.
        device: where tensors are merged (default GPU 0, else the CPU).
        dtype: of the merged floating-point tensors (default: the first model's).
        shard_size: bytes per output shard (``"5GB"``).
        overwrite: replace an existing ``out``, only once the new merge is complete; until then
            ``out`` is the old complete folder (:mod:`hooklab.folders`).
        workers: tensors merged at once (default 1 on the CPU, 4 on a GPU).

    Example:
        >>> hooklab.merge(["chat", "code"], out="soup")                       # the mean of two models
        >>> hooklab.merge(["chat", "code"], base="base", method="ties", parameters={"density": 0.3}, out="ties")
        >>> hooklab.merge(["chat", "code"], weights="auto", examples=[("2+2=", " 4")], out="cocktail")
    """
    start = time.perf_counter()
    spec = registry.get(method)
    params = spec.resolve(parameters)
    slot = resolve_devices(device, None, None)[0]
    out = Path(out).expanduser()
    shard_bytes = convert_file_size_to_int(shard_size) if isinstance(shard_size, str) else int(shard_size)
    io = TensorIO(map_whole_files=False)
    try:
        opened = open_sources([*sources, *([base] if base is not None else [])], io)
        inputs, base_src = _roles(spec, opened[: len(sources)], opened[len(sources)] if base is not None else None)
        everyone = [base_src, *inputs] if base_src is not None else inputs
        primary = everyone[0]  # gives the config, tokenizer and non-float tensors
        clean_leftovers(out)
        _check_out(out, overwrite, everyone)
        specs = check_compatible(everyone)
        merge_weights, losses = _weights(spec, params, weights, inputs, examples, temperature, slot)
        out_dtype = resolve_dtype(dtype, _stored_dtype(specs), ["cpu"])
        plan = plan_shards({n: TensorSpec(s.shape, out_dtype if s.dtype.is_floating_point else s.dtype)
                            for n, s in specs.items()}, shard_bytes)  # fmt: skip
        _check_space(out, plan.nbytes)
        log.info("merging %s with %s (weights %s) on %s into %s", [s.label for s in inputs], method, merge_weights, slot, out)

        def merge_one(name: str, scratch: Scratch | None) -> torch.Tensor:
            """Tensor ``name`` merged, in its output dtype (in ``scratch``'s memory where given)."""
            where, target = torch.device(slot), plan.slots[name].spec
            if not specs[name].dtype.is_floating_point:  # integer buffers are not averaged
                return primary.read(name, where)
            at = registry.at_depth(params, tensor_depth(layout, name))
            tensors = [s.read(name, where) for s in inputs]
            base_tensor = base_src.read(name, where) if spec.needs_base else None
            dtype = methods.compute_dtype(*tensors, *([base_tensor] if base_tensor is not None else []))
            buffer = scratch.get("result", target.shape, dtype) if scratch else None
            merged = spec.run(registry.Inputs(tensors, list(merge_weights or ()), base_tensor, at,
                                              _generator(at, name, slot), buffer))  # fmt: skip
            if merged.dtype == target.dtype:
                return merged
            return scratch.get("cast", target.shape, target.dtype).copy_(merged) if scratch else merged.to(target.dtype)

        layout = layout_for(primary.config)
        with StagedCheckpoint(out, plan, overwrite=overwrite) as staged:
            run_pipeline(plan, merge_one, staged, io, slot, workers or (4 if slot.startswith("cuda") else 1), f"merge ({method})")
            primary.save_tokenizer(staged.folder)
            provenance = dict(method=method, parameters=dict(params), models=[s.label for s in inputs],
                              base=base_src.label if base_src else None, weights=merge_weights, losses=losses,
                              temperature=temperature if losses else None, dtype=str(out_dtype).removeprefix("torch."))  # fmt: skip
            (staged.folder / "merge.json").write_text(json.dumps(provenance, indent=2, default=str))
            config = copy.deepcopy(primary.config)
            config.dtype = out_dtype
            if not getattr(config, "architectures", None):  # other tools (mergekit) read the class here
                config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]]
            config.save_pretrained(staged.folder)
            path = staged.commit()
    finally:
        io.close()
    seconds = time.perf_counter() - start
    log.info("merged %.2f GB into %s in %.1f s", plan.nbytes / 1e9, path, seconds)
    return MergeResult(path, method, merge_weights, losses, plan.nbytes, seconds)


def _roles(
    spec: registry.Method, sources: list[TensorSource], base: TensorSource | None
) -> tuple[list[TensorSource], TensorSource | None]:
    """The models the method combines, in order, and the base it needs (if any)."""
    if not sources:
        raise MergeConfigError("no models to merge; pass at least one model folder or HookedModel.")
    others = [s for s in sources if base is None or s.key != base.key]
    if spec.n_models is not None:  # slerp: base (if given) first, at t=0
        inputs = ([base] if base is not None else []) + others
        if len(inputs) != spec.n_models:
            raise MergeConfigError(
                f"{spec.name} merges exactly {spec.n_models} models (the base counts as one), got {len(inputs)}."
            )
        return inputs, None
    if spec.needs_base and base is None:
        raise MergeConfigError(f"{spec.name} needs base= (the model the fine-tunes started from).")
    if not spec.needs_base and base is not None:
        raise MergeConfigError(f"{spec.name} takes no base; drop base= or use task_arithmetic / ties.")
    if not others:
        raise MergeConfigError("the only model given is the base; add the models to merge into it.")
    return others, base


def _weights(
    spec: registry.Method, params: registry.Resolved, weights: Any, inputs: list[TensorSource], examples: Any,
    temperature: float, slot: str,
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The merge weights (given, default 1 each, or LM-Cocktail's from examples) and the losses behind them."""
    if examples is not None and weights != "auto":
        raise MergeConfigError("examples are only used with weights='auto'; pass weights='auto' or drop examples.")
    if not spec.weighted:
        if weights is not None:
            raise MergeConfigError(f"{spec.name} takes no weights; set its parameter instead (slerp: t).")
        return None, None
    if weights is None:
        return tuple(1.0 for _ in inputs), None
    if isinstance(weights, str):
        if weights != "auto":
            raise MergeConfigError(f"weights={weights!r}; give one number per model or 'auto'.")
        if examples is None:
            raise MergeConfigError("weights='auto' weighs models by their loss on examples; pass examples=[(prompt, answer), ...].")
        mix = cocktail_weights(inputs, examples, temperature=temperature, device=slot)
        log.info("LM-Cocktail weights %s from losses %s", mix.weights, mix.losses)
        return mix.weights, mix.losses
    weights = tuple(weights)
    if len(weights) != len(inputs) or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        raise MergeConfigError(f"weights {list(weights)} for {len(inputs)} models; give one number per model.")
    if not all(math.isfinite(w) for w in weights):
        raise MergeConfigError(f"weights {list(weights)} include NaN or infinity; give one finite number per model.")
    if params.get("normalize") and params.get("consensus") is None and abs(sum(weights)) < 1e-12:
        raise MergeConfigError(f"weights {list(weights)} sum to 0, and {spec.name} divides by their sum.")
    return tuple(float(w) for w in weights), None


def _stored_dtype(specs: Mapping[str, TensorSpec]) -> torch.dtype:
    """The dtype of the largest floating-point tensor: what the models are stored in."""
    floats = [s for s in specs.values() if s.dtype.is_floating_point]
    return max(floats, key=lambda s: s.nbytes).dtype if floats else torch.float32


def _generator(params: Mapping[str, Any], name: str, slot: str) -> torch.Generator | None:
    """DARE's random source for one tensor: seeded by the seed and the name, so runs repeat."""
    if params.get("sparsify") != "dare":
        return None
    seed = int(params["seed"]) * 1_000_003 + zlib.crc32(name.encode())
    return torch.Generator(slot).manual_seed(seed)


def _check_out(out: Path, overwrite: bool, sources: Sequence[TensorSource]) -> None:
    above = next(p for p in out.parents if os.path.lexists(p))
    if not above.is_dir():
        raise MergeConfigError(
            f"out={out} lies under {above}, which is a file, not a folder; choose an out whose parent "
            "folders are folders (or can be created)."
        )
    for s in sources:
        if isinstance(s, FolderSource) and s.root.resolve() == out.resolve():
            raise MergeConfigError(f"out={out} is one of the models being merged; write the merge elsewhere.")
    if out.is_file():
        raise MergeConfigError(f"out={out} is a file; a merge writes a folder there. Choose another out.")
    if out.exists() and not overwrite:
        raise MergeConfigError(
            f"{out} already exists; choose another out, or pass overwrite=True (the old folder is "
            "replaced only once the new merge is complete)."
        )


def _check_space(out: Path, nbytes: int) -> None:
    parent = out.parent if out.parent.exists() else next(p for p in out.parents if p.exists())
    free = shutil.disk_usage(parent).free
    if free < nbytes * 1.01 + 50e6:
        raise MergeConfigError(
            f"the merge writes {nbytes / 1e9:.2f} GB but {parent} has {free / 1e9:.2f} GB free; free some "
            "space or choose an out on another disk."
        )
