"""Where a checkpoint keeps the parts a placement moves and a merge walks: the layer stack, the
final norm, the unembedding — as HF module paths, from TransformerLens's architecture adapter."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from hooklab.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Layout:
    """HF module paths of the parts a placement moves: the layer stack, final norm, unembedding."""

    architecture: str
    n_layers: int
    layers: str
    final_norm: str
    unembed: str


def layout_for(config: PretrainedConfig) -> Layout:
    """The module layout of an HF config's architecture, from TransformerLens's adapter."""
    # TL keeps these helpers in private modules; they are what boot_transformers itself uses.
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf
    from transformer_lens.model_bridge.sources._hf_format import (
        determine_architecture_from_hf_config,
    )

    try:
        architecture = determine_architecture_from_hf_config(config)
        bridge_config = build_bridge_config_from_hf(config, architecture, "layout", torch.float32)
        adapter = ArchitectureAdapterFactory.select_architecture_adapter(bridge_config)
    except ValueError as e:
        raise UnsupportedArchitectureError(
            f"TransformerLens has no adapter for this model ({e}). Use an architecture it "
            "supports (GPT-2, Llama, Qwen2, Mistral, Gemma, ...) or upgrade transformer-lens."
        ) from e
    mapping = adapter.component_mapping
    missing = [key for key in ("blocks", "ln_final", "unembed") if key not in mapping]
    if missing:
        raise UnsupportedArchitectureError(
            f"{architecture} has no {missing} in TransformerLens's adapter, so hooklab cannot "
            "place or edit it; use a decoder-only causal language model."
        )
    return Layout(
        architecture=architecture,
        n_layers=config.num_hidden_layers,
        layers=mapping["blocks"].name,
        final_norm=mapping["ln_final"].name,
        unembed=mapping["unembed"].name,
    )


def tensor_depth(layout: Layout, name: str) -> float:
    """Where checkpoint tensor ``name`` sits in the stack: 0 (embeddings) to 1 (final norm, unembedding).

    Layer i's tensors sit at i / (n_layers - 1); merge parameters given as a gradient over
    depth (mergekit's ``t: [0, 0.5, 1]``) are read there.
    """
    prefix = layout.layers + "."
    if name.startswith(prefix):
        layer = int(name[len(prefix) :].split(".")[0])
        return layer / max(layout.n_layers - 1, 1)
    if any(name == p or name.startswith(p + ".") for p in (layout.final_norm, layout.unembed)):
        return 1.0
    return 0.0
