"""GGUF files: checked for a supported architecture, then dequantized by transformers.

A GGUF model goes through host memory (transformers dequantizes it there), whatever the
strategy; the placement then moves each part to its device.
"""

from __future__ import annotations

from pathlib import Path

import torch
from gguf import GGUFReader
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

from hooklab.errors import CorruptCheckpointError, UnsupportedArchitectureError

# transformers reads these GGUF architectures, but they are not decoder-only causal LMs.
_NOT_CAUSAL_LM = {"general", "tokenizer", "t5", "umt5", "mamba"}


def gguf_architecture(path: Path) -> str:
    """The ``general.architecture`` a GGUF file declares."""
    try:
        field = GGUFReader(path).get_field("general.architecture")
    except (ValueError, OSError) as e:
        raise CorruptCheckpointError(
            f"{path} is not a readable GGUF file ({e}); it is probably truncated: download it again."
        ) from e
    if field is None:
        raise CorruptCheckpointError(f"{path} declares no general.architecture; re-export it with llama.cpp's tools.")
    return str(field.contents())


def gguf_config(path: Path) -> PretrainedConfig:
    """The HF config of a GGUF file, refused early when its architecture is unsupported."""
    arch = gguf_architecture(path)
    supported = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_CAUSAL_LM)
    if arch not in supported:
        raise UnsupportedArchitectureError(
            f"{path.name} is a GGUF '{arch}' model, which transformers cannot dequantize. Supported "
            f"GGUF architectures: {', '.join(supported)}. Convert the model to an HF folder "
            "(config.json + safetensors) instead."
        )
    return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)


def read_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    """The dequantized model (on the CPU, in ``dtype``) and tokenizer stored in a GGUF file."""
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype, attn_implementation="eager"
    )
    # The weights are plain tensors now; forget the GGUF quantizer so the model saves and moves.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer
