"""``hooklab.load``: any local checkpoint into a hooked model, on one device or many.

Everything that can be checked is checked before a weight moves: the source, the config and
tokenizer, every tensor's name and shape, the devices and whether the plan fits them. A
failed load leaves nothing behind: no model, no GPU memory.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from hooklab.errors import MissingTokenizerError, PlacementError
from hooklab.loading.checkpoint import open_checkpoint
from hooklab.loading.dtypes import resolve_dtype
from hooklab.loading.gguf import gguf_config, read_gguf
from hooklab.loading.kv_cache import hand_cache_over
from hooklab.loading.layout import layout_for
from hooklab.loading.placement import (
    DeviceLike,
    MaxMemory,
    Placement,
    capacities,
    plan_layers,
    resolve_devices,
)
from hooklab.loading.shard import cpu_then_shard, route_between_devices
from hooklab.loading.skeleton import Parts, build_skeleton, measure_parts, set_tensor, tied_keys
from hooklab.loading.sources import Source, resolve_source
from hooklab.loading.stream import read_tensors
from hooklab.loading.tensors import Wanted, match_tensors
from hooklab.model import HookedModel, weight_slots
from hooklab.paths import human_bytes

Strategy = Literal["stream", "cpu_then_shard"]
log = logging.getLogger(__name__)


def load(
    source: str | os.PathLike,
    *,
    device: DeviceLike | None = None,
    n_devices: int | None = None,
    devices: Sequence[DeviceLike] | None = None,
    dtype: torch.dtype | str | None = None,
    strategy: Strategy | None = None,
    max_memory: MaxMemory | None = None,
    placement: Placement | None = None,
) -> HookedModel:
    """Load a model into a TransformerLens-style hooked wrapper.

    Args:
        source: an HF folder (config.json + safetensors, sharded or not), a ``.gguf`` file,
            or ``"smollm2"`` (the embedded default, fetched and converted once).
        device / n_devices / devices: one device; the first ``n_devices`` GPUs; or a list
            (``["cpu", "cpu"]`` exercises multi-device placement on CPU). Default: GPU 0, else CPU.
        dtype: default the checkpoint's own dtype (float32 for GGUF).
        strategy: ``"stream"`` (default for safetensors) reads every tensor straight onto its
            device; ``"cpu_then_shard"`` loads into host memory first, as TransformerLens does.
            GGUF files always go through host memory.
        max_memory: per-device budget (bytes or "20GiB"), a dict by device or a list per slot.
        placement: a plan of your own; checked, then used instead of the balanced one.

    Example:
        >>> model = hooklab.load("path/to/llama", n_devices=2, dtype="bfloat16")
        >>> print(model.placement)
    """
    start = time.perf_counter()
    src = resolve_source(source)
    if placement is not None:
        if any(x is not None for x in (device, n_devices, devices)):
            raise PlacementError("placement= already names the devices; drop device=/n_devices=/devices=.")
        slots = resolve_devices(None, None, placement.devices)
    else:
        slots = resolve_devices(device, n_devices, devices)
    strategy = _strategy(strategy, src)
    checkpoint = open_checkpoint(src.path) if src.kind == "hf" else None
    config = checkpoint.config if checkpoint else gguf_config(src.path)
    dtype = resolve_dtype(dtype, _stored_dtype(config, src), slots)
    skeleton = build_skeleton(config, dtype)
    parts = measure_parts(skeleton, layout_for(config))
    placement = _checked_plan(parts, slots, placement, max_memory)
    wanted = match_tensors(skeleton, checkpoint) if checkpoint else []
    stages = {"plan": time.perf_counter() - start}

    hf_model = skeleton
    try:
        with ThreadPoolExecutor(max_workers=1) as background:  # the tokenizer loads while weights stream
            tokenizer = background.submit(_tokenizer, src) if checkpoint else None
            if src.kind == "gguf":
                hf_model, tokenizer = read_gguf(src.path, dtype)
                cpu_then_shard(hf_model, placement, parts)
            elif strategy == "stream":
                _stream(skeleton, wanted, placement.device_map(parts))
            else:
                hf_model = _read_whole(src, dtype)
                cpu_then_shard(hf_model, placement, parts)
            if checkpoint:
                tokenizer = tokenizer.result()
        stages["read"] = time.perf_counter() - start - sum(stages.values())
        route_between_devices(hf_model, placement, parts)
        slots = weight_slots(hf_model)
        bridge = _bridge(src, hf_model, tokenizer, placement)
        stages["hooks"] = time.perf_counter() - start - sum(stages.values())
    except BaseException:
        hf_model.to("meta")  # frees every weight, whatever still refers to the model
        _release_memory(slots)
        raise
    log.info(
        "loaded %s (%s, %s) in %.2f s: %s",
        src.name, human_bytes(parts.total_bytes), strategy, time.perf_counter() - start,
        ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()),
    )  # fmt: skip
    return HookedModel(bridge, hf_model, tokenizer, placement, src.name, slots)


def plan_placement(
    source: str | os.PathLike,
    *,
    n_devices: int | None = None,
    devices: Sequence[DeviceLike] | None = None,
    dtype: torch.dtype | str | None = None,
    max_memory: MaxMemory | None = None,
) -> Placement:
    """The placement ``load`` would use, computed from the config alone (nothing is loaded)."""
    src = resolve_source(source)
    slots = resolve_devices(None, n_devices, devices)
    config = gguf_config(src.path) if src.kind == "gguf" else open_checkpoint(src.path).config
    dtype = resolve_dtype(dtype, _stored_dtype(config, src), slots)
    parts = measure_parts(build_skeleton(config, dtype), layout_for(config))
    return _checked_plan(parts, slots, None, max_memory)


def _strategy(strategy: str | None, src: Source) -> Strategy:
    if strategy is None:
        return "cpu_then_shard" if src.kind == "gguf" else "stream"
    if strategy not in ("stream", "cpu_then_shard"):
        raise PlacementError(f"unknown strategy {strategy!r}; use 'stream' or 'cpu_then_shard'.")
    return strategy


def _stored_dtype(config: PretrainedConfig, src: Source) -> torch.dtype:
    stored = getattr(config, "dtype", None) if src.kind == "hf" else None
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else torch.float32


def _checked_plan(
    parts: Parts, slots: Sequence[str], placement: Placement | None, max_memory: MaxMemory | None
) -> Placement:
    caps = capacities(slots, max_memory)
    if placement is None:
        return plan_layers(parts, slots, caps, weighted=max_memory is not None)
    placement = placement.with_sizes(parts)
    for slot, (device, size, cap) in enumerate(zip(placement.devices, placement.nbytes, caps)):
        if cap is not None and size > cap:
            raise PlacementError(
                f"the given placement puts {human_bytes(size)} on slot {slot} ({device}), over its "
                f"{human_bytes(cap)}; move layers elsewhere or raise max_memory."
            )
    return placement


def _tokenizer(src: Source):
    try:
        return AutoTokenizer.from_pretrained(src.path, local_files_only=True)
    except (OSError, ValueError, TypeError, RecursionError) as e:
        raise MissingTokenizerError(
            f"{src.path} has no usable tokenizer ({e}). Save one next to the weights with "
            "`tokenizer.save_pretrained(folder)`."
        ) from e


def _stream(skeleton: PreTrainedModel, wanted: list[Wanted], device_map: dict[str, str]) -> None:
    """Fill the skeleton's meta tensors from the checkpoint, each on its planned device."""
    loaded = read_tensors((w, _device_of(w.name, device_map)) for w in wanted)
    for name, tensor in loaded.items():
        set_tensor(skeleton, name, tensor)
    for target, source in tied_keys(skeleton).items():
        set_tensor(skeleton, target, skeleton.get_parameter(source))
    for name, buffer in list(skeleton.named_buffers()):
        if name not in loaded:  # derived buffers (rotary tables) were built on the CPU
            set_tensor(skeleton, name, buffer.to(_device_of(name, device_map)))


