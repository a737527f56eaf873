"""The key/value cache handed to TransformerLens's attention under the name it reads.

transformers 5.24 renamed the cache argument of its layers from ``past_key_values`` to
``cache``. TransformerLens's attention bridges (4.3) still read ``past_key_values`` only, so an
attention called with ``cache=`` silently ignores it: each token attends to the tokens of its own
call alone (a prefix run once and reused, or generation with a KV cache, then go wrong). A
forward pre-hook on each attention bridge renames the argument back; with a transformers that
still says ``past_key_values`` it finds nothing to rename. The other way round, the bridge hands
the whole HF model ``past_key_values`` (generation, a prefix run once), which that transformers
takes with a deprecation warning: a pre-hook on the HF model gives it the new name.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn
from transformer_lens.model_bridge.generalized_components import AttentionBridge

# Names transformers has given the cache argument, newest first.
CACHE_ARGUMENTS = ("cache", "past_key_values", "layer_past")


def _renaming(old: str, new: str):
    def rename(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if old in kwargs and new not in kwargs:
            kwargs = dict(kwargs)
            kwargs[new] = kwargs.pop(old)
        return args, kwargs

    return rename


def hand_cache_over(bridge: nn.Module, hf_model: nn.Module) -> None:
    """Install the renaming hooks on every attention bridge of ``bridge`` and on ``hf_model``.

    The hooks are part of the loaded model, like its weights: they stay for its lifetime.
    """
    for module in bridge.modules():
        if isinstance(module, AttentionBridge):
            module.register_forward_pre_hook(_renaming("cache", "past_key_values"), with_kwargs=True)
    if cache_argument(hf_model.forward) == "cache":
        hf_model.register_forward_pre_hook(_renaming("past_key_values", "cache"), with_kwargs=True)


def cache_argument(forward: Any) -> str | None:
    """The name under which ``forward`` (an HF layer's) takes the key/value cache, if any."""
    params = inspect.signature(forward).parameters
    return next((name for name in CACHE_ARGUMENTS if name in params), None)
