"""Context templates: short texts the model writes itself, put in front of an edit's prompt.

ROME averages the subject's key over such prefixes and optimises the new value under them,
so the edit holds whatever precedes the prompt (Meng et al. 2022, section 3.1). Each
template is ``"<generated text>. {}"``; ``"{}"`` (no prefix) always comes first. Generation
samples from the top 5 tokens after a document boundary, as the reference code does
(``<|endoftext|>`` there), seeded so that the same model and seed give the same templates; they
are kept in a small JSON file keyed by the model's fingerprint, the lengths and the seed, so
repeated edits of one model do not sample them again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from hooklab.model import HookedModel
from hooklab.paths import cache_dir

# The reference MEMIT code's openings: neutral, and single tokens in most vocabularies.
OPENINGS = ("The", "Therefore", "Because", "I", "You")


def context_templates(
    model: HookedModel,
    lengths: Sequence[tuple[int, int]],
    *,
    seed: int = 0,
    cache: str | os.PathLike | bool = True,
) -> list[str]:
    """``["{}"]`` followed by generated prefixes: ``count`` of about ``tokens`` tokens for each pair.

    Args:
        lengths: ``((tokens, count), ...)``; ROME's default ``((5, 10), (10, 10))`` gives 20.
        cache: folder of saved templates (True: ``$HOOKLAB_CACHE/templates``; False: none).
    """
    path = None
    if cache is not False and lengths:
        folder = cache_dir() / "templates" if cache is True else Path(cache)
        key = hashlib.sha256(json.dumps([[list(x) for x in lengths], seed, OPENINGS]).encode()).hexdigest()[:16]
        path = folder / f"{model.fingerprint}-{key}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # not there yet (or unreadable): sample them
            pass
    templates = _generate(model, lengths, seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(templates))
        tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
    return templates


@torch.no_grad()
def _generate(model: HookedModel, lengths: Sequence[tuple[int, int]], seed: int) -> list[str]:
    """Sample all prefixes in one batch to the longest length and cut each to its own: the
    first n tokens of a sample are a sample of n tokens."""
    tokenizer = model.tokenizer
    wanted = [(OPENINGS[i % len(OPENINGS)], tokens) for tokens, count in lengths for i in range(count)]
    texts: dict[int, str] = {}
    devices = [d for d in model.placement.distinct_devices if d.startswith("cuda")]
    with torch.random.fork_rng(devices=devices):  # leaves the caller's random state alone
        torch.manual_seed(seed)
        starts = [_after_boundary(model, opening)[0] for opening, _ in wanted]
        by_length: dict[int, list[int]] = {}  # one batch per start length, so no padding
        for i, start in enumerate(starts):
            by_length.setdefault(len(start), []).append(i)
        for rows in by_length.values():
            batch = torch.stack([starts[i] for i in rows])  # (n, t)
            new = [max(wanted[i][1] - len(tokenizer(wanted[i][0], add_special_tokens=False).input_ids), 1) for i in rows]
            out = model.bridge.generate(
                batch.to(model.cfg.device), max_new_tokens=max(new), do_sample=True, top_k=5, stop_at_eos=False,
                verbose=False,
            )  # fmt: skip
            for i, row, n in zip(rows, out, new):
                text = tokenizer.decode(row[: batch.shape[1] + n], skip_special_tokens=True).strip()
                # Braces would be read as format fields; line breaks would split the sentence.
                texts[i] = " ".join(text.replace("{", " ").replace("}", " ").split())
    return ["{}"] + [texts[i] + ". {}" for i in range(len(wanted))]


def _after_boundary(model: HookedModel, opening: str) -> torch.Tensor:
    """``opening``'s tokens after a document-boundary token, so the text reads as a document's start.

    A model whose tokenizer adds BOS gets it from ``to_tokens``; one without (SmolLM2) gets
    ``<|endoftext|>`` where the vocabulary has it, else its end-of-sequence token. Without any,
    small models continue a bare first word with noise.
    """
    tokens = model.to_tokens(opening)
    tokenizer = model.tokenizer
    if model.cfg.default_prepend_bos:
        return tokens
    boundary = tokenizer.get_vocab().get("<|endoftext|>")
    if boundary is None or boundary >= model.cfg.d_vocab:  # absent, or added to the tokenizer but not the model
        boundary = tokenizer.eos_token_id
    if boundary is None:
        return tokens
    return torch.cat([tokens.new_tensor([[boundary]]), tokens], 1)
