"""MEMIT: mass-editing memory in a transformer (Meng et al. 2023, arXiv 2210.07229). See README.md."""

from __future__ import annotations

from hooklab.edit.memit.hparams import MemitHparams
from hooklab.edit.method import EditMethod


def _compute(model, requests, hp: MemitHparams, second_moments):
    from hooklab.edit.memit.main import memit  # torch and the model stack only once an edit runs

    return memit(model, requests, hp, second_moments)


METHOD = EditMethod("memit", "a batch of requests spread over a window of layers, ΔW = R Kᵀ(λC + KKᵀ)⁻¹", MemitHparams,
                    compute=_compute)  # fmt: skip

__all__ = ["METHOD", "MemitHparams"]
