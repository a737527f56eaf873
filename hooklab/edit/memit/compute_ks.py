"""MEMIT's keys: each request's subject key at one layer, averaged over the context templates.

As in the reference code, the prompt alone counts as one group and the generated prefixes as
another, and the two group means are averaged: k = ½ k("{}") + ½ mean of k(prefix. {}).
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor

from hooklab import sites
from hooklab.edit.activations import read_at
from hooklab.edit.forward import Hooks
from hooklab.edit.tokens import Prompt
from hooklab.model import HookedModel


def compute_ks(
    model: HookedModel, prompts: Sequence[Sequence[Prompt]], layer: int, hooks: Hooks = ()
) -> Float[Tensor, "n d_mlp"]:
    """Keys of ``layer`` for each request; ``prompts[i]`` holds request i's prompt under each template ("{}" first)."""
    flat = [p for per_request in prompts for p in per_request]
    name = sites.mlp_out(model, layer).hook_in
    keys = read_at(model, [p.ids for p in flat], [p.subject_last for p in flat], [name], layer, hooks=hooks)[name]
    keys = keys.float().reshape(len(prompts), len(prompts[0]), -1)  # (N, T, d_mlp)
    if keys.shape[1] == 1:
        return keys[:, 0]
    return (keys[:, 0] + keys[:, 1:].mean(1)) / 2
