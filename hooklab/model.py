"""HookedModel: a thin facade over TransformerLens's TransformerBridge.

TransformerLens's API works unchanged (``run_with_cache``, ``run_with_hooks``, ``hooks``, hook
names such as ``blocks.3.hook_resid_post``); hooklab adds what it needs on top: the HF model,
the placement of layers on devices and a fingerprint of the weights.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor, nn
from transformers import PreTrainedModel

from hooklab.errors import ExportError, WeightRewriteError
from hooklab.fingerprint import fingerprint
from hooklab.layers import check_layers, hook_layer

if TYPE_CHECKING:
    from hooklab.loading.placement import Placement


class HookedModel:
    """A loaded model with TransformerLens hooks.

    Attributes not defined here are the bridge's, so ``model.run_with_cache(...)``,
    ``model.hook_dict`` or ``model.blocks[3]`` are TransformerLens's own. The two calls that
    would rewrite the weights in place, ``enable_compatibility_mode()`` and ``process_weights()``,
    are refused unless ``allow_weight_rewrite=True`` says so (edits and fingerprints depend on them).

    Example:
        >>> model = hooklab.load("smollm2")
        >>> logits, cache = model.run_with_cache("The Eiffel Tower is in")
        >>> cache["blocks.3.hook_resid_post"].shape
    """

    def __init__(
        self,
        bridge: Any,
        hf_model: PreTrainedModel,
        tokenizer: Any,
        placement: Placement,
        name: str,
        weight_slots: dict[str, tuple[nn.Module, str]],
    ):
        self.bridge = bridge
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.placement = placement
        self.name = name
        self._weight_slots = weight_slots
        self._fingerprint: tuple[tuple, str] | None = None
        self.edits: list = []  # the weight edits applied now, oldest first (Edit.apply and undo keep it)

    @property
    def cfg(self) -> Any:
        """TransformerLens's config: ``n_layers``, ``d_model``, ``d_mlp``, ``n_heads``, ``d_vocab``, ..."""
        return self.bridge.cfg

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "bridge":
            raise AttributeError(name)
        return getattr(self.bridge, name)

    def __call__(self, input: Any, **kwargs: Any) -> Any:
        return self.bridge(input, **kwargs)

    def run_with_cache(self, *args: Any, layers: Iterable[int] | None = None, **kwargs: Any) -> Any:
        """TransformerLens's ``run_with_cache``; ``layers=[...]`` caches only those blocks' hooks.

        ``layers`` combines with ``names_filter`` (both must match), so a cache of a few layers
        costs memory for those layers only.

        Example:
            >>> logits, cache = model.run_with_cache(prompt, layers=[5, 6], names_filter=lambda n: "resid" in n)
        """
        if layers is not None:
            kwargs["names_filter"] = self._layer_filter(layers, kwargs.get("names_filter"))
        return self.bridge.run_with_cache(*args, **kwargs)

    def _layer_filter(
        self, layers: Iterable[int], names_filter: str | Sequence[str] | Callable[[str], bool] | None
    ) -> Callable[[str], bool]:
        """A TransformerLens ``names_filter`` that keeps only hooks of ``layers`` (and ``names_filter``'s).

        Without ``names_filter``, hooks TransformerLens leaves switched off (``attn.hook_result``
        until ``set_use_attn_result(True)``, ...) are left out, as a full cache leaves them out.
        """
        wanted = set(check_layers(layers, self.cfg.n_layers))
        if names_filter is None:
            also: Callable[[str], bool] = lambda name: self.bridge._gated_hook_reason(name) is None  # noqa: E731
        elif isinstance(names_filter, str):
            also = names_filter.__eq__
        elif callable(names_filter):
            also = names_filter
        else:
            also = set(names_filter).__contains__
        return lambda name: hook_layer(name) in wanted and also(name)

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any:
        return self.bridge.run_with_hooks(*args, **kwargs)

    def hooks(self, *args: Any, **kwargs: Any) -> Any:
        return self.bridge.hooks(*args, **kwargs)

    def to_tokens(self, input: str | list[str], **kwargs: Any) -> Int[Tensor, "batch pos"]:
        """Token ids as the model's own tokenizer makes them (BOS only where it adds one)."""
        return self.bridge.to_tokens(input, **kwargs)

    def to_str_tokens(self, input: Any, **kwargs: Any) -> list[str]:
        return self.bridge.to_str_tokens(input, **kwargs)

    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int = 20) -> str:
        """The greedy continuation of ``prompt`` (the new text only), stopping at end of sequence."""
        tokens = self.to_tokens(prompt)
        out = self.bridge.generate(
            tokens, max_new_tokens=max_new_tokens, do_sample=False, stop_at_eos=True, verbose=False
        )
        return self.tokenizer.decode(out[0, tokens.shape[1] :], skip_special_tokens=True)

    def save_pretrained(
        self,
        folder: str | os.PathLike,
        max_shard_size: int | str = "5GB",
        *,
        dtype: torch.dtype | str | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Save the current weights (edits applied), config and tokenizer as a standard HF folder.

        Written tensor by tensor from each device, atomically (:func:`hooklab.export.write_checkpoint`). A model
        with a WISE memory attached, or whose weights TransformerLens processed, is refused: no checkpoint holds that.

        Example:
            >>> model.save_pretrained("edited", max_shard_size="2GB")   # AutoModelForCausalLM / hooklab.load read it
        """
        hooks = [h for m in self.hf_model.modules() for h in m._forward_hooks.values()]
        if any(getattr(h, "answers_beside_weights", False) for h in hooks):
            raise ExportError(
                "a WISE side memory is attached to this model: its edits live in the memory's router, not in "
                "the weights, so a plain checkpoint cannot hold them. Save the memory with `mem.save(path)` (and "
                "`WiseMemory.load(model, path)` after loading the saved base model), then `mem.detach()` and save "
                "the model."
            )
        if getattr(self.bridge, "_weights_processed", False):  # TransformerLens's own mark, set before it starts
            raise ExportError(
                "TransformerLens's weight processing (enable_compatibility_mode() or process_weights()) rewrote this "
                "model's weights, and part of the result (for instance GPT-2's split attention, or value biases "
                "folded into output projections that have no bias) lives in TransformerLens's components, where no "
                "HF checkpoint can hold it. Save the model before processing it, or load it afresh and save that."
            )
        from hooklab.export import write_checkpoint
        from hooklab.loading.skeleton import tied_keys

        weights = dict(self.named_weights())
        for target, source in tied_keys(self.hf_model).items():  # a tied tensor under the name HF keeps
            if target in weights and source not in weights:
                weights[source] = weights.pop(target)
        config = copy.deepcopy(self.hf_model.config)
        config.architectures = [type(self.hf_model).__name__]  # a config read from a GGUF file has none
        out = write_checkpoint(folder, weights, config, self.tokenizer, getattr(self.hf_model, "generation_config", None),
                               max_shard_size=max_shard_size, dtype=dtype, overwrite=overwrite)  # fmt: skip
        return out

    def enable_compatibility_mode(self, *args: Any, allow_weight_rewrite: bool = False, **kwargs: Any) -> None:
        """TransformerLens's compatibility mode; refused where it would rewrite the weights, unless allowed.

        ``no_processing=True`` (legacy hook names only) leaves the weights alone and always runs.
        """
        bound = inspect.signature(self.bridge.enable_compatibility_mode).bind(*args, **kwargs)
        if not bound.arguments.get("no_processing", False) and not allow_weight_rewrite:
            raise WeightRewriteError(_rewrite_message("enable_compatibility_mode()", legacy_hooks=True))
        self.bridge.enable_compatibility_mode(*args, **kwargs)

    def process_weights(self, *args: Any, allow_weight_rewrite: bool = False, **kwargs: Any) -> None:
        """TransformerLens's weight processing (fold_ln, centring, ...); refused unless allowed."""
        if not allow_weight_rewrite:
            raise WeightRewriteError(_rewrite_message("process_weights()", legacy_hooks=False))
        self.bridge.process_weights(*args, **kwargs)

    def named_weights(self) -> list[tuple[str, Tensor]]:
        """The HF model's parameters under their checkpoint names (shared tensors once)."""
        return [(name, getattr(module, attr)) for name, (module, attr) in self._weight_slots.items()]

    @property
    def fingerprint(self) -> str:
        """A stable digest of the weights' names, shapes, dtypes and contents.

        Recomputed only when a weight was replaced or changed in place since the last call.
        """
        key = self.weights_version()
        if self._fingerprint is None or self._fingerprint[0] != key:
            self._fingerprint = (key, fingerprint(self.named_weights()))
        return self._fingerprint[1]

    def weights_version(self) -> tuple:
        """A key that changes whenever a weight is replaced or written in place."""
        return tuple((id(p), p._version) for _, p in self.named_weights())

    def vouch_fingerprint(self, value: str) -> None:
        """Take ``value`` as the fingerprint of the weights as they are now, without hashing them.

        Only for a caller that has just restored weights bit for bit to a state whose
        fingerprint it knows (``Edit.undo``): hashing a large model on the CPU takes seconds.
        """
        self._fingerprint = (self.weights_version(), value)

    def __repr__(self) -> str:
        c = self.cfg
        where = ", ".join(self.placement.distinct_devices)
        return (
            f"HookedModel({self.name!r}, {c.architecture}, n_layers={c.n_layers}, d_model={c.d_model}, "
            f"d_mlp={c.d_mlp}, n_heads={c.n_heads}, d_vocab={c.d_vocab}, dtype={c.dtype}, on {where})"
        )


def _rewrite_message(call: str, *, legacy_hooks: bool) -> str:
    """Why TransformerLens's weight processing is refused, and how to go ahead anyway."""
    alone = (" For TransformerLens's legacy hook names alone, enable_compatibility_mode(no_processing=True) "
             "leaves the weights as they are." if legacy_hooks else "")  # fmt: skip
    return (
        f"{call} rewrites the model's weights in place: TransformerLens folds the layer norms into the "
        "weights that read them, centres the weights that write to the residual stream and the unembedding, "
        "folds value biases and unties tied embeddings. The fingerprint changes, so edit files and WISE memories "
        "made for this model are refused from then on, an edit applied now can be undone only where the processing "
        "left its layer's weights alone, and the logits "
        "shift by a constant per position; a processed model cannot be saved as an HF checkpoint. Save what you "
        "need first (edit.save, mem.save, model.save_pretrained), "
        f"then pass allow_weight_rewrite=True (or call model.bridge.{call[:-2]}(...) directly).{alone}"
    )


def weight_slots(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Checkpoint name → (module, attribute) of every parameter, shared ones under their first name.

    Taken before TransformerLens wraps the modules (which renames them), and resolved anew at
    each use, so a parameter that is replaced later is still found.
    """
    slots, seen = {}, set()
    for module_name, module in model.named_modules():
        for attr, param in module.named_parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                slots[f"{module_name}.{attr}" if module_name else attr] = (module, attr)
    return slots
