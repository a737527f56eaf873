"""AlphaEdit's hyperparameters: MEMIT's target optimisation and layers, with the null-space
projection's threshold and the solve's ridge in place of MEMIT's λ. The threshold and ridge are the
published Llama-3-8B values (AlphaEdit reference code: nullspace_threshold 2e-2, L2 10); the value
optimisation settings are MEMIT's defaults for the model's size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hooklab.edit.memit.hparams import MemitHparams, WindowHparams
from hooklab.errors import HparamsError

if TYPE_CHECKING:
    from hooklab.model import HookedModel


@dataclass(frozen=True)
class AlphaEditHparams(WindowHparams):
    """AlphaEdit (Fang et al. 2025): MEMIT's update projected onto the null space of preserved keys.

    Attributes:
        nullspace_threshold: eigenvalues of C = E[k kᵀ] below this span the null space P projects
            onto (directions the preserved knowledge's keys barely use).
        l2: the ridge α in (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹, which keeps the solve well posed.
        (the others as in WindowHparams: MEMIT's layers and target optimisation)
    """

    nullspace_threshold: float = 2e-2
    l2: float = 10.0

    def check(self, n_layers: int) -> None:
        super().check(n_layers)
        if self.nullspace_threshold <= 0 or self.l2 <= 0:
            raise HparamsError("AlphaEditHparams.nullspace_threshold and l2 must be positive.")

    @classmethod
    def for_model(cls, model: HookedModel) -> AlphaEditHparams:
        """MEMIT's window and value settings for ``model``'s size, the published threshold and ridge."""
        return cls(layers=cls.window(model), clamp_norm_factor=MemitHparams.for_model(model).clamp_norm_factor)
