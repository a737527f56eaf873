"""hooklab: interpretability-first tools for transformer language models.

Load any local checkpoint into a TransformerLens-style hooked model (on one device or
sharded over several), cache activations, locate and edit knowledge, merge models.
"""

from hooklab.cache import Activations, Mean, SecondMoment, collect
from hooklab.errors import HooklabError
from hooklab.lens import LogitLens, logit_lens
from hooklab.loading import Placement, load, plan_placement
from hooklab.merge import MergeResult, merge
from hooklab.model import HookedModel

__all__ = [
    "Activations", "HookedModel", "HooklabError", "LogitLens", "Mean", "MergeResult", "Placement", "SecondMoment",
    "collect", "load", "logit_lens", "merge", "plan_placement",
]  # fmt: skip
