"""Token rows run once up to a block, then only the blocks from there on: what an optimisation step computes.

Editing optimises a change at one layer (ROME's v*, MEMIT's z, WISE's side memory) that acts
only from a split position on (the subject's last token, or the prompt's last). Nothing before
that position and no block below the change depends on it, so the rows run once: the prefix with
its keys and values kept (:class:`~hooklab.edit.forward.SplitRows`), then the suffix through the
whole model while a :class:`~hooklab.blocks.BlockRecord` records the input of block ``first`` and
the arguments each block from there on receives. A step then replays only blocks ``first``.. on
the suffix tokens, over a fresh copy of the prefix's keys and values. With weights frozen, the
backward pass is as short.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor

from hooklab.blocks import BlockRecord
from hooklab.edit.forward import Hooks, SplitRows
from hooklab.model import HookedModel


class UpperRows:
    """Rows split at ``split[i]``; :meth:`run` replays blocks ``first``.. on the suffixes.

    Attributes (suffix coordinates: index ``j`` of row ``i`` is token ``split[i] + j``):
        resid: the input of block ``first`` at the suffix (the final residual if ``first`` is
            ``n_layers``), ``(B, S, d_model)``.
        captured: for each hook name in ``capture``, its activation at the suffix, ``(B, S, ...)``.
        prefix_captured: the same at the prefix's real tokens, ``(n_prefix_tokens, ...)``.
        suffix_mask: 1 where a suffix position holds a real token, ``(B, S)``.

    ``hooks`` are active while the rows are first run; hooks on blocks from ``first`` on must be
    given to :meth:`run` again (only the blocks it runs fire them).
    """

    def __init__(
        self, model: HookedModel, rows: Sequence[Sequence[int]], split: Sequence[int], first: int, pad: int,
        hooks: Hooks = (), capture: Sequence[str] = (),
    ):  # fmt: skip
        self.model = model
        prefix_found: dict[str, Tensor] = {}
        found: dict[str, Tensor] = {}

        def grab(into: dict[str, Tensor], name: str):
            def hook(x: Tensor, hook) -> None:
                into[name] = x.detach()

            return hook

        self._rows = SplitRows(model, rows, split, pad, [*hooks, *((n, grab(prefix_found, n)) for n in capture)])
        width = self._rows.mask.shape[1] - self._rows.suffix_ids.shape[1]  # prefix width (left-padded)
        prefix_mask = self._rows.mask[:, :width].bool()
        self.prefix_captured = {n: x[prefix_mask.to(x.device)] for n, x in prefix_found.items()}
        self.suffix_mask = self._rows.mask[:, width:]

        self._blocks, final = BlockRecord.capture(
            model, lambda: self._rows.run([*hooks, *((n, grab(found, n)) for n in capture)], grad=False), first
        )
        self.resid: Float[Tensor, "batch suffix d_model"] = final if self._blocks.resid is None else self._blocks.resid
        self.captured = found

    def run(
        self, change: Float[Tensor, "batch suffix d_model"] | None = None, hooks: Hooks = ()
    ) -> Float[Tensor, "batch suffix d_model"]:
        """The final residual at the suffix when block ``first``'s input gains ``change`` there,
        with ``hooks`` active on the blocks run."""
        hidden = self.resid if change is None else self.resid + change.to(self.resid.dtype)
        fresh = copy.deepcopy(self._rows.cache) if self._rows.cache is not None else None
        with self.model.hooks(fwd_hooks=list(hooks)):
            return self._blocks.run(hidden, fresh)
