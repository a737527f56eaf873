"""Forward passes that compute only what editing and scoring read.

Two savings, both exact:
- the run stops after the last block, and only the positions that are scored go through the
  final norm and the unembedding (the vocabulary projection is a fifth of a small model's work);
- :class:`SplitRows` runs the tokens before a split once and keeps their keys and values: an
  edit that adds a vector at the subject's last token cannot change anything before it, so
  each optimisation step recomputes only the tokens from the subject's last one on.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import DynamicCache

from hooklab.blocks import stop_after, unembed
from hooklab.edit.tokens import pad_left, pad_right
from hooklab.model import HookedModel

Hooks = Sequence[tuple[str, object]]


def final_residual(
    model: HookedModel, ids: Int[Tensor, "batch pos"], *, hooks: Hooks = (), **kwargs
) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream after the last block (before the final norm), without the unembedding."""

    with model.hooks(fwd_hooks=[*hooks, stop_after(model.cfg.n_layers - 1)]):
        return model.bridge(ids, **kwargs)


def log_probs(model: HookedModel, resid: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_vocab"]:
    """Log-probabilities of the next token from final residuals: final norm, unembedding, log-softmax."""
    return unembed(model, resid).float().log_softmax(-1)


def positions(mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Position ids from an attention mask: real tokens count 0, 1, ...; padding gets 0."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


class SplitRows:
    """Token rows run in two parts: a fixed prefix once, the rest as often as needed.

    Row ``i`` is ``rows[i]``; its first ``split[i]`` tokens are the prefix, run once without
    gradients (left-padded, their keys and values kept) with ``hooks`` active. :meth:`run` runs
    the suffixes (right-padded) on top of a fresh copy of those keys and values and returns the
    final residual at suffix positions: index ``j`` of row ``i`` is token ``split[i] + j``.
    Hooks given to :meth:`run` must include ``hooks`` (they see suffix positions only).
    """

    def __init__(
        self, model: HookedModel, rows: Sequence[Sequence[int]], split: Sequence[int], pad: int, hooks: Hooks = ()
    ):
        self.model = model
        device = model.cfg.device
        prefixes = [list(r[:s]) for r, s in zip(rows, split)]
        suffixes = [list(r[s:]) for r, s in zip(rows, split)]
        self.suffix_ids, suffix_mask = pad_right(suffixes, pad, device)
        self.suffix_len = torch.tensor([len(s) for s in suffixes])
        self.cache = None
        if max(len(p) for p in prefixes) == 0:
            self.mask = suffix_mask
            self.suffix_positions = positions(suffix_mask)
            return
        prefix_ids, prefix_mask = pad_left(prefixes, pad, device)
        self.mask = torch.cat([prefix_mask, suffix_mask], 1)
        pos = positions(self.mask)
        width = prefix_ids.shape[1]
        self.suffix_positions = pos[:, width:]
        # The run fills the cache layer by layer; stopping after the last block skips the unembedding.
        self.cache = DynamicCache(config=model.hf_model.config)
        with torch.no_grad():
            final_residual(
                model, prefix_ids, hooks=hooks, attention_mask=prefix_mask, position_ids=pos[:, :width],
                past_key_values=self.cache, use_cache=True,
            )  # fmt: skip

    def run(self, hooks: Hooks = (), grad: bool = True) -> Float[Tensor, "batch suffix d_model"]:
        """Final residuals of the suffixes, with ``hooks`` active."""
        kwargs = {"attention_mask": self.mask, "position_ids": self.suffix_positions}
        if self.cache is not None:
            # The run appends the suffix's keys and values to the cache: give it a copy.
            kwargs["past_key_values"] = copy.deepcopy(self.cache)
        with nullcontext() if grad else torch.no_grad():
            return final_residual(self.model, self.suffix_ids, hooks=hooks, **kwargs)
