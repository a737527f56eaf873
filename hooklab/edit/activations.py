"""Reading activations at chosen tokens, and updates that act through hooks before they are applied.

Computing an edit never writes a weight: where a method needs the model "as if" some updates
were in place (MEMIT's later layers, ROME's later requests), :func:`update_hooks` adds each
update's effect ``ΔW k`` to its layer's MLP output during the forward instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor

from hooklab import sites
from hooklab.blocks import stop_after
from hooklab.edit.forward import Hooks, positions
from hooklab.edit.tokens import pad_id, pad_right
from hooklab.edit.update import Update
from hooklab.model import HookedModel

ROWS_PER_BATCH = 64


def update_hooks(model: HookedModel, updates: Mapping[int, Update]) -> list[tuple[str, object]]:
    """Hooks that make the model behave as if ``updates`` were applied (ΔW k added to each MLP output)."""
    hooks = []
    for layer, update in updates.items():
        site = sites.mlp_out(model, layer)
        update = update.to(site.device)
        keys: dict[str, Tensor] = {}

        def read_key(k: Tensor, hook, keys=keys) -> None:
            keys["k"] = k

        def add_update(out: Tensor, hook, keys=keys, update=update) -> Tensor:
            k = keys.pop("k").float()
            if update.dense is not None:
                change = k @ update.dense.T  # (B, T, d_model)
            else:
                change = (k @ update.right) @ update.left.T  # (B, T, r) -> (B, T, d_model)
            return out + change.to(out.dtype)

        hooks += [(site.hook_in, read_key), (site.hook_out, add_update)]
    return hooks


@torch.no_grad()
def read_at(
    model: HookedModel,
    rows: Sequence[Sequence[int]],
    index: Sequence[int],
    names: Sequence[str],
    last_layer: int,
    *,
    hooks: Hooks = (),
) -> dict[str, Float[Tensor, "n d"]]:
    """Activations ``names`` of row ``i`` at token ``index[i]``, each on the device that made it.

    The forward stops after ``last_layer`` (no layer after it can matter to these hooks).
    """
    pad = pad_id(model.tokenizer)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: less padding
    found: dict[str, list[Tensor]] = {name: [] for name in names}
    for start in range(0, len(order), ROWS_PER_BATCH):
        chunk = order[start : start + ROWS_PER_BATCH]
        where = torch.tensor([index[i] for i in chunk])
        ids, mask = pad_right([rows[i] for i in chunk], pad, model.cfg.device)

        def grab(act: Tensor, hook, name: str) -> None:
            found[name].append(act[torch.arange(len(chunk), device=act.device), where.to(act.device)])

        capture = [(name, partial(grab, name=name)) for name in names] + [stop_after(last_layer)]
        with model.hooks(fwd_hooks=[*hooks, *capture]):
            model.bridge(ids, attention_mask=mask, position_ids=positions(mask))
    back = torch.tensor(order).argsort()
    return {name: torch.cat(parts)[back.to(parts[0].device)] for name, parts in found.items()}
