"""The key/value cache handed to TransformerLens's attention under the name it reads.

transformers 5.24 renamed the cache argument of its layers from ``past_key_values`` to
``cache``. TransformerLens's attention bridges (4.3) still read ``past_key_values`` only, so an
attention called with ``cache=`` silently ignores it: each token attends to the tokens of its own
call alone (a prefix run once and reused, or generation with a KV cache, then go wrong). A
forward pre-hook on each attention bridge renames the argument back; with a transformers that
still says ``past_key_values`` it finds nothing to rename.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn
from transformer_lens.model_bridge.generalized_components import AttentionBridge

# Names transformers has given the cache argument, newest first.
CACHE_ARGUMENTS = ("cache", "past_key_values", "layer_past")


def _rename(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    if "cache" in kwargs and "past_key_values" not in kwargs:
        kwargs = dict(kwargs)
        kwargs["past_key_values"] = kwargs.pop("cache")
    return args, kwargs


def hand_cache_to_attention(bridge: nn.Module) -> int:
    """Install the renaming hook on every attention bridge of ``bridge``; returns how many.

    The hooks are part of the loaded model, like its weights: they stay for its lifetime.
    """
    attentions = [m for m in bridge.modules() if isinstance(m, AttentionBridge)]
    for module in attentions:
        module.register_forward_pre_hook(_rename, with_kwargs=True)
    return len(attentions)


def cache_argument(forward: Any) -> str | None:
    """The name under which ``forward`` (an HF layer's) takes the key/value cache, if any."""
    params = inspect.signature(forward).parameters
    return next((name for name in CACHE_ARGUMENTS if name in params), None)
