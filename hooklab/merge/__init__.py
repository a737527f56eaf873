"""Model merging: pure merge methods over tensors, a streamed layer-wise merge, LM-Cocktail, YAML."""

from hooklab.merge.cocktail import CocktailWeights, cocktail_weights
from hooklab.merge.methods import linear, slerp, task_arithmetic, ties
from hooklab.merge.registry import METHODS
from hooklab.merge.sources import TensorSource
from hooklab.merge.streamed import MergeResult, merge

__all__ = [
    "METHODS", "CocktailWeights", "MergeResult", "TensorSource", "cocktail_weights", "linear", "merge",
    "slerp", "task_arithmetic", "ties",
]  # fmt: skip
