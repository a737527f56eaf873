"""Teacher-forced scoring of continuations, batched: each target token's log-probability and argmax.

The prompt is tokenized as the model's tokenizer does (with BOS where it adds one), the
continuation without special tokens, and the two id lists are joined, so the continuation's
tokens are exactly the ones scored. Only the scored positions go through the unembedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklab.edit.forward import final_residual, log_probs, positions
from hooklab.edit.tokens import pad_id, pad_right
from hooklab.errors import RecordFormatError
from hooklab.model import HookedModel

BATCH_SIZE = 32


@dataclass(frozen=True)
class Scored:
    """One continuation under teacher forcing."""

    log_probs: Float[Tensor, " n_tokens"]  # of each continuation token
    argmax: Int[Tensor, " n_tokens"]  # the model's top token at each of those positions
    tokens: Int[Tensor, " n_tokens"]  # the continuation's tokens

    @property
    def mean_log_prob(self) -> float:
        """Length-normalised: the mean log-probability per token (what ES/PS/NS compare)."""
        return float(self.log_probs.mean())

    @property
    def token_accuracy(self) -> float:
        """Share of continuation tokens that are the model's top prediction."""
        return float((self.argmax == self.tokens).float().mean())


@torch.no_grad()
def score(model: HookedModel, pairs: Sequence[tuple[str, str]], batch_size: int = BATCH_SIZE) -> list[Scored]:
    """Score each ``(prompt, continuation)``: the continuation's tokens teacher-forced after the prompt."""
    tok = model.tokenizer
    rows, starts, conts = [], [], []
    for prompt, continuation in pairs:
        ids = tok(prompt)["input_ids"]
        cont = tok(continuation, add_special_tokens=False)["input_ids"]
        if not cont:
            raise RecordFormatError(f"the continuation {continuation!r} of {prompt!r} tokenizes to nothing.")
        rows.append(ids + cont[:-1])
        starts.append(len(ids) - 1)  # the position that predicts the continuation's first token
        conts.append(cont)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths share a batch: less padding
    results: dict[int, Scored] = {}
    for b in range(0, len(order), batch_size):
        batch = order[b : b + batch_size]
        ids, mask = pad_right([rows[i] for i in batch], pad_id(tok), model.cfg.device)
        resid = final_residual(model, ids, attention_mask=mask, position_ids=positions(mask))  # (B, T, d)
        which = torch.tensor([j for j, i in enumerate(batch) for _ in conts[i]])
        where = torch.tensor([starts[i] + t for i in batch for t in range(len(conts[i]))])
        lp = log_probs(model, resid[which.to(resid.device), where.to(resid.device)])  # (M, V)
        tokens = torch.tensor([t for i in batch for t in conts[i]], device=lp.device)
        picked = lp.gather(1, tokens[:, None])[:, 0].cpu()
        top = lp.argmax(-1).cpu()
        at = 0
        for i in batch:
            n = len(conts[i])
            results[i] = Scored(picked[at : at + n], top[at : at + n], tokens[at : at + n].cpu())
            at += n
    return [results[i] for i in range(len(rows))]
