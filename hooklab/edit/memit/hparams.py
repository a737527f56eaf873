"""MEMIT's hyperparameters. Models under 1B parameters take the values chosen on SmolLM2-135M
over the CounterFact known dev facts (``benchmarks/results/edit-quality.md``), larger ones the
published values for GPT-J-6B (MEMIT paper). Layers 4–8 of 30 (EasyEdit's choice for this model)
held on dev with λ = 500 (GPT-J's λ = 15000 leaves most edits unwritten here). λ grows with
batches beyond 125 requests: on dev, batches of 50 and 100 were best at λ 500–1000 and a batch
of 500 at λ 2000 (``benchmarks/results/memit-lambda-h100.md``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hooklab.edit.hparams import SMALL, Hparams, check_value_settings, edit_layer, n_params
from hooklab.errors import HparamsError

if TYPE_CHECKING:
    from hooklab.model import HookedModel


@dataclass(frozen=True)
class WindowHparams(Hparams):
    """What MEMIT and its variants share: a window of layers and the target optimisation after it.

    Attributes:
        layers: the edited layers, in order; z is optimised after the last.
        (the others as in RomeHparams)
    """

    layers: tuple[int, ...]
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
            raise HparamsError(f"{type(self).__name__}.layers must be distinct and increasing, got {list(self.layers)}.")

    @staticmethod
    def window(model: HookedModel) -> tuple[int, ...]:
        """The default window: five layers from one below ROME's layer."""
        n = model.cfg.n_layers
        top = min(edit_layer(n) + 3, n - 2)
        return tuple(range(max(0, top - 4), top + 1))


@dataclass(frozen=True)
class MemitHparams(WindowHparams):
    """MEMIT (Meng et al. 2023): a window of layers, rank ≤ the batch size per layer.

    Attributes:
        mom2_update_weight: λ in ΔW = R Kᵀ (λC + K Kᵀ)⁻¹: how strongly the keys' statistics
            hold the layer to its old behaviour.
        mom2_batch_scale: batches of more requests than this scale λ in proportion (K Kᵀ sums
            over the batch while C is a mean, so a fixed λ holds a large batch's layers less);
            0 keeps λ fixed, as the MEMIT paper does.
        (the others as in WindowHparams)
    """

    mom2_update_weight: float = 500.0
    mom2_batch_scale: int = 125

    def update_weight(self, n_requests: int) -> float:
        """λ for a batch of ``n_requests``."""
        if self.mom2_batch_scale and n_requests > self.mom2_batch_scale:
            return self.mom2_update_weight * n_requests / self.mom2_batch_scale
        return self.mom2_update_weight

    def check(self, n_layers: int) -> None:
        super().check(n_layers)
        if self.mom2_update_weight < 0 or self.mom2_batch_scale < 0:
            raise HparamsError(f"{type(self).__name__}.mom2_update_weight and mom2_batch_scale must not be negative.")

    @classmethod
    def for_model(cls, model: HookedModel) -> MemitHparams:
        """Defaults for ``model``'s size over :meth:`window`."""
        if n_params(model) < SMALL:
            return cls(layers=cls.window(model))
        return cls(layers=cls.window(model), mom2_update_weight=15000.0, mom2_batch_scale=0, clamp_norm_factor=0.75)
