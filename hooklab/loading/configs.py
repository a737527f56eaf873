"""What a config must say before hooklab builds a model from it: a causal LM of positive sizes.

transformers builds a model from almost any config (BERT as a masked-LM head, zero layers), and
the failure then surfaces far away as missing tensors or an impossible placement. Checking the
config itself names the real problem.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from hooklab.errors import InvalidConfigError, UnsupportedArchitectureError

# Sizes every decoder needs, under transformers' common names (configs map their own onto them).
_POSITIVE = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")


def check_config(config: PretrainedConfig, where: Path) -> None:
    """Refuse a config that is not a decoder-only causal LM or whose sizes cannot build one."""
    model_type = getattr(config, "model_type", None)
    architectures = list(getattr(config, "architectures", None) or [])
    # Encoders (BERT, RoBERTa, ...) carry is_decoder=False; their causal heads only work as decoders.
    if (
        model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        or getattr(config, "is_encoder_decoder", False)
        or getattr(config, "is_decoder", None) is False
    ):
        named = f" ({', '.join(architectures)})" if architectures else ""
        raise UnsupportedArchitectureError(
            f"{where} describes a '{model_type}' model{named}, which is not a decoder-only causal "
            "language model (an encoder, masked-LM or encoder-decoder architecture). hooklab loads "
            "causal LMs such as GPT-2, Llama, Qwen2, Mistral or Gemma; use one of those."
        )
    for name in _POSITIVE:
        value = getattr(config, name, None)
        if value is None and name != "num_hidden_layers":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidConfigError(
                f"{where} gives {name}={value!r}; it must be a positive integer. The config is "
                "damaged or was edited by hand: use the config.json saved with these weights."
            )
