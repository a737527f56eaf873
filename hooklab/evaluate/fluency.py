"""Fluency: the n-gram entropy of the model's own generations (ROME paper, section 4.2).

A model an edit damaged repeats itself, and its generations' bigram and trigram entropy
drops. As in the reference code: top-5 sampling, texts of about 100 tokens, the weighted mean
(2/3 · H₂ + 4/3 · H₃) / 2 of the bigram and trigram entropies in bits, over words and
punctuation (a regular expression here, NLTK's word tokenizer there).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import torch

from hooklab.edit.tokens import pad_id, pad_left
from hooklab.model import HookedModel

_WORDS = re.compile(r"\w+|[^\w\s]")
BATCH_SIZE = 16


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean of the n-gram entropies (bits) of ``text``."""
    words = _WORDS.findall(text)
    parts = []
    for n, weight in zip(ns, weights):
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        parts.append(weight * entropy)
    return sum(parts) / len(parts)


@torch.no_grad()
def generate_texts(
    model: HookedModel, prompts: Sequence[str], *, max_new_tokens: int = 100, seed: int = 0, batch_size: int = BATCH_SIZE
) -> list[str]:
    """Prompt + sampled continuation (top-5), seeded; batched with left padding."""
    tok = model.tokenizer
    pad = pad_id(tok)  # padded here: some tokenizers (SmolLM2's in some transformers versions) have no pad token
    texts = []
    devices = [d for d in model.placement.distinct_devices if d.startswith("cuda")]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for b in range(0, len(prompts), batch_size):
            ids, mask = pad_left([tok(p)["input_ids"] for p in prompts[b : b + batch_size]], pad, model.cfg.device)
            out = model.hf_model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                top_k=5,
                pad_token_id=pad,
            )
            texts += tok.batch_decode(out, skip_special_tokens=True)
    return texts
