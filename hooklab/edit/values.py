"""The new value at the subject's last token: ROME's v* and MEMIT's z, found by gradient descent.

A vector δ is added to one activation (ROME: the MLP output projection's output at the edited
layer; MEMIT: the residual stream after the last edited layer) at the subject's last token,
and optimised with Adam to minimise, per request (Meng et al. 2022, eq. 4; 2023, eq. 16):

    mean over context templates of -log P(target | template + prompt) / len(target)
    + kl_factor · KL(P_δ || P) of the next token after "{subject} is a"
    + v_weight_decay · ‖δ‖ / ‖h‖²,        ‖δ‖ clamped to clamp_norm_factor · ‖h‖

where h is the activation before the edit. A request stops once its loss is under 0.05, as in
the reference code. Many requests are optimised together in one batch; each has its own δ and
its own loss terms, so the result is the same as optimising them one by one. The rows run once
up to the block that holds the activation, and each step runs only the blocks from there on
(:mod:`hooklab.edit.upper`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from hooklab import sites
from hooklab.edit.forward import Hooks, log_probs
from hooklab.edit.request import EditRequest
from hooklab.edit.tokens import pad_id, subject_prompt, target_ids
from hooklab.edit.upper import UpperRows
from hooklab.errors import EditSolveError
from hooklab.layers import hook_layer
from hooklab.model import HookedModel

log = logging.getLogger(__name__)
KL_TEMPLATE = "{} is a"
STOP_LOSS = 5e-2
# Token rows optimised together (each request has one per template, plus one): GPUs take more
# at once; activations kept for the backward pass bound it (~20 GB at 512 rows of 8B-sized layers).
ROWS_PER_BATCH = {"cpu": 256, "cuda": 512}


class ValueHparams(Protocol):
    v_steps: int
    v_lr: float
    v_weight_decay: float
    kl_factor: float
    clamp_norm_factor: float


@dataclass(frozen=True)
class Values:
    """Per request: the activation before the edit, the optimised change, the target's probability."""

    init: Float[Tensor, "n d_model"]
    delta: Float[Tensor, "n d_model"]
    prob: Float[Tensor, " n"]


