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

from hooklab.errors import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    MissingTokenizerError,
    UnsupportedArchitectureError,
)
from hooklab.loading.configs import check_config

# transformers reads these GGUF architectures, but they are not decoder-only causal LMs.
_NOT_CAUSAL_LM = {"general", "tokenizer", "t5", "umt5", "mamba"}


def gguf_architecture(path: Path) -> str:
    """The ``general.architecture`` a GGUF file declares, once its header parses and lists tensors."""
    try:
        reader = GGUFReader(path)
        field = reader.get_field("general.architecture")
        architecture = None if field is None else str(field.contents())
    except (ValueError, OSError, IndexError, KeyError, TypeError, OverflowError) as e:
        # gguf's reader indexes past the end of a damaged header instead of saying so.
        raise CorruptCheckpointError(
            f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); it is probably truncated "
            "or damaged: download it again."
        ) from e
    if architecture is None:
        raise CorruptCheckpointError(f"{path} declares no general.architecture; re-export it with llama.cpp's tools.")
    if not reader.tensors:
        raise CorruptCheckpointError(
            f"{path} holds no tensors, only metadata; it is not a model. Download or export the full GGUF file."
        )
    return architecture


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
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    check_config(config, path)
    return config


def read_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    """The dequantized model (on the CPU, in ``dtype``) and tokenizer stored in a GGUF file.

    Every parameter must come from the file: transformers would leave missing ones randomly
    initialised and say nothing.
    """
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype, attn_implementation="eager", output_loading_info=True
        )
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, KeyError, IndexError) as e:
        raise CorruptCheckpointError(
            f"transformers cannot read the weights in {path} ({type(e).__name__}: {e}); the file is damaged "
            "or incomplete: download or export it again."
        ) from e
    if info["missing_keys"] or info["mismatched_keys"]:
        absent = sorted(info["missing_keys"]) + [str(k[0]) for k in info["mismatched_keys"]]
        raise CheckpointMismatchError(
            f"{path} lacks {len(absent)} tensor(s) the model needs or stores them in other shapes (e.g. "
            f"{absent[0]}); the file is incomplete or its metadata describes another model. Export the "
            "full model again."
        )
    # The weights are plain tensors now; forget the GGUF quantizer so the model saves and moves.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:  # the tokenizers library raises plain Exception on a bad vocabulary
        raise MissingTokenizerError(
            f"{path} holds no usable tokenizer ({type(e).__name__}: {e}); export the GGUF with its "
            "tokenizer (llama.cpp's convert script writes it)."
        ) from e
    return model.eval(), tokenizer
