"""Locate where a model recalls a fact: causal tracing (ROME) and its figures."""

from hooklab.locate.noise import REFERENCE_SUBJECTS, embedding_std, noise_scale
from hooklab.locate.result import TraceResult
from hooklab.locate.summary import CLASSES, TraceSummary, plot_summaries, summarize, token_classes, trace_many
from hooklab.locate.tracer import CausalTracer, Restoration, trace, window_layers

__all__ = [
    "CLASSES",
    "REFERENCE_SUBJECTS",
    "CausalTracer",
    "Restoration",
    "TraceResult",
    "TraceSummary",
    "embedding_std",
    "noise_scale",
    "plot_summaries",
    "summarize",
    "token_classes",
    "trace",
    "trace_many",
    "window_layers",
]
