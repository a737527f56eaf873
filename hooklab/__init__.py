"""hooklab: interpretability-first tools for transformer language models.

Load any local checkpoint into a TransformerLens-style hooked model (on one device or
sharded over several), cache activations, locate and edit knowledge, merge models.
"""

from hooklab.cache import Activations, Mean, SecondMoment, collect
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
from hooklab.locate import TraceResult, TraceSummary, trace, trace_many
from hooklab.merge import MergeResult, merge
from hooklab.model import HookedModel

__all__ = [
    "Activations", "HookedModel", "HooklabError", "LogitLens", "Mean", "MergeResult", "Placement", "SecondMoment",
    "TraceResult", "TraceSummary", "collect", "load", "logit_lens", "merge", "plan_placement", "trace", "trace_many",
    "Edit", "EditRequest", "MemitHparams", "RomeHparams", "apply_edit", "compute_edit", "edit", "evaluate",
    "requests_from_counterfact", "requests_from_zsre",
    "WiseHparams", "WiseMemory",
]  # fmt: skip
