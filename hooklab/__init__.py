"""hooklab: interpretability-first tools for transformer language models.

Load any local checkpoint into a TransformerLens-style hooked model (on one device or
sharded over several), cache activations, locate and edit knowledge, merge models.

The public names below are imported when first used (PEP 562), so ``import hooklab`` and
``hooklab --help`` do not pay for torch, transformers and TransformerLens up front.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from hooklab.lazy import lazy_api

# Every public name and the module that defines it: the one place the API is listed.
_API = {
    "Activations": "hooklab.cache",
    "Mean": "hooklab.cache",
    "SecondMoment": "hooklab.cache",
    "collect": "hooklab.cache",
    "AlphaEditHparams": "hooklab.edit",
    "Edit": "hooklab.edit",
    "EditMethod": "hooklab.edit",
    "EditRequest": "hooklab.edit",
    "MemitHparams": "hooklab.edit",
    "RomeHparams": "hooklab.edit",
    "apply_edit": "hooklab.edit",
    "compute_edit": "hooklab.edit",
    "edit": "hooklab.edit",
    "requests_from_counterfact": "hooklab.edit",
    "requests_from_zsre": "hooklab.edit",
    "WiseHparams": "hooklab.edit.wise",
    "WiseMemory": "hooklab.edit.wise",
    "HooklabError": "hooklab.errors",
    "data_path": "hooklab.paths",
    "evaluate": "hooklab.evaluate",
    "LogitLens": "hooklab.lens",
    "logit_lens": "hooklab.lens",
    "Placement": "hooklab.loading",
    "load": "hooklab.loading",
    "plan_placement": "hooklab.loading",
    "TraceResult": "hooklab.locate",
    "TraceSummary": "hooklab.locate",
    "trace": "hooklab.locate",
    "trace_many": "hooklab.locate",
    "MergeResult": "hooklab.merge",
    "merge": "hooklab.merge",
    "HookedModel": "hooklab.model",
}

__all__ = list(_API)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from hooklab.cache import Activations, Mean, SecondMoment, collect
    from hooklab.edit import (
        AlphaEditHparams,
        Edit,
        EditMethod,
        EditRequest,
        MemitHparams,
        RomeHparams,
        apply_edit,
        compute_edit,
        edit,
        requests_from_counterfact,
        requests_from_zsre,
    )
    from hooklab.edit.wise import WiseHparams, WiseMemory
    from hooklab.errors import HooklabError
    from hooklab.evaluate import evaluate
    from hooklab.lens import LogitLens, logit_lens
    from hooklab.loading import Placement, load, plan_placement
    from hooklab.locate import TraceResult, TraceSummary, trace, trace_many
    from hooklab.merge import MergeResult, merge
    from hooklab.model import HookedModel
    from hooklab.paths import data_path


__getattr__, __dir__ = lazy_api(globals(), _API)


class _Package(types.ModuleType):
    """Keeps ``hooklab.edit``, ``hooklab.evaluate`` and ``hooklab.merge`` the functions.

    Importing a subpackage binds it as an attribute of its parent; where the API has a
    function of the same name (``hooklab.edit`` the function, ``hooklab/edit/`` the package),
    the function wins, as it did when ``__init__`` imported everything eagerly.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _API and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
