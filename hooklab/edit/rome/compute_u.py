"""ROME's key side: k*, the subject's key averaged over context prefixes, and u = C⁻¹k* / ‖C⁻¹k*‖."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from hooklab import sites
from hooklab.edit.activations import read_at
from hooklab.edit.forward import Hooks
from hooklab.edit.request import EditRequest
from hooklab.edit.tokens import subject_prompt
from hooklab.errors import EditSolveError
from hooklab.model import HookedModel


def subject_keys(
    model: HookedModel, request: EditRequest, layer: int, templates: Sequence[str], hooks: Hooks = ()
) -> Float[Tensor, "n_templates d_mlp"]:
    """The MLP key of ``layer`` at the subject's last token, under each template (on the layer's device)."""
    prompts = [subject_prompt(model.tokenizer, t.format(request.prompt), request.subject) for t in templates]
    name = sites.mlp_out(model, layer).hook_in
    keys = read_at(model, [p.ids for p in prompts], [p.subject_last for p in prompts], [name], layer, hooks=hooks)
    return keys[name].float()


def compute_u(keys: Float[Tensor, "n_templates d_mlp"], second_moment: Float[Tensor, "d_mlp d_mlp"]) -> Float[Tensor, " d_mlp"]:
    """u = C⁻¹k* / ‖C⁻¹k*‖, k* the mean key; solved in float64 on the keys' device."""
    k_star = keys.mean(0).double()
    try:
        u = torch.linalg.solve(second_moment.to(keys.device, torch.float64), k_star)
    except RuntimeError as e:  # torch.linalg.LinAlgError: C is singular
        raise EditSolveError(
            f"the key statistics C are singular ({e}); collect them over more tokens (mom2_tokens)."
        ) from None
    if not torch.isfinite(u).all() or u.norm() == 0:
        raise EditSolveError("C⁻¹k* is NaN, infinite or zero; the key statistics are unusable. Collect them again.")
    return (u / u.norm()).float()
