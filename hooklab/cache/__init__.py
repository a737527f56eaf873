"""Layer-wise activation caches: chosen hooks over a corpus, in memory, streamed to disk, or reduced."""

from hooklab.cache.activations import Activations
from hooklab.cache.collect import collect
from hooklab.cache.moments import Mean, SecondMoment

__all__ = ["Activations", "Mean", "SecondMoment", "collect"]
