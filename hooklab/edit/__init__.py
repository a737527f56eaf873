"""Knowledge editing: ROME, MEMIT and WISE (``registry.py`` lists them), computed on each layer's own device, as reversible edits."""

from hooklab.edit.deltas import Edit, Update, apply_edit
from hooklab.edit.main import compute_edit, edit
from hooklab.edit.memit import MemitHparams
from hooklab.edit.method import EditMethod
from hooklab.edit.registry import register
from hooklab.edit.request import EditRequest, as_requests, requests_from_counterfact, requests_from_zsre
from hooklab.edit.rome import RomeHparams

__all__ = [
    "Edit",
    "EditMethod",
    "EditRequest",
    "MemitHparams",
    "RomeHparams",
    "Update",
    "apply_edit",
    "as_requests",
    "compute_edit",
    "edit",
    "register",
    "requests_from_counterfact",
    "requests_from_zsre",
]
