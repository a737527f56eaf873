"""AlphaEdit: null-space constrained knowledge editing (Fang et al. 2025, arXiv 2410.02355). See README.md."""

from __future__ import annotations

from hooklab.edit.alphaedit.hparams import AlphaEditHparams
from hooklab.edit.method import EditMethod


def _compute(model, requests, hp: AlphaEditHparams, second_moments):
    from hooklab.edit.alphaedit.main import alphaedit  # torch and the model stack only once an edit runs

    return alphaedit(model, requests, hp, second_moments)


METHOD = EditMethod("alphaedit", "MEMIT's update projected onto the null space of preserved keys, aware of earlier "
                    "edits' keys", AlphaEditHparams, compute=_compute)  # fmt: skip

__all__ = ["METHOD", "AlphaEditHparams"]
