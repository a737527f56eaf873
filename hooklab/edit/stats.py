"""The key statistics ROME and MEMIT whiten with: C = E[k kᵀ] of each edited layer's MLP keys.

They come from ``hooklab.collect(..., reduce="second_moment")`` (computed on each layer's
device and cached on disk by model fingerprint, corpus and token count); this module only
asks for them. Between uses they wait in host memory: a large model's C is d_mlp² float64
(1.6 GB for Llama-3-8B), and MEMIT's layers often share one GPU, so each goes to its layer's
device for that layer's solve only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from jaxtyping import Float
from torch import Tensor

from hooklab import sites
from hooklab.errors import EditRequestError
from hooklab.model import HookedModel

# A corpus (a text file, or texts) to collect from, or what ``hooklab.collect`` returned
# (hook name → SecondMoment), or plain matrices by hook name.
Stats = Union[str, os.PathLike, Sequence[str], Mapping[str, Any]]


def second_moments(
    model: HookedModel, layers: Sequence[int], stats: Stats | None, max_tokens: int
) -> tuple[dict[int, Float[Tensor, "d_mlp d_mlp"]], int | None]:
    """C for each layer (float64, in host memory) and the number of tokens behind it (None: not given)."""
    if stats is None:
        raise EditRequestError(
            "ROME and MEMIT need statistics of the edited layers' MLP keys: pass stats='path/to/corpus.txt' "
            "(a text corpus such as WikiText, collected once and cached) or stats=hooklab.collect(model, corpus, "
            "names=..., reduce='second_moment')."
        )
    names = {layer: sites.mlp_out(model, layer).hook_in for layer in layers}
    if isinstance(stats, (str, os.PathLike)) or _is_texts(stats):
        from hooklab.cache import collect

        stats = collect(model, stats, names=list(names.values()), reduce="second_moment", max_tokens=max_tokens)
    out, counts = {}, []
    for layer, name in names.items():
        if name not in stats:
            raise EditRequestError(
                f"the statistics given have no entry for {name} (layer {layer}); collect them with "
                f"hooklab.collect(model, corpus, names={name!r}, reduce='second_moment')."
            )
        entry = stats[name]
        moment = entry.moment if hasattr(entry, "moment") else entry
        if hasattr(entry, "count"):
            counts.append(int(entry.count))
        d_mlp = model.cfg.d_mlp
        if tuple(moment.shape) != (d_mlp, d_mlp):
            raise EditRequestError(
                f"the statistics for {name} have shape {tuple(moment.shape)}, expected ({d_mlp}, {d_mlp}): "
                "they belong to another model."
            )
        out[layer] = moment.to("cpu", torch.float64)
    return out, min(counts) if counts else None


def _is_texts(stats: Any) -> bool:
    return isinstance(stats, Sequence) and not isinstance(stats, Mapping) and all(isinstance(s, str) for s in stats)
