"""hooklab: interpretability-first tools for transformer language models.

Load any local checkpoint into a TransformerLens-style hooked model (on one device or
sharded over several), cache activations, locate and edit knowledge, merge models.
"""

from hooklab.edit import (
    Edit,
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
from hooklab.merge import MergeResult, merge
from hooklab.model import HookedModel

__all__ = [
    "HookedModel", "HooklabError", "LogitLens", "MergeResult", "Placement", "load", "logit_lens", "merge",
    "plan_placement",
    "Edit", "EditRequest", "MemitHparams", "RomeHparams", "apply_edit", "compute_edit", "edit", "evaluate",
    "requests_from_counterfact", "requests_from_zsre",
    "WiseHparams", "WiseMemory",
]  # fmt: skip
