"""ROME: rank-one model editing (Meng et al. 2022, arXiv 2202.05262). See README.md."""

from __future__ import annotations

from hooklab.edit.method import EditMethod
from hooklab.edit.rome.hparams import RomeHparams


def _compute(model, requests, hp: RomeHparams, second_moments):
    from hooklab.edit.rome.main import rome  # torch and the model stack only once an edit runs

    return rome(model, requests, hp, second_moments[hp.layer])


METHOD = EditMethod("rome", "one rank-one update per request at one layer, each seeing the earlier ones", RomeHparams,
                    compute=_compute)  # fmt: skip

__all__ = ["METHOD", "RomeHparams"]
