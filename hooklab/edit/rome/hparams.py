"""ROME's hyperparameters. The defaults are the published ones (ROME paper, GPT-J-6B), which held
on SmolLM2-135M over the CounterFact known dev facts: layer 5 of 30 (EasyEdit's choice for this
model) reached ES 1.00 on the first 53 dev facts with NS at most a few records below the unedited
model's (``benchmarks/results/edit-quality.md``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hooklab.edit.hparams import Hparams, check_value_settings, edit_layer

if TYPE_CHECKING:
    from hooklab.model import HookedModel


@dataclass(frozen=True)
class RomeHparams(Hparams):
    """ROME (Meng et al. 2022): one layer, rank one per request.

    Attributes:
        layer: the layer whose MLP output projection is rewritten.
        v_steps, v_lr: Adam steps and learning rate for v*.
        v_weight_decay: weight of ‖δ‖/‖h‖² in v*'s loss; kl_factor: weight of the KL term.
        clamp_norm_factor: ‖δ‖ ≤ this × ‖h‖.
        context_lengths: ((tokens, count), ...) of generated context prefixes.
        mom2_tokens: corpus tokens for the key statistics C when they are collected here.
        seed: for the context prefixes (sampled).
    """

    layer: int
    v_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    kl_factor: float = 0.0625
    clamp_norm_factor: float = 4.0
    context_lengths: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))
    mom2_tokens: int = 100_000
    seed: int = 0

    @property
    def edit_layers(self) -> tuple[int, ...]:
        return (self.layer,)

    def check(self, n_layers: int) -> None:
        super().check(n_layers)
        check_value_settings(self, n_layers)

    @classmethod
    def for_model(cls, model: HookedModel) -> RomeHparams:
        """Defaults for ``model`` (the same numbers for every size), edit layer at ``EDIT_DEPTH``."""
        return cls(layer=edit_layer(model.cfg.n_layers))
