"""Knowledge shards: the side memory's changes, each trained under its own random mask, merged with TIES.

Every shard is a change Δ of the side weights relative to the main weights (float32, as the
(d_model, d_mlp) view of ``sites.mlp_out``). A shard may change only the entries its mask holds
(a share ρ of them, drawn at random), so shards trained one after another write mostly
different entries. When ``shards_per_merge`` shards are complete (never, if it is 0) they are
merged with TIES into the side memory (``hooklab.merge.ties``, the one implementation merging
uses): the first merge weighs the shards equally; later ones weigh the new shards 0.4 in all and
what was merged before 0.6, as the reference implementation does. Each side keeps the keys of the
tokens its edits answer (the merged memory those of every shard merged into it): routing picks a
token's side by them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from hooklab.merge.methods import ties

NEW_SHARDS_SHARE = 0.4  # of a merge into an existing side memory; the memory keeps the rest


@dataclass
class Shard:
    """A change of the side weights and the entries it may touch."""

    delta: Float[Tensor, "d_model d_mlp"]
    mask: Bool[Tensor, "d_model d_mlp"]
    n_edits: int = 0
    keys: Tensor | None = None  # (n, d_mlp): the edited tokens' keys of the edits trained here
    values: Tensor | None = None  # (n, d_model): Δ a at those keys when each edit was trained (replayed while open)

    def remember(self, keys: Tensor, values: Tensor) -> None:
        self.keys = keys if self.keys is None else torch.cat([self.keys, keys])
        self.values = values if self.values is None else torch.cat([self.values, values])


def random_mask(shape: tuple[int, int], ratio: float, seed: int, device: torch.device) -> Bool[Tensor, "d_model d_mlp"]:
    """A mask holding each entry with probability ``ratio``; drawn on the CPU, so a seed gives one mask anywhere."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) < ratio).to(device)


@dataclass
class Shards:
    """The merged side memory, the completed shards not yet merged, and the shard being trained."""

    merged: Tensor | None = None
    merged_keys: Tensor | None = None  # the keys of every edit in the merged memory
    done: list[Shard] = field(default_factory=list)
    current: Shard | None = None
    n_started: int = 0  # shards begun so far: the next mask's seed offset
    n_merged: int = 0  # edits in the merged memory

    def sides(self) -> list[Float[Tensor, "d_model d_mlp"]]:
        """The changes routing chooses among: the merged memory, completed shards, the current one."""
        return [delta for delta, _ in self._sides()]

    def side_keys(self) -> list[Float[Tensor, "n d_mlp"]]:
        """The keys each side answers, in the order of :meth:`sides` (and of the edits)."""
        return [keys for _, keys in self._sides()]

    def _sides(self) -> list[tuple[Tensor, Tensor]]:
        out = [(self.merged, self.merged_keys)] if self.merged is not None else []
        out += [(s.delta, s.keys) for s in self.done]
        if self.current is not None and self.current.n_edits:
            out.append((self.current.delta, self.current.keys))
        return out

    @property
    def n_edits(self) -> int:
        return self.n_merged + sum(s.n_edits for s in self.done) + (self.current.n_edits if self.current else 0)

    def begin(self, shape: tuple[int, int], ratio: float, seed: int, device: torch.device) -> Shard:
        """The shard the next edit trains into (a new one, with a new mask, when none is open)."""
        if self.current is None:
            mask = random_mask(shape, ratio, seed + self.n_started, device)
            self.current = Shard(torch.zeros(shape, dtype=torch.float32, device=device), mask)
            self.n_started += 1
        return self.current

    def close_if_full(self, edits_per_shard: int, shards_per_merge: int, density: float) -> None:
        """Complete the current shard once it holds ``edits_per_shard`` edits; merge when enough are complete."""
        if self.current is None or self.current.n_edits < edits_per_shard:
            return
        self.current.values = None  # replay ends with the shard
        self.done.append(self.current)
        self.current = None
        if shards_per_merge and len(self.done) >= shards_per_merge:
            self.merged = merge([s.delta for s in self.done], self.merged, density)
            self.merged_keys = torch.cat([k for k in [self.merged_keys, *(s.keys for s in self.done)] if k is not None])
            self.n_merged += sum(s.n_edits for s in self.done)
            self.done = []


def merge(
    deltas: list[Float[Tensor, "d_model d_mlp"]], merged: Tensor | None, density: float
) -> Float[Tensor, "d_model d_mlp"]:
    """TIES over the shards' changes (and the earlier merged memory), relative to the main weights.

    The changes are task vectors of the side weights over the main ones, so the merge runs
    with base 0: the result is the merged change.
    """
    k = len(deltas)
    if merged is None:
        tensors, weights = deltas, [1.0 / k] * k
    else:
        tensors, weights = [*deltas, merged], [NEW_SHARDS_SHARE / k] * k + [1.0 - NEW_SHARDS_SHARE]
    return ties(torch.zeros_like(deltas[0]), tensors, weights, density).float()
