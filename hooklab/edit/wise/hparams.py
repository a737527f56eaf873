"""WISE's hyperparameters: a frozen dataclass, defaults for the model, strict loading.

The routing margins, act ratio and TIES density are the published ones (EasyEdit's LLaMA-2-7B
file for the WISE paper); the layer is given as a relative depth. The depth, the mask ratio, the
optimiser settings, the replay weight, the unrelated texts per edit and the floor's quantile were
tuned on SmolLM2-135M over zsRE records 500–599, the shard size (100, not the reference's 500) and
merging (off, not every 2 shards) over 998 edits (``hooklab/edit/wise/README.md``). They are the
same for every model size: no larger model has been tuned here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hooklab.edit.hparams import Hparams
from hooklab.errors import HparamsError

if TYPE_CHECKING:
    from hooklab.model import HookedModel

DEPTH = 0.5  # the side memory's relative depth: layer 15 of SmolLM2's 30, 16 of LLaMA-2-7B's 32


@dataclass(frozen=True)
class WiseHparams(Hparams):
    """WISE (Wang et al. 2024): a side copy of one MLP output projection, trained in shards.

    Attributes:
        layer: the layer whose MLP output projection the side memory copies.
        mask_ratio: ρ, the share of the side weights one knowledge shard may change (a random
            gradient mask per shard).
        edit_lr, n_iter: Adam's learning rate and the most steps per edit (training stops early
            once the targets' cross-entropy is under ``stop_ce`` and the router would tell the
            edit's tokens from the unrelated ones: act_ratio × their lowest score above the
            unrelated tokens' highest).
        stop_ce: that cross-entropy (mean over the target's tokens, in nats).
        alpha, beta, gamma: the routing margins: scores of unrelated tokens are pushed below
            alpha, those of edited tokens above beta, and their means at least gamma apart.
        act_ratio: the routing threshold ε is act_ratio × the lowest score an edit ended with.
        norm_constraint: each side weight stays within this of the main weight.
        edits_per_shard: edits trained into one shard before a new shard (and mask) begins.
        shards_per_merge: completed shards merged (TIES) into the side memory at once; 0: never
            (every shard stays a side of its own, and routing chooses among them).
        density: TIES's trim: the share of each shard's change kept when merging.
        context_lengths: ((tokens, count), ...) of generated prefixes the edit is trained under.
        replay: weight of the replay term: the edits already in the shard keep their side
            outputs (relative squared error at their keys), so later edits do not overwrite them.
        n_unrelated: unrelated texts drawn per edit for the routing loss.
        floor_quantile: ε never falls below this quantile of the unrelated texts' highest scores
            under the sides as they are (1: every unrelated text stays with the main weights; 0.99
            lets the top 1 % through, which the edits' own scores would otherwise have to clear).
        seed: masks, prefixes and the draw of unrelated texts.
    """

    layer: int
    mask_ratio: float = 0.5
    edit_lr: float = 0.02
    n_iter: int = 40
    stop_ce: float = 0.05
    alpha: float = 5.0
    beta: float = 20.0
    gamma: float = 10.0
    act_ratio: float = 0.88
    norm_constraint: float = 1.0
    edits_per_shard: int = 100
    shards_per_merge: int = 0
    density: float = 0.53
    context_lengths: tuple[tuple[int, int], ...] = ((5, 2), (10, 2))
    replay: float = 1000.0
    n_unrelated: int = 300
    floor_quantile: float = 0.99
    seed: int = 0

    @property
    def edit_layers(self) -> tuple[int, ...]:
        return (self.layer,)

    def check(self, n_layers: int) -> None:
        """Raise unless the layer exists and every number is in range."""
        super().check(n_layers)
        bad = [n for n in ("edit_lr", "n_iter", "act_ratio", "norm_constraint", "edits_per_shard") if getattr(self, n) <= 0]
        bad += [n for n in ("alpha", "gamma", "n_unrelated", "replay", "stop_ce", "shards_per_merge") if getattr(self, n) < 0]
        if not 0 < self.mask_ratio <= 1:
            bad.append("mask_ratio (in (0, 1])")
        if not 0 <= self.floor_quantile <= 1:
            bad.append("floor_quantile (in [0, 1])")
        if not 0 < self.density <= 1:
            bad.append("density (in (0, 1])")
        if self.beta <= self.alpha:
            bad.append("beta (above alpha)")
        if bad:
            raise HparamsError(f"WiseHparams: {bad} out of range (rates, steps and counts positive; margins not negative).")

    @classmethod
    def for_model(cls, model: HookedModel) -> WiseHparams:
        """The defaults with the layer at half of ``model``'s depth."""
        n = model.cfg.n_layers
        return cls(layer=min(n - 1, int(DEPTH * n)))
