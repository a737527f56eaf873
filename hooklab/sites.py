"""Where things are in a model: the one module that knows module paths.

Everything else names *sites* ("the MLP output projection of layer 17") and asks here for
the module, its weight in one fixed orientation, its hook names and its device. The paths
come from TransformerLens's architecture adapters, so every architecture TL supports works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from hooklab.errors import UnsupportedArchitectureError
from hooklab.layers import check_layers

if TYPE_CHECKING:
    from hooklab.model import HookedModel


def token_embedding() -> str:
    """Hook name of the token embeddings (before positional embeddings are added, if any)."""
    return "hook_embed"


def resid_pre(layer: int) -> str:
    """Hook name of the residual stream entering ``layer``."""
    return f"blocks.{layer}.hook_resid_pre"


def resid_post(layer: int) -> str:
    """Hook name of the residual stream after ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def mlp_output(layer: int) -> str:
    """Hook name of the MLP block's output (what the residual stream receives) at ``layer``."""
    return f"blocks.{layer}.hook_mlp_out"


def attn_output(layer: int) -> str:
    """Hook name of the attention block's output at ``layer``."""
    return f"blocks.{layer}.hook_attn_out"


def block_hook(layer: int, name: str) -> str:
    """Full name of a block-relative hook: ``block_hook(5, "mlp.out.hook_in")`` → ``"blocks.5.mlp.out.hook_in"``."""
    return f"blocks.{layer}.{name}"


def block_input(layer: int) -> str:
    """The first hook a block fires (its input residual stream)."""
    return f"blocks.{layer}.hook_in"


def block_output(layer: int) -> str:
    """The last hook a block fires (its output, the same tensor as ``hook_resid_post``)."""
    return f"blocks.{layer}.hook_out"


def is_embedding_hook(model: HookedModel, name: str) -> bool:
    """True for hooks that fire before the first block (token and position embeddings)."""
    return model.bridge._is_embedding_stage_hook(name)


def position_dim(model: HookedModel, name: str) -> int:
    """The position axis of a hook's activation: 1 for (batch, pos, ...), -2 for attention patterns."""
    return model.bridge._pos_slice_dim(name, model.hook_dict.get(name))


@dataclass(frozen=True)
class MlpOut:
    """Layer ``layer``'s MLP output projection: keys (d_mlp) in, values (d_model) out."""

    layer: int
    module: nn.Module
    hook_in: str
    hook_out: str

    @property
    def transposed(self) -> bool:
        """True where the stored weight is (d_mlp, d_model), as in GPT-2's Conv1D."""
        return isinstance(self.module, Conv1D)

    @property
    def weight(self) -> Float[Tensor, "d_model d_mlp"]:
        """The weight as a (d_model, d_mlp) view: writing to it writes the model."""
        w = self.module.weight
        return w.T if self.transposed else w

    @property
    def device(self) -> torch.device:
        return self.module.weight.device


def mlp_out(model: HookedModel, layer: int) -> MlpOut:
    """The MLP output projection of ``layer`` (where ROME, MEMIT and WISE write)."""
    (layer,) = check_layers([layer], model.cfg.n_layers)
    block = model.bridge.blocks[layer]
    out = getattr(block.mlp, "out", None)
    if out is None:
        raise UnsupportedArchitectureError(
            f"layer {layer}'s MLP has no single output projection in TransformerLens's adapter "
            f"for {model.cfg.architecture}; edits need a dense MLP (not mixture-of-experts)."
        )
    return MlpOut(
        layer=layer,
        module=out.original_component,
        hook_in=f"blocks.{layer}.mlp.out.hook_in",
        hook_out=f"blocks.{layer}.mlp.out.hook_out",
    )


def block(model: HookedModel, layer: int) -> nn.Module:
    """Layer ``layer``'s transformer block as the forward calls it (hooks and device moves included).

    For running the blocks above a site from a cached residual: each block is called with the
    arguments it received in a full forward.
    """
    (layer,) = check_layers([layer], model.cfg.n_layers)
    return model.bridge.blocks[layer]


def layer_device(model: HookedModel, layer: int) -> torch.device:
    """The device that holds ``layer``'s weights (and runs its forward)."""
    return next(model.bridge.blocks[layer].parameters()).device
