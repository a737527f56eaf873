"""The model's skeleton on the meta device: every module built, no weight allocated.

Both loaders start here, and the placement planner measures its parts from it, so sizes and
names are known before a single byte is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights

from hooklab.loading.layout import Layout


def build_skeleton(config: PretrainedConfig, dtype: torch.dtype) -> PreTrainedModel:
    """An HF causal LM with parameters on ``meta`` (buffers such as rotary tables stay real)."""
    with init_empty_weights(include_buffers=False), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
    return model.eval()


def tied_keys(model: PreTrainedModel) -> dict[str, str]:
    """``{target: source}`` names of parameters that share one tensor (e.g. lm_head = embedding)."""
    return dict(model.get_expanded_tied_weights_keys(all_submodels=True))


def set_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` in the model as parameter or buffer ``name`` (replacing a meta one)."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._parameters:
        param = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, requires_grad=False)
        module._parameters[attr] = param
    else:
        module._buffers[attr] = tensor


@dataclass(frozen=True)
class Parts:
    """A model cut into the pieces a placement moves, with their sizes in bytes.

    ``first_modules`` run before layer 0 (embeddings; a tied unembedding too, since it is the
    embedding's tensor); ``last_modules`` after the last layer (final norm, untied unembedding).
    """

    layers_path: str
    layer_bytes: tuple[int, ...]
    first_modules: tuple[str, ...]
    first_bytes: int
    last_modules: tuple[str, ...]
    last_bytes: int

    @property
    def n_layers(self) -> int:
        return len(self.layer_bytes)

    @property
    def total_bytes(self) -> int:
        return self.first_bytes + sum(self.layer_bytes) + self.last_bytes


def measure_parts(model: PreTrainedModel, layout: Layout) -> Parts:
    """Sizes of the model's pieces: embeddings, each layer, final norm + unembedding."""
    layer_bytes = [0] * layout.n_layers
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    tied_targets = set(tied_keys(model))
    prefix = layout.layers + "."
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]
    for name, tensor in tensors:
        size = 0 if name in tied_targets else tensor.numel() * tensor.element_size()
        module = name.rpartition(".")[0]
        if name.startswith(prefix):
            layer_bytes[int(name[len(prefix) :].split(".")[0])] += size
        elif _under(name, layout.final_norm) or (_under(name, layout.unembed) and name not in tied_targets):
            last[module] = last.get(module, 0) + size
        else:
            first[module] = first.get(module, 0) + size
    return Parts(
        layers_path=layout.layers,
        layer_bytes=tuple(layer_bytes),
        first_modules=tuple(first),
        first_bytes=sum(first.values()),
        last_modules=tuple(last),
        last_bytes=sum(last.values()),
    )


def _under(name: str, path: str) -> bool:
    return name == path or name.startswith(path + ".")
