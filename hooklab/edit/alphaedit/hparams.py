"""AlphaEdit's hyperparameters: MEMIT's target optimisation and layers, with the null-space
projection's threshold and the solve's ridge in place of MEMIT's λ. The threshold and ridge are the
published Llama-3-8B values (AlphaEdit reference code: nullspace_threshold 2e-2, L2 10); the value
optimisation settings are MEMIT's defaults for the model's size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hooklab.edit.hparams import Hparams, check_value_settings
from hooklab.edit.memit.hparams import MemitHparams
from hooklab.errors import HparamsError

if TYPE_CHECKING:
    from hooklab.model import HookedModel


@dataclass(frozen=True)
class AlphaEditHparams(Hparams):
    """AlphaEdit (Fang et al. 2025): MEMIT's update projected onto the null space of preserved keys.

    Attributes:
        layers: the edited layers, in order; z is optimised after the last.
        nullspace_threshold: eigenvalues of C = E[k kᵀ] below this span the null space P projects
            onto (directions the preserved knowledge's keys barely use).
        l2: the ridge α in (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹, which keeps the solve well posed.
        (the others as in MemitHparams)
    """

    layers: tuple[int, ...]
    nullspace_threshold: float = 2e-2
    l2: float = 10.0
    v_steps: int = 25
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    kl_factor: float = 0.0625
    clamp_norm_factor: float = 4.0
    context_lengths: tuple[tuple[int, int], ...] = ((10, 5),)
    mom2_tokens: int = 100_000
    seed: int = 0

    @property
    def edit_layers(self) -> tuple[int, ...]:
        return self.layers

    def check(self, n_layers: int) -> None:
        super().check(n_layers)
        check_value_settings(self, n_layers)
        if not self.layers or list(self.layers) != sorted(set(self.layers)):
            raise HparamsError(f"AlphaEditHparams.layers must be distinct and increasing, got {list(self.layers)}.")
        if self.nullspace_threshold <= 0 or self.l2 <= 0:
            raise HparamsError("AlphaEditHparams.nullspace_threshold and l2 must be positive.")

    @classmethod
    def for_model(cls, model: HookedModel) -> AlphaEditHparams:
        """MEMIT's layers and value settings for ``model``, the published threshold and ridge."""
        memit = MemitHparams.for_model(model)
        return cls(layers=memit.layers, clamp_norm_factor=memit.clamp_norm_factor)