def _read_whole(src: Source, dtype: torch.dtype) -> PreTrainedModel:
    """The whole model in host memory, read by transformers."""
    model = AutoModelForCausalLM.from_pretrained(src.path, dtype=dtype, attn_implementation="eager")
    return model.eval()


def _device_of(name: str, device_map: dict[str, str]) -> torch.device:
    """The device of the longest module path in the map that contains tensor ``name``."""
    module = name
    while module:
        module = module.rpartition(".")[0]
        if module in device_map:
            return torch.device(device_map[module])
    raise KeyError(f"no device planned for {name}")


def _bridge(src: Source, hf_model: PreTrainedModel, tokenizer, placement: Placement) -> TransformerBridge:
    bridge = TransformerBridge.boot_transformers(
        str(src.path),
        hf_model=hf_model,
        tokenizer=tokenizer,
        device=placement.devices[placement.first],
        dtype=next(hf_model.parameters()).dtype,
    )
    hand_cache_over(bridge, hf_model)
    # Tokenize as the model's own tokenizer does, so hooklab, TL and HF see the same tokens.
    probe = tokenizer("a").input_ids
    bridge.cfg.default_prepend_bos = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    return bridge


def _release_memory(slots: Sequence[str]) -> None:
    gc.collect()
    if any(s.startswith("cuda") for s in slots):
        torch.cuda.empty_cache()
