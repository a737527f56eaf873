"""AlphaEdit: MEMIT's per-layer loop with a solve that leaves the preserved knowledge alone.

For each layer l (MEMIT's loop: keys K, residual share R, with the earlier layers' updates in effect):

    P    = the null-space projection of C_l = E[k kᵀ]            (projection.py)
    K_p  = the keys of the AlphaEdit edits applied to the model before this one, at l
    ΔW_l = R · [(P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹ P K]ᵀ              solved in float64 on l's device

so ΔW_l k₀ = 0 for every key with P k₀ = 0 (Fang et al. 2025, eq. 14; reference code
jianghoucheng/AlphaEdit). Each update keeps its keys, so the next edit's K_p comes from the
model's applied edits (``model.edits``): undoing an edit takes its keys out as well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from hooklab.edit.alphaedit.hparams import AlphaEditHparams
from hooklab.edit.alphaedit.projection import cached_projection
from hooklab.edit.memit.main import memit
from hooklab.edit.request import EditRequest
from hooklab.edit.update import Update
from hooklab.errors import EditSolveError
from hooklab.model import HookedModel
from hooklab.paths import cache_dir


def alphaedit(
    model: HookedModel,
    requests: Sequence[EditRequest],
    hp: AlphaEditHparams,
    second_moments: Mapping[int, Tensor],
) -> tuple[dict[int, Update], dict]:
    """Updates of ``hp.layers``, each keeping the requests' keys at its layer, and notes."""
    keys_kept: dict[int, Tensor] = {}
    root = cache_dir() / "nullspace"

    def solve(layer: int, keys: Tensor, resid: Tensor, moment: Tensor) -> tuple[Tensor, Tensor]:
        projection = cached_projection(moment, hp.nullspace_threshold, root)  # (d_mlp, d_mlp), on l's device
        keys_kept[layer] = keys.T.float()  # (d_mlp, N)
        return solve_projected(keys, resid, projection, earlier_keys(model, layer, keys.device), hp.l2)

    updates, notes = memit(model, requests, hp, second_moments, solve=solve)
    return {layer: dataclasses.replace(u, keys=keys_kept[layer]) for layer, u in updates.items()}, notes


def earlier_keys(model: HookedModel, layer: int, device: torch.device) -> Tensor | None:
    """K_p K_pᵀ (float64) of the applied edits that kept their keys at ``layer``; None if there are none."""
    kept = [e.updates[layer].keys for e in model.edits if layer in e.updates and e.updates[layer].keys is not None]
    if not kept:
        return None
    k = torch.cat([t.to(device, torch.float64) for t in kept], dim=1)  # (d_mlp, M)
    return k @ k.T


def solve_projected(
    keys: Tensor, resid: Tensor, projection: Tensor, earlier: Tensor | None, l2: float
) -> tuple[Tensor, Tensor]:
    """Factors left = R (d_model, N), right = (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹ P K (d_mlp, N), float64 inside."""
    k = keys.T.double()  # (d_mlp, N)
    p = projection.to(k.device, torch.float64)
    covered = k @ k.T if earlier is None else k @ k.T + earlier.to(k.device, torch.float64)
    system = p @ covered + l2 * torch.eye(k.shape[0], dtype=torch.float64, device=k.device)
    try:
        right = torch.linalg.solve(system, p @ k)  # (d_mlp, N)
    except RuntimeError as e:  # torch.linalg.LinAlgError
        raise EditSolveError(f"the AlphaEdit system is singular ({e}); raise l2.") from None
    left = resid.T.double()
    if not (torch.isfinite(right).all() and torch.isfinite(left).all()):
        raise EditSolveError("the AlphaEdit solve gave NaN or infinite values; the model is unchanged. Raise l2.")
    return left.float(), right.float()
