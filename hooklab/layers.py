"""Layer indices: the one check that those users give exist in the model, and the layer a hook name is in."""

from __future__ import annotations

import operator
from collections.abc import Iterable

from hooklab.errors import HooklabError, LayerIndexError


def check_layers(layers: Iterable[int], n_layers: int, error: type[HooklabError] = LayerIndexError) -> list[int]:
    """``layers`` as a list of ints, or ``error`` naming those not in 0..n_layers-1."""
    out, bad = [], []
    for layer in layers:
        try:
            index = None if isinstance(layer, bool) else operator.index(layer)  # numpy ints too, never 2.0
        except TypeError:
            index = None
        (out if index is not None and 0 <= index < n_layers else bad).append(layer if index is None else index)
    if bad:
        raise error(f"layer(s) {bad} out of range: the model has layers 0..{n_layers - 1} (count from 0; "
                    "write n_layers - 1 for the last).")  # fmt: skip
    return out


def hook_layer(name: str) -> int | None:
    """The block a hook belongs to; None for hooks outside the blocks (embedding, final norm, unembedding)."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None
