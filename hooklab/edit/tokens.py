"""Token ids of prompts and targets, and where the subject's last token lands.

ROME and MEMIT read and write the fact at the subject's last token. Its index is found from
the tokenizer's character offsets on the whole sentence, so it is right whatever the tokenizer
merges across the subject's boundary (counting the tokens of the pieces, as the reference code
does, is kept only for tokenizers without offsets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from hooklab.errors import EditRequestError


@dataclass(frozen=True)
class Prompt:
    """A tokenized sentence and the index of its subject's last token."""

    ids: tuple[int, ...]
    subject_last: int


def subject_prompt(tokenizer, template: str, subject: str) -> Prompt:
    """Tokenize ``template.format(subject)`` as the model sees it, and find the subject's last token."""
    start = template.index("{}")
    text = template.format(subject)
    end = start + len(subject)  # the subject covers characters [start, end)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        # The token that holds the subject's last character (special tokens have empty spans).
        hits = [i for i, (a, b) in enumerate(offsets) if a < end <= b]
        if not hits:
            raise EditRequestError(f"no token of {text!r} covers the end of the subject {subject!r}.")
        return Prompt(tuple(ids), hits[0])
    ids = tokenizer(text)["input_ids"]
    upto = tokenizer(text[:end])["input_ids"]
    return Prompt(tuple(ids), len(upto) - 1)


def target_ids(tokenizer, target: str) -> tuple[int, ...]:
    """The target's token ids as they follow a prompt (no special tokens)."""
    ids = tuple(tokenizer(target, add_special_tokens=False)["input_ids"])
    if not ids:
        raise EditRequestError(f"the target {target!r} tokenizes to nothing; give a target with visible text.")
    return ids


def pad_right(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Rows padded on the right to one length: ids and the attention mask (1 = real token)."""
    return _pad(rows, pad_id, device, left=False)


def pad_left(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Rows padded on the left to one length: ids and the attention mask (1 = real token)."""
    return _pad(rows, pad_id, device, left=True)


def _pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str, left: bool) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def pad_id(tokenizer) -> int:
    """A token id to pad with (never attended to): the pad token, else end of sequence, else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0
