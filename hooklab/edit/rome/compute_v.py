"""ROME's value side: v* optimised at the MLP output, and the update's right factor.

With u from compute_u and k the subject's key in the prompt alone, ΔW = v uᵀ maps k to
W k + δ, the optimised output, when v = δ / (uᵀk) (Meng et al. 2022, eq. 2; the reference
code's ``(target - cur_output) / dot(cur_input, left_vector)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from hooklab import sites
from hooklab.edit.forward import Hooks
from hooklab.edit.request import EditRequest
from hooklab.edit.values import ValueHparams, Values, optimise_values
from hooklab.errors import EditSolveError
from hooklab.model import HookedModel


def compute_v(
    model: HookedModel,
    request: EditRequest,
    layer: int,
    u: Float[Tensor, " d_mlp"],
    key: Float[Tensor, " d_mlp"],
    templates: Sequence[str],
    hp: ValueHparams,
    hooks: Hooks = (),
) -> tuple[Float[Tensor, " d_model"], Values]:
    """v such that W + v uᵀ writes the optimised value at ``key``; and the optimisation's result."""
    site = sites.mlp_out(model, layer)
    values = optimise_values(model, [request], templates, layer, site.hook_out, hp, hooks=hooks)
    scale = torch.dot(u.to(key.device, torch.float64), key.double())
    if not torch.isfinite(scale) or scale.abs() < 1e-12:
        raise EditSolveError(
            f"uᵀk is {float(scale):.3g} for {request.subject!r}: the key lies outside what the statistics C cover, "
            "so no rank-one update can reach it. Collect C over more tokens."
        )
    v = (values.delta[0].double() / scale).float()
    return v, values
