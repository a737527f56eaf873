"""LM-Cocktail's data-weighted mix: weights from each model's loss on a few examples.

Xiao et al. 2023 (LM-Cocktail): wᵢ = softmax(−Lᵢ / T), Lᵢ model i's mean cross-entropy on the
answer tokens of a few prompt/answer pairs; the models are then averaged with these weights.
Models are loaded one at a time and released before the next, and each batch is padded
only to its longest example (LM-Cocktail pads every example to 2048 tokens).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from hooklab.errors import MergeConfigError
from hooklab.merge.sources import TensorSource
from hooklab.model import HookedModel

log = logging.getLogger(__name__)

Example = tuple[str, str]
ExamplesLike = str | os.PathLike | Iterable[Example | dict[str, str]]


@dataclass(frozen=True)
class CocktailWeights:
    """Each model's mean answer loss and the merge weight it earns."""

    losses: tuple[float, ...]
    weights: tuple[float, ...]
    temperature: float


def read_examples(examples: ExamplesLike) -> list[Example]:
    """Prompt/answer pairs from pairs, dicts (``prompt``/``answer`` or LM-Cocktail's ``input``/``output``)
    or a .json / .jsonl file of such dicts. Answers carry their own leading space (``" Paris"``)."""
    if isinstance(examples, (str, os.PathLike)):
        path = Path(examples)
        if not path.is_file():
            raise MergeConfigError(f"examples file {path} does not exist; give a .json or .jsonl file of prompt/answer pairs.")
        text = path.read_text()
        try:
            examples = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)
        except json.JSONDecodeError as e:
            raise MergeConfigError(f"{path} is not valid JSON ({e}); write a list of {{'prompt': ..., 'answer': ...}}.") from e
    pairs = [_pair(e) for e in examples]
    if not pairs:
        raise MergeConfigError("weights='auto' needs at least one example (a prompt/answer pair).")
    return pairs


def _pair(example: Any) -> Example:
    if isinstance(example, dict):
        for prompt, answer in (("prompt", "answer"), ("input", "output")):
            if prompt in example and answer in example:
                return str(example[prompt]), str(example[answer])
    elif isinstance(example, (tuple, list)) and len(example) == 2:
        return str(example[0]), str(example[1])
    raise MergeConfigError(
        f"example {example!r} is not a prompt/answer pair; give (prompt, answer) or "
        "{'prompt': ..., 'answer': ...}."
    )


def encode(model: HookedModel, examples: Sequence[Example]) -> list[tuple[list[int], int]]:
    """Token ids of prompt + answer, and where the answer starts, as the model's tokenizer makes them."""
    tok = model.tokenizer
    out = []
    for prompt, answer in examples:
        prompt_ids = tok(prompt).input_ids
        answer_ids = tok(answer, add_special_tokens=False).input_ids
        if not answer_ids or not prompt_ids:
            raise MergeConfigError(f"example {(prompt, answer)!r} has an empty prompt or answer; give both.")
        out.append((prompt_ids + answer_ids, len(prompt_ids)))
    return out


@torch.no_grad()
def answer_loss(model: HookedModel, examples: Sequence[Example], batch_size: int = 8) -> float:
    """Mean cross-entropy over the answer tokens of ``examples`` (prompt tokens are context only)."""
    encoded = encode(model, examples)
    device = torch.device(model.cfg.device)
    total, count = 0.0, 0
    for i in range(0, len(encoded), batch_size):
        ids, mask, labels = _batch(encoded[i : i + batch_size], model.tokenizer.pad_token_id or 0)
        logits = model.hf_model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
        targets = labels[:, 1:].to(logits.device)  # token t predicts t + 1
        loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((targets != -100).sum())
    return total / count


def _batch(
    encoded: Sequence[tuple[list[int], int]], pad_id: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-padded ids, attention mask and labels (−100 outside the answers), as wide as the longest."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (seq, answer_start) in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, answer_start : len(seq)] = ids[row, answer_start : len(seq)]
    return ids, mask, labels


def cocktail_weights(
    sources: Sequence[TensorSource], examples: ExamplesLike, *, temperature: float = 5.0, device: str = "cpu"
) -> CocktailWeights:
    """softmax(−loss / T) over the models, each loaded on ``device`` in turn and released."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise MergeConfigError(f"temperature must be a finite number > 0, got {temperature!r}.")
    pairs = read_examples(examples)
    losses = []
    for source in sources:
        model = source.load(device)
        losses.append(answer_loss(model, pairs))
        log.info("answer loss of %s on %d examples: %.4f", source.label, len(pairs), losses[-1])
        if not math.isfinite(losses[-1]):
            raise MergeConfigError(
                f"{source.label} has a non-finite loss ({losses[-1]}) on the examples, so it cannot be weighed; "
                "check its weights for NaN or infinity, or give the weights yourself."
            )
        del model
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    weights = torch.softmax(-torch.tensor(losses, dtype=torch.float64) / temperature, 0).tolist()
    return CocktailWeights(tuple(losses), tuple(weights), temperature)
