"""Which hooks to run: names and layers resolved against the model, checked before anything runs."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from hooklab import sites
from hooklab.errors import HookNameError, UnsupportedHookError
from hooklab.layers import check_layers, hook_layer

if TYPE_CHECKING:
    from hooklab.model import HookedModel

DEFAULT_HOOK = "hook_resid_post"


def resolve_hooks(
    model: HookedModel, names: str | Sequence[str] | None, layers: Iterable[int] | None
) -> list[str]:
    """Full hook names from ``names`` and ``layers``.

    A full name (``"blocks.5.hook_resid_post"``, ``"hook_embed"``) is taken as it is; a
    block-relative name (``"hook_resid_post"``, ``"mlp.out.hook_in"``) is expanded over
    ``layers`` (default every layer). No names means ``hook_resid_post``.

    Example:
        >>> resolve_hooks(model, ["hook_resid_post", "mlp.out.hook_in"], layers=[3, 4])
        ['blocks.3.hook_resid_post', 'blocks.4.hook_resid_post', 'blocks.3.mlp.out.hook_in', ...]
    """
    hook_dict = model.hook_dict
    layers = check_layers(range(model.cfg.n_layers) if layers is None else layers, model.cfg.n_layers)
    if names is None:
        names = [DEFAULT_HOOK]
    elif isinstance(names, str):
        names = [names]
    resolved: list[str] = []
    for name in names:
        if name in hook_dict:
            resolved.append(name)
        elif sites.block_hook(0, name) in hook_dict:
            resolved.extend(sites.block_hook(layer, name) for layer in layers)
        else:
            raise unknown_hook(model, name)
    if not resolved:
        raise HookNameError("no hooks to run: give at least one name and one layer.")
    for name in resolved:
        if (switch := model.bridge._gated_hook_reason(name)) is not None:
            raise UnsupportedHookError(
                f"{name} is switched off in TransformerLens until model.set_{switch}(True); call that first "
                "(it changes how attention is computed, and costs memory), or pick another hook."
            )
    return list(dict.fromkeys(resolved))


def unknown_hook(model: HookedModel, name: str) -> HookNameError:
    """The error for a hook name the model lacks, listing the closest names it has."""
    full = list(model.hook_dict)
    relative = sorted({n.split(".", 2)[2] for n in full if hook_layer(n) is not None})
    closest = difflib.get_close_matches(name, full + relative, n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(closest)}." if closest else ""
    return HookNameError(
        f"the model has no hook {name!r}.{hint} All names are in model.hook_dict; a block-relative "
        "name such as 'hook_resid_post' or 'mlp.out.hook_in' is taken for every layer in layers=."
    )
