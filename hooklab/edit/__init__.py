"""Knowledge editing: ROME, MEMIT, WISE, ... (``registry.py`` lists them), computed on each layer's own device, as reversible edits.

The names below are imported on first use (:mod:`hooklab.lazy`): the registry and the CLI read
the methods' names and hyperparameters without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hooklab.lazy import lazy_api

_API = {
    "AlphaEditHparams": "hooklab.edit.alphaedit",
    "Edit": "hooklab.edit.deltas",
    "Update": "hooklab.edit.update",
    "apply_edit": "hooklab.edit.deltas",
    "compute_edit": "hooklab.edit.main",
    "edit": "hooklab.edit.main",
    "MemitHparams": "hooklab.edit.memit",
    "EditMethod": "hooklab.edit.method",
    "register": "hooklab.edit.registry",
    "EditRequest": "hooklab.edit.request",
    "as_requests": "hooklab.edit.request",
    "requests_from_counterfact": "hooklab.edit.request",
    "requests_from_zsre": "hooklab.edit.request",
    "RomeHparams": "hooklab.edit.rome",
}
__all__ = list(_API)

if TYPE_CHECKING:
    from hooklab.edit.alphaedit import AlphaEditHparams
    from hooklab.edit.deltas import Edit, apply_edit
    from hooklab.edit.main import compute_edit, edit
    from hooklab.edit.memit import MemitHparams
    from hooklab.edit.method import EditMethod
    from hooklab.edit.registry import register
    from hooklab.edit.request import EditRequest, as_requests, requests_from_counterfact, requests_from_zsre
    from hooklab.edit.rome import RomeHparams
    from hooklab.edit.update import Update

__getattr__, __dir__ = lazy_api(globals(), _API)
