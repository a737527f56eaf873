"""MEMIT's targets: z, the residual stream after the last edited layer that makes each target likely.

z = h + δ with δ optimised as ROME's v* is (``hooklab.edit.values``), but in the residual
stream of the window's last layer; the window's layers then share the work of moving the
residual from h to z (Meng et al. 2023, section 4.3).
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor

from hooklab import sites
from hooklab.edit.request import EditRequest
from hooklab.edit.values import ValueHparams, Values, optimise_values
from hooklab.model import HookedModel


def compute_z(
    model: HookedModel, requests: Sequence[EditRequest], layer: int, templates: Sequence[str], hp: ValueHparams
) -> tuple[Float[Tensor, "n d_model"], Values]:
    """z for each request (on ``layer``'s device), and the optimisation's result."""
    values = optimise_values(model, requests, templates, layer, sites.resid_post(layer), hp)
    return values.init + values.delta, values
