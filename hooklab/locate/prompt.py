"""A traced prompt: its tokens, where the subject lies among them, and the target token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from hooklab.errors import SubjectNotFoundError, TraceArgumentError
from hooklab.model import HookedModel


@dataclass(frozen=True)
class Prompt:
    """``tokens[subject[0]:subject[1]]`` are the subject's tokens."""

    text: str
    subject_text: str
    ids: tuple[int, ...]
    str_tokens: tuple[str, ...]
    subject: tuple[int, int]

    @property
    def tokens(self) -> Int[Tensor, "1 pos"]:
        return torch.tensor([self.ids])


def tokenize(model: HookedModel, prompt: str, subject: str) -> Prompt:
    """Tokenize ``prompt`` as the model's tokenizer does and find the first ``subject`` in it.

    The subject's tokens are those whose characters overlap it (a token that carries the
    leading space, like " Tower", counts).
    """
    tokenizer = model.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise TraceArgumentError(
            "causal tracing locates the subject through character offsets, which only fast "
            "tokenizers provide; save the model with a tokenizer.json (a fast tokenizer)."
        )
    enc = tokenizer(prompt, return_offsets_mapping=True)
    ids = tuple(enc["input_ids"])
    str_tokens = tuple(tokenizer.decode([i]) for i in ids)
    start = prompt.find(subject) if subject else -1
    if start < 0:
        raise SubjectNotFoundError(
            f"the subject {subject!r} does not occur in the prompt {prompt!r}, whose tokens are "
            f"{list(str_tokens)}. Give the subject exactly as the prompt writes it (case and "
            "spacing matter)."
        )
    end = start + len(subject)
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < b and a < end and b > start]
    return Prompt(prompt, subject, ids, str_tokens, (inside[0], inside[-1] + 1))


def target_id(model: HookedModel, target: str | int) -> int:
    """A target given as text (its first token; mind the leading space) or as a token id."""
    if isinstance(target, str):
        ids = model.tokenizer(target, add_special_tokens=False).input_ids
        if not ids:
            raise TraceArgumentError(f"the target {target!r} has no tokens; give a word such as ' Paris'.")
        return ids[0]
    if not 0 <= target < model.cfg.d_vocab:
        raise TraceArgumentError(
            f"target token id {target} is outside the vocabulary (0..{model.cfg.d_vocab - 1})."
        )
    return int(target)
