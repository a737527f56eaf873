"""Knowledge editing: ROME and MEMIT, computed on each layer's own device, as reversible edits."""

from hooklab.edit.deltas import Edit, Update, apply_edit
from hooklab.edit.hparams import MemitHparams, RomeHparams
from hooklab.edit.main import compute_edit, edit
from hooklab.edit.request import EditRequest, requests_from_counterfact, requests_from_zsre

__all__ = [
    "Edit",
    "EditRequest",
    "MemitHparams",
    "RomeHparams",
    "Update",
    "apply_edit",
    "compute_edit",
    "edit",
    "requests_from_counterfact",
    "requests_from_zsre",
]
