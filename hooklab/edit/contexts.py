"""Context templates: short texts the model writes itself, put in front of an edit's prompt.

ROME averages the subject's key over such prefixes and optimises the new value under them,
so the edit holds whatever precedes the prompt (Meng et al. 2022, section 3.1). Each
template is ``"<generated text>. {}"``; ``"{}"`` (no prefix) always comes first. Generation
samples from the top 5 tokens after a document boundary, as the reference code does
(``<|endoftext|>`` there), seeded so that the same model and seed give the same templates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hooklab.model import HookedModel

# The reference MEMIT code's openings: neutral, and single tokens in most vocabularies.
OPENINGS = ("The", "Therefore", "Because", "I", "You")


@torch.no_grad()
def context_templates(
    model: HookedModel, lengths: Sequence[tuple[int, int]], *, seed: int = 0
) -> list[str]:
    """``["{}"]`` followed by generated prefixes: ``count`` of about ``tokens`` tokens for each pair.

    Args:
        lengths: ``((tokens, count), ...)``; ROME's default ``((5, 10), (10, 10))`` gives 20.

    All prefixes are sampled in one batch to the longest length and cut to their own: the first
    n tokens of a sample are a sample of n tokens.
    """
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
