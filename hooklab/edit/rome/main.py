"""ROME: one rank-one update per request at one layer's MLP output projection.

Requests are taken one after another, each computed on the model as the earlier ones leave it
(the reference code applies each before computing the next); here the earlier ones act
through hooks, so the model's weights are never written while computing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from hooklab import sites
from hooklab.edit.activations import update_hooks
from hooklab.edit.contexts import context_templates
from hooklab.edit.request import EditRequest
from hooklab.edit.rome.compute_u import compute_u, subject_keys
from hooklab.edit.rome.compute_v import compute_v
from hooklab.edit.rome.hparams import RomeHparams
from hooklab.edit.update import Update
from hooklab.model import HookedModel

log = logging.getLogger(__name__)


def rome(
    model: HookedModel,
    requests: Sequence[EditRequest],
    hp: RomeHparams,
    second_moment: torch.Tensor,
) -> tuple[dict[int, Update], dict]:
    """The update of ``hp.layer`` (ΔW = V Uᵀ, one column per request) and notes on how it was made.

    ``second_moment`` is C = E[k kᵀ] of the layer's keys.
    """
    layer = hp.layer
    device = sites.mlp_out(model, layer).device
    second_moment = second_moment.to(device)
    templates = context_templates(model, hp.context_lengths, seed=hp.seed)
    lefts: list[torch.Tensor] = []  # v per request, (d_model,)
    rights: list[torch.Tensor] = []  # u per request, (d_mlp,)
    probs = []
    for request in tqdm(requests, desc="ROME", unit="request", disable=len(requests) == 1, leave=False):
        done = {layer: Update(layer, torch.stack(lefts, 1), torch.stack(rights, 1))} if lefts else {}
        hooks = update_hooks(model, done)
        keys = subject_keys(model, request, layer, templates, hooks)  # (T, d_mlp); row 0: the prompt alone
        u = compute_u(keys, second_moment)
        v, values = compute_v(model, request, layer, u, keys[0], templates, hp, hooks)
        lefts.append(v.to(device))
        rights.append(u.to(device))
        probs.append(float(values.prob[0]))
        log.info("ROME %r -> %r: p(target) %.3f under the templates, ‖v‖ %.3g", request.text, request.target,
                 probs[-1], float(v.norm()))  # fmt: skip
    update = Update.from_factors(layer, torch.stack(lefts, 1), torch.stack(rights, 1))
    return {layer: update}, {"templates": templates, "target_prob": probs}
