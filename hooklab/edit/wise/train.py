"""Training one edit (or a few together) into the current knowledge shard with the WISE loss.

For the shard's change Δ (d_model, d_mlp) and the edit's rows (the prompt under each context
template, followed by the target), the loss is (Wang et al. 2024, eq. 4-6)

    CE:   − mean log P(target token | prompt, earlier target tokens), the side weights answering
          at the prompt's last token and the target's tokens (the *edited* tokens)
    act:  mean⁺(s_u − α) + mean⁺(β − s_e) + mean⁺(s_u − s_e + γ)

with s = ‖Δ a(x)‖ the activation score of a token's MLP keys a(x): s_e over the edited tokens,
s_u over unrelated tokens (unrelated texts and the prompt tokens before the edited ones), the
last term over all (unrelated, edited) pairs, and mean⁺ the mean of the positive entries (0 if
none), as in the reference code, plus the replay term that keeps the shard's earlier edits. Adam on
Δ with the gradient masked to the shard's entries; each entry of Δ is clamped to ±norm_constraint. Only the blocks above the side memory run per step
(:mod:`hooklab.edit.upper`); the model's weights get no gradients.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from hooklab import sites
from hooklab.edit.forward import log_probs
from hooklab.edit.request import EditRequest
from hooklab.edit.tokens import pad_id, target_ids
from hooklab.edit.upper import UpperRows
from hooklab.edit.values import _frozen
from hooklab.edit.wise.hparams import WiseHparams
from hooklab.errors import EditSolveError
from hooklab.model import HookedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    """The shard's new change and how the edit ended."""

    delta: Float[Tensor, "d_model d_mlp"]
    keys: Float[Tensor, "n d_mlp"]  # the edited tokens' keys in the prompts alone
    values: Float[Tensor, "n d_model"]  # the side memory's change there, Δ a: what later edits replay
    score: float  # the lowest activation score over the edited tokens of the prompts alone
    unrelated_score: float  # the highest over the unrelated tokens
    steps: int
    loss: float


def train_edit(
    model: HookedModel,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    unrelated_keys: Float[Tensor, "n d_mlp"],
    delta: Float[Tensor, "d_model d_mlp"],
    mask: Tensor,
    hp: WiseHparams,
    replay: tuple[Tensor, Tensor] | None = None,
) -> Trained:
    """Train ``requests`` into a copy of ``delta`` (float32 on the layer's device); ``delta`` is not written.

    ``templates`` start with ``"{}"`` (the prompt alone); ``unrelated_keys`` are layer L's MLP
    keys of unrelated tokens. Raises :class:`EditSolveError` if the loss turns NaN or infinite.
    """
    tok = model.tokenizer
    rows, split, targets, plain = [], [], [], []
    for request in requests:
        target = target_ids(tok, request.target)
        for t, template in enumerate(templates):
            prompt = tok(template.format(request.text))["input_ids"]
            rows.append(list(prompt) + list(target[:-1]))
            split.append(len(prompt) - 1)  # the prompt's last token predicts the target's first
            targets.append(target)
            plain.append(t == 0)
    key_hook = sites.mlp_out(model, hp.layer).hook_in
    upper = UpperRows(model, rows, split, hp.layer + 1, pad_id(tok), capture=[key_hook])
    device = delta.device
    keys = upper.captured[key_hook].to(device).float()  # (B, S, d_mlp)
    suffix = upper.suffix_mask.to(device).bool()  # (B, S)
    edited = keys[suffix]  # (n_e, d_mlp)
    plain_edited = keys[torch.tensor(plain, device=device)][suffix[torch.tensor(plain, device=device)]]
    prefix = upper.prefix_captured[key_hook].to(device).float() if key_hook in upper.prefix_captured else keys.new_zeros(0, keys.shape[-1])
    # Negatives: the unrelated texts, and the tokens before the edited ones (template text and
    # the question's own words), so routing fires where the answer is produced and not before.
    unrelated = torch.cat([unrelated_keys.to(device).float(), prefix])  # (n_u, d_mlp)
    # Target tokens: row i's suffix position j predicts targets[i][j].
    at_row = torch.tensor([i for i, t in enumerate(targets) for _ in t])
    at_pos = torch.tensor([j for t in targets for j in range(len(t))])
    tokens = torch.tensor([x for t in targets for x in t])
    weight = torch.tensor([1.0 / (len(t) * len(targets)) for t in targets for _ in t])  # mean over tokens, then rows

    d = delta.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([d], lr=hp.edit_lr)
    grad_mask = mask.to(d.dtype)
    with _frozen(model):
        for step in range(hp.n_iter):
            change = (keys @ d.T) * suffix[..., None]  # (B, S, d_model): the side memory answers at the suffix
            resid = upper.run(change)
            lp = log_probs(model, resid[at_row.to(resid.device), at_pos.to(resid.device)])  # (M, V)
            picked = lp.gather(1, tokens.to(lp.device)[:, None])[:, 0]
            ce = -(picked * weight.to(lp.device)).sum().to(device)
            s_e, s_u = (edited @ d.T).norm(dim=-1), (unrelated @ d.T).norm(dim=-1)
            act = activation_loss(s_e, s_u, hp)
            loss = ce + act
            if replay is not None and len(replay[0]):
                # Earlier edits of this shard keep their side outputs (relative squared error).
                loss = loss + hp.replay * (replay[0] @ d.T - replay[1]).pow(2).sum() / replay[1].pow(2).sum().clamp_min(1e-12)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise EditSolveError(
                    f"the WISE edit diverged at step {step} (the loss is {value}); the memory is unchanged. "
                    "Lower edit_lr, or check the model's outputs for NaN."
                )
            log.debug("step %d: loss %.4f = CE %.4f + act %.4f", step, value, float(ce.detach()), float(act.detach()))
            separated = len(s_u) == 0 or float(s_e.detach().min()) * hp.act_ratio > float(s_u.detach().max())
            if float(ce.detach()) <= hp.stop_ce and separated:
                break  # the targets are near-certain and routing tells the edit from the unrelated tokens
            opt.zero_grad()
            loss.backward()
            d.grad.mul_(grad_mask)  # the shard's entries only (Adam leaves entries without gradient alone)
            opt.step()
            with torch.no_grad():
                d.clamp_(-hp.norm_constraint, hp.norm_constraint)
    d = d.detach()
    if not torch.isfinite(d).all():
        raise EditSolveError("the WISE edit produced NaN or infinite side weights; the memory is unchanged. Lower edit_lr.")
    with torch.no_grad():
        score = float((plain_edited @ d.T).norm(dim=-1).min())
        unrelated_score = float((unrelated @ d.T).norm(dim=-1).max()) if len(unrelated) else 0.0
        values = plain_edited @ d.T
    return Trained(d, plain_edited, values, score, unrelated_score, step + 1, value)


def activation_loss(edited: Float[Tensor, " n_e"], unrelated: Float[Tensor, " n_u"], hp: WiseHparams) -> Tensor:
    """The routing margins: unrelated scores under α, edited ones over β, each pair γ apart."""
    terms = [unrelated - hp.alpha, hp.beta - edited]
    if len(unrelated) and len(edited):
        terms.append(unrelated[:, None] - edited[None, :] + hp.gamma)
    return sum(_positive_mean(t) for t in terms)


def _positive_mean(x: Tensor) -> Tensor:
    positive = x[x > 0]
    return positive.mean() if positive.numel() else x.new_zeros(())
