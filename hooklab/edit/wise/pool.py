"""The unrelated texts' keys at the side layer, and how the router treats them as the memory grows.

The threshold's floor needs every unrelated text's highest routed score after each ``add``. Most of
it carries over from one edit to the next: a token's nearest stored key changes only if one of the
new edit's keys is nearer, and its score only if its side changed. So the pool keeps each token's
nearest key and score, and recomputes only those.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from hooklab.edit.wise.router import Sides, part_of, unit


class UnrelatedPool:
    """Layer L's keys of each unrelated text and their routing under the memory's sides."""

    def __init__(self, texts: Sequence[Float[Tensor, "pos d_mlp"]]):
        self.texts = list(texts)
        self.keys = torch.cat(self.texts)  # (n, d_mlp): every token of every text
        device = self.keys.device
        self.text_of = part_of(self.texts)  # each token's text
        self._unit = unit(self.keys)
        self._similarity = torch.full((len(self.keys),), -torch.inf, device=device)  # to the nearest stored key
        self._nearest = torch.zeros(len(self.keys), dtype=torch.long, device=device)  # its index
        self._seen = 0  # stored keys compared so far
        self._side = torch.full((len(self.keys),), -1, dtype=torch.long, device=device)
        self._score = torch.zeros(len(self.keys), device=device)
        self._scored_with: list[Tensor] = []  # each side's change when its tokens were scored

    @torch.no_grad()
    def highest(self, deltas: Sequence[Float[Tensor, "d_model d_mlp"]], keys: Sequence[Float[Tensor, "n d_mlp"]]
                ) -> Float[Tensor, " texts"]:  # fmt: skip
        """Each text's highest routed score (‖Δ a‖ under its token's side) under the sides ``deltas`` with ``keys``.

        A memory's keys are only ever appended (in edit order), so those beyond the ones seen
        before are the new edits'; a side is rescored when its change is another tensor.
        """
        sides = Sides(deltas, keys, torch.float32)
        stored = torch.cat(sides.keys)
        if len(stored) < self._seen:  # not the memory this pool followed: start over
            self.__init__(self.texts)
        new = stored[self._seen :]
        if len(new):
            similarity, at = (self._unit @ unit(new).T).max(-1)
            nearer = similarity > self._similarity  # ties keep the earlier key, as the router's argmax does
            self._similarity = torch.where(nearer, similarity, self._similarity)
            self._nearest = torch.where(nearer, at + self._seen, self._nearest)
            self._seen = len(stored)
        side = sides.owner.to(self._nearest.device)[self._nearest]
        changed = torch.tensor([k >= len(self._scored_with) or d is not self._scored_with[k] for k, d in enumerate(sides.deltas)],
                               device=side.device)  # fmt: skip
        stale = (changed[side] | (side != self._side)).nonzero()[:, 0]
        if len(stale):
            self._score[stale] = sides.changes(self.keys[stale], side[stale]).float().norm(dim=-1)
        self._side, self._scored_with = side, list(sides.deltas)
        return self._score.new_zeros(len(self.texts)).scatter_reduce(0, self.text_of, self._score, "amax", include_self=False)