def optimise_values(
    model: HookedModel,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    layer: int,
    hook: str,
    hp: ValueHparams,
    *,
    hooks: Hooks = (),
    rows_per_batch: int | None = None,
) -> Values:
    """δ for each request at activation ``hook`` of ``layer`` (shape (batch, pos, d_model)).

    Args:
        templates: context templates, ``"{}"`` first (its row gives the activation before the edit).
        hooks: extra forward hooks active throughout (updates computed earlier, not yet applied).
    """
    if templates[0] != "{}":
        raise ValueError("the first context template must be '{}' (the prompt alone)")
    device = sites.layer_device(model, layer)
    rows_per_batch = rows_per_batch or ROWS_PER_BATCH.get(device.type, 256)
    per_batch = max(1, rows_per_batch // (len(templates) + 1))
    per_batch = math.ceil(len(requests) / math.ceil(len(requests) / per_batch))  # chunks of even size
    # Requests whose tokens after the subject are as many share a batch: rows are padded to the
    # longest, and the padding would otherwise cost as much as the work.
    order = sorted(range(len(requests)), key=lambda i: _suffix_length(model, requests[i]))
    chunks = [order[i : i + per_batch] for i in range(0, len(order), per_batch)]
    parts = []
    for chunk in tqdm(chunks, desc="optimising targets", unit="batch", disable=len(chunks) == 1, leave=False):
        parts.append(_optimise(model, [requests[i] for i in chunk], templates, device, hook, hp, hooks))
    back = torch.tensor(order).argsort()  # from sorted order back to the requests' order
    return Values(*(torch.cat([getattr(p, f) for p in parts])[back.to(device)] for f in ("init", "delta", "prob")))


def _suffix_length(model: HookedModel, request: EditRequest) -> int:
    """Tokens from the subject's last one to the end of prompt + target (what each step runs)."""
    prompt = subject_prompt(model.tokenizer, request.prompt, request.subject)
    return len(prompt.ids) - prompt.subject_last + len(target_ids(model.tokenizer, request.target)) - 1


@dataclass(frozen=True)
class _Batch:
    """Token rows for a batch of requests and where their losses are read (suffix coordinates)."""

    rows: UpperRows
    row_request: Tensor  # (B,) request of each row
    first_rows: Tensor  # (N,) each request's "{}" row
    target_at: tuple[Tensor, Tensor]  # (M,), (M,): row and suffix position of each target token
    target_tokens: Tensor  # (M,)
    target_request: Tensor  # (M,)
    target_weight: Tensor  # (M,): 1 / (len(target) * templates), so weighted sums are the mean NLL
    kl_at: tuple[Tensor, Tensor]  # (N,), (N,)


def _batch(
    model: HookedModel, requests: Sequence[EditRequest], templates: Sequence[str], hook: str, hooks: Hooks
) -> _Batch:
    tok = model.tokenizer
    rows, split, row_request, first_rows = [], [], [], []
    t_row, t_pos, t_tok, t_req, t_w, kl_row, kl_pos = [], [], [], [], [], [], []
    for r, request in enumerate(requests):
        target = target_ids(tok, request.target)
        first_rows.append(len(rows))
        for template in templates:
            prompt = subject_prompt(tok, template.format(request.prompt), request.subject)
            start = prompt.subject_last
            for j, token in enumerate(target):  # token j is predicted at position len(ids) - 1 + j
                t_row.append(len(rows))
                t_pos.append(len(prompt.ids) - 1 + j - start)
                t_tok.append(token)
                t_req.append(r)
                t_w.append(1.0 / (len(target) * len(templates)))
            rows.append(list(prompt.ids) + list(target[:-1]))
            split.append(start)
            row_request.append(r)
        kl = subject_prompt(tok, KL_TEMPLATE, request.subject)
        kl_row.append(len(rows))
        kl_pos.append(len(kl.ids) - 1 - kl.subject_last)
        rows.append(list(kl.ids))
        split.append(kl.subject_last)
        row_request.append(r)
    long = lambda xs: torch.tensor(xs, dtype=torch.long)
    return _Batch(
        rows=UpperRows(model, rows, split, hook_layer(hook), pad_id(tok), hooks),
        row_request=long(row_request),
        first_rows=long(first_rows),
        target_at=(long(t_row), long(t_pos)),
        target_tokens=long(t_tok),
        target_request=long(t_req),
        target_weight=torch.tensor(t_w),
        kl_at=(long(kl_row), long(kl_pos)),
    )


def _optimise(
    model: HookedModel,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    device: torch.device,
    hook: str,
    hp: ValueHparams,
    hooks: Hooks,
) -> Values:
    batch = _batch(model, requests, templates, hook, hooks)
    n = len(requests)
    row_request = batch.row_request.to(device)
    delta = torch.zeros(n, model.cfg.d_model, device=device, requires_grad=True)
    init: list[Tensor] = []  # the activation before the edit, read on the first pass

    def add_delta(act: Tensor, hook) -> Tensor:  # act: (B, S, d_model); suffix position 0 is the subject's last token
        if not init:
            init.append(act[batch.first_rows.to(act.device), 0].detach().float())
        shifted = act[:, 0] + delta[row_request].to(act.dtype)
        return torch.cat([shifted[:, None], act[:, 1:]], 1)

    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    kept = torch.zeros_like(delta)  # δ of requests that reached the stop loss, frozen from then on
    kl_init = None
    steps = torch.full((n,), hp.v_steps, device=device)  # the step each request stopped at
    with _frozen(model):
        for step in range(hp.v_steps):
            resid = batch.rows.run(hooks=[*hooks, (hook, add_delta)])  # (B, S, d_model)
            target_lp = log_probs(model, _at(resid, batch.target_at))  # (M, V)
            kl_lp = log_probs(model, _at(resid, batch.kl_at))  # (N, V)
            loss_device = target_lp.device
            picked = target_lp.gather(1, batch.target_tokens.to(loss_device)[:, None])[:, 0]
            nll = torch.zeros(n, device=loss_device).index_add(
                0, batch.target_request.to(loss_device), -picked * batch.target_weight.to(loss_device)
            )
            if kl_init is None:
                kl_init = kl_lp.detach()
            kl = (kl_lp.exp() * (kl_lp - kl_init)).sum(-1)  # KL(P_δ || P), as the reference code has it
            h_norm = init[0].norm(dim=-1)
            decay = hp.v_weight_decay * delta.norm(dim=-1) / h_norm**2
            loss = nll + hp.kl_factor * kl + decay.to(loss_device)
            if not torch.isfinite(loss).all():
                raise EditSolveError(
                    "the optimisation of the new value diverged (NaN or infinite loss); the model is unchanged. "
                    "Lower v_lr or check the model's outputs for NaN."
                )
            log.debug("step %d: loss %s (NLL %s, KL %s, decay %s)", step, _fmt(loss), _fmt(nll), _fmt(kl), _fmt(decay))
            newly = (loss.detach().to(device) < STOP_LOSS) & ~done
            kept[newly] = delta.detach()[newly]
            steps[newly] = step
            done |= newly
            if done.all() or step == hp.v_steps - 1:
                break
            opt.zero_grad()
            (delta.grad,) = torch.autograd.grad(loss[~done.to(loss_device)].sum(), [delta])
            opt.step()
            with torch.no_grad():
                delta[done] = kept[done]
                limit = hp.clamp_norm_factor * h_norm  # (N,)
                norm = delta.norm(dim=-1)
                delta.mul_(torch.where(norm > limit, limit / norm, torch.ones_like(norm))[:, None])
    log.info("values of %d request(s): %d reached the stop loss, median stop step %d of %d",
             n, int(done.sum()), int(steps.median()), hp.v_steps)  # fmt: skip
    return Values(init=init[0], delta=delta.detach(), prob=(-nll.detach()).exp().to(device))


def _fmt(x: Tensor) -> str:
    return " ".join(f"{v:.3f}" for v in x.detach().flatten().tolist()[:8])


def _at(resid: Tensor, where: tuple[Tensor, Tensor]) -> Tensor:
    rows, pos = where
    return resid[rows.to(resid.device), pos.to(resid.device)]


@contextmanager
def _frozen(model: HookedModel) -> Iterator[None]:
    """Weights not requiring gradients for the duration (restored after): only δ is trained,
    and backward computes no weight gradients."""
    params = [p for _, p in model.named_weights() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
