"""MEMIT: many edits at once, spread over a window of layers.

For each layer l of the window, in order, with the updates of the layers before it in effect:

    K = the requests' keys at l                      (d_mlp, N)
    R = (z − h_L) / (layers left, l included)        (d_model, N), h_L the current residual at the last layer
    ΔW_l = R Kᵀ (λ C_l + K Kᵀ)⁻¹                      solved in float64 on l's device

so each layer takes an equal share of what remains (Meng et al. 2023, eq. 14 and Alg. 1). λ is
``hp.update_weight(N)``: fixed up to ``mom2_batch_scale`` requests, in proportion to N beyond. The
earlier layers' updates act through hooks, so the weights are never written while computing.

The last step, keys and residuals to the layer's update, is the ``solve`` argument of
:func:`memit`: a MEMIT variant (another objective for ΔW) is a new solve, not a copy of the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from hooklab import sites
from hooklab.edit.activations import read_at, update_hooks
from hooklab.edit.contexts import context_templates
from hooklab.edit.memit.compute_ks import compute_ks
from hooklab.edit.memit.compute_z import compute_z
from hooklab.edit.memit.hparams import MemitHparams
from hooklab.edit.request import EditRequest
from hooklab.edit.tokens import subject_prompt
from hooklab.edit.update import Update
from hooklab.errors import EditSolveError
from hooklab.model import HookedModel

log = logging.getLogger(__name__)

# (layer, keys K (N, d_mlp), residual share R (N, d_model), C on the layer's device) -> (left, right) factors of ΔW
Solve = Callable[[int, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def memit(
    model: HookedModel,
    requests: Sequence[EditRequest],
    hp: MemitHparams,
    second_moments: Mapping[int, Tensor],
    solve: Solve | None = None,
) -> tuple[dict[int, Update], dict]:
    """Updates of ``hp.layers`` (rank ≤ len(requests) each) and notes on how they were made.

    ``solve`` turns one layer's keys and residual share into its update; default MEMIT's
    :func:`solve_update` with λ = ``hp.update_weight(len(requests))``.
    """
    if solve is None:
        weight = hp.update_weight(len(requests))

        def solve(layer: int, keys: Tensor, resid: Tensor, moment: Tensor) -> tuple[Tensor, Tensor]:
            return solve_update(keys, resid, moment, weight)

    templates = context_templates(model, hp.context_lengths, seed=hp.seed)
    z_layer = hp.layers[-1]
    zs, values = compute_z(model, requests, z_layer, templates, hp)  # (N, d_model)
    prompts = [[subject_prompt(model.tokenizer, t.format(r.prompt), r.subject) for t in templates] for r in requests]
    plain = [p[0] for p in prompts]
    z_name = sites.resid_post(z_layer)
    updates: dict[int, Update] = {}
    for i, layer in enumerate(hp.layers):
        hooks = update_hooks(model, updates)
        device = sites.mlp_out(model, layer).device
        keys = compute_ks(model, prompts, layer, hooks)  # (N, d_mlp), on the layer's device
        now = read_at(model, [p.ids for p in plain], [p.subject_last for p in plain], [z_name], z_layer, hooks=hooks)
        resid = (zs - now[z_name].float()).to(device)  # (N, d_model)
        log.info("MEMIT layer %d: mean ‖z − h‖ %.3g over %d request(s)", layer, float(resid.norm(dim=1).mean()), len(requests))
        moment = second_moments[layer].to(device)  # on the device for this solve only
        left, right = solve(layer, keys, resid / (len(hp.layers) - i), moment)
        del moment
        updates[layer] = Update.from_factors(layer, left, right)
    return updates, {"templates": templates, "target_prob": values.prob.tolist()}


def solve_update(
    keys: Float[Tensor, "n d_mlp"],
    resid: Float[Tensor, "n d_model"],
    second_moment: Float[Tensor, "d_mlp d_mlp"],
    weight: float,
) -> tuple[Float[Tensor, "d_model n"], Float[Tensor, "d_mlp n"]]:
    """Factors of ΔW = R Kᵀ (λC + K Kᵀ)⁻¹: left = R (d_model, N), right = (λC + K Kᵀ)⁻¹ K (d_mlp, N).

    In float64 on the keys' device (C is symmetric, so (λC + K Kᵀ)⁻¹ K is the transpose of
    Kᵀ (λC + K Kᵀ)⁻¹).
    """
    k = keys.T.double()  # (d_mlp, N)
    system = weight * second_moment.to(k.device, torch.float64) + k @ k.T  # (d_mlp, d_mlp)
    try:
        right = torch.linalg.solve(system, k)  # (d_mlp, N)
    except RuntimeError as e:  # torch.linalg.LinAlgError
        raise EditSolveError(
            f"λC + K Kᵀ is singular ({e}); raise mom2_update_weight or collect the key statistics over more tokens."
        ) from None
    left = resid.T.double()  # (d_model, N)
    if not (torch.isfinite(right).all() and torch.isfinite(left).all()):
        raise EditSolveError(
            "the MEMIT solve gave NaN or infinite values (λC + K Kᵀ is ill-conditioned); the model is unchanged. "
            "Raise mom2_update_weight or collect the key statistics over more tokens."
        )
    return left.float(), right.float()
