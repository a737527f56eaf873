"""Causal traces of many facts, averaged by token class: the ROME paper's summary figures.

The indirect effect of a restoration is how much of p(answer) it brings back, ``score - low``
(each prompt's own corrupted probability). It is averaged over prompts for six classes of
tokens, as ROME does: the first, middle and last subject token, the first token after the
subject, further tokens, and the last token. Where classes coincide (a one-token subject is
its first and last token) the token counts in each; classes a prompt lacks (middle tokens of a
two-token subject) take nothing from it, and every middle or further token counts once.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from hooklab.errors import SubjectNotFoundError, TraceArgumentError
from hooklab.locate.noise import noise_scale
from hooklab.locate.plots import heatmap, layer_axis_label, rome_style, save
from hooklab.locate.result import TraceResult
from hooklab.locate.tracer import Kind, trace
from hooklab.model import HookedModel

log = logging.getLogger(__name__)

CLASSES = (
    "First subject token",
    "Middle subject tokens",
    "Last subject token",
    "First subsequent token",
    "Further tokens",
    "Last token",
)
_LINE_COLOURS = (0, 1, 2, 4, 5, 3)  # ROME's tab10 order for the six classes
_WHAT = {"hidden": "$h_i^{(l)}$", "mlp": "MLP", "attn": "Attn"}


def token_classes(subject_range: tuple[int, int], n_tokens: int) -> list[list[int]]:
    """The token positions of each of ``CLASSES`` in a prompt of ``n_tokens``."""
    b, e = subject_range
    last = n_tokens - 1
    return [[b], list(range(b + 1, e - 1)), [e - 1], [e] if e <= last else [], list(range(e + 1, last)), [last]]


@dataclass(frozen=True)
class TraceSummary:
    """Average indirect effect (``effect[c, l]``) of restoring layer l at token class c.

    ``std`` and ``counts`` (tokens averaged per class) give confidence intervals; ``low`` and
    ``high`` are the mean corrupted and clean p(answer); ``results`` the traces themselves.
    """

    kind: str
    window: int
    noise: float
    samples: int
    effect: Float[Tensor, "classes layers"]
    std: Float[Tensor, "classes layers"]
    counts: tuple[int, ...]
    low: float
    high: float
    results: tuple[TraceResult, ...]
    skipped: tuple[tuple[int, str], ...] = ()

    @property
    def n_prompts(self) -> int:
        return len(self.results)

    @property
    def total_effect(self) -> float:
        """Mean p(answer) the corruption takes away: ``high - low``."""
        return self.high - self.low

    def peak(self, token_class: str = "Last subject token") -> tuple[int, float]:
        """(layer, average indirect effect) where the effect at ``token_class`` is largest."""
        row = self.effect[CLASSES.index(token_class)]
        layer = int(row.argmax())
        return layer, float(row[layer])

    def plot(self, path: str | Path | None = None, *, model_name: str = "the model", ax=None):
        """ROME's summary heatmap: classes × layers, effects below 0 shown as 0."""
        import matplotlib.pyplot as plt

        with rome_style():
            if ax is None:
                fig, ax = plt.subplots(figsize=(3.5, 2), dpi=200)
            else:
                fig = ax.figure
            values = self.effect.clamp(min=0).numpy()
            mesh = heatmap(ax, values, list(CLASSES), self.kind, vmin=0.0)
            ax.set_title(f"Avg Indirect Effect of {_WHAT[self.kind]} over {self.n_prompts} prompts", fontsize=9)
            ax.set_xlabel(layer_axis_label(self.kind, self.window, model_name), fontsize=8)
            ax.tick_params(labelsize=7)
            bar = fig.colorbar(mesh, ax=ax)
            bar.ax.tick_params(labelsize=7)
            bar.ax.set_title("AIE", y=-0.12, fontsize=8)
            save(fig, path)
        return fig

    def plot_lines(self, ax, *, model_name: str = "the model") -> None:
        """ROME's line figure for this kind: one curve per class, shaded 95% confidence band."""
        import matplotlib.pyplot as plt

        cmap = plt.get_cmap("tab10")
        layers = range(self.effect.shape[1])
        for i, label in enumerate(CLASSES):
            if not self.counts[i]:
                continue
            y = self.effect[i].numpy()
            error = (1.96 * self.std[i] / math.sqrt(self.counts[i])).numpy()
            colour = cmap.colors[_LINE_COLOURS[i]]
            ax.fill_between(layers, y - error, y + error, alpha=0.3, color=colour)
            ax.plot(layers, y, label=label, color=colour)
        what = {
            "hidden": "single hidden vector",
            "mlp": f"run of {self.window} MLP lookups",
            "attn": f"run of {self.window} Attn modules",
        }[self.kind]
        ax.set_title(f"Average indirect effect of a {what}", fontsize=10)
        ax.set_ylabel("Average indirect effect on p(o)")
        ax.set_xlabel(f"Layer number in {model_name}")

    def to_dict(self, with_results: bool = False) -> dict[str, Any]:
        """JSON-ready summary; the per-prompt traces only if ``with_results``."""
        d = {
            "kind": self.kind,
            "window": self.window,
            "noise": self.noise,
            "samples": self.samples,
            "n_prompts": self.n_prompts,
            "classes": list(CLASSES),
            "effect": self.effect.tolist(),
            "std": self.std.tolist(),
            "counts": list(self.counts),
            "low": self.low,
            "high": self.high,
            "skipped": [list(s) for s in self.skipped],
        }
        if with_results:
            d["results"] = [r.to_dict() for r in self.results]
        return d


def plot_summaries(
    summaries: Sequence[TraceSummary], path: str | Path | None = None, *, model_name: str = "the model"
):
    """ROME's line figure: one panel per kind, side by side, a shared effect axis."""
    import matplotlib.pyplot as plt

    with rome_style():
        fig, axes = plt.subplots(1, len(summaries), figsize=(4.4 * len(summaries), 3.5), sharey=True, dpi=200)
        axes = [axes] if len(summaries) == 1 else list(axes)
        for ax, summary in zip(axes, summaries):
            summary.plot_lines(ax, model_name=model_name)
        axes[min(1, len(axes) - 1)].legend(frameon=False)
        fig.tight_layout()
        save(fig, path)
    return fig


def trace_many(
    model: HookedModel,
    records: Iterable[Mapping[str, Any]] | str | os.PathLike,
    *,
    kind: Kind = "mlp",
    window: int = 10,
    samples: int = 10,
    noise: str | float = "3sigma",
    seed: int = 0,
    max_rows: int | None = None,
    progress: bool = True,
) -> TraceSummary:
    """Trace every record (the target: the model's own answer) and average by token class.

    Args:
        records: CounterFact records (``requested_rewrite.prompt`` with ``{}`` and
            ``requested_rewrite.subject``), ``{"prompt", "subject"}`` dicts, or a JSON file of either.
        noise: measured once, then the same for every record.

    Example:
        >>> summary = hooklab.trace_many(model, "counterfact_known_dev.json", kind="mlp")
        >>> summary.peak("Last subject token"); summary.plot("aie-mlp.png")
    """
    if isinstance(records, (str, os.PathLike)):
        records = json.loads(Path(records).read_text())
    prompts = [_prompt_of(record, i) for i, record in enumerate(records)]
    scale = noise_scale(model, noise)
    results, skipped = [], []
    for i, (prompt, subject) in enumerate(tqdm(prompts, desc=f"tracing ({kind})", disable=not progress)):
        try:
            results.append(
                trace(model, prompt, subject, kind=kind, window=window, samples=samples, noise=scale, seed=seed,
                      max_rows=max_rows)  # fmt: skip
            )
        except SubjectNotFoundError as e:
            log.warning("record %d skipped: %s", i, e)
            skipped.append((i, str(e)))
    if not results:
        raise TraceArgumentError("no record could be traced; see the warnings for why.")
    return summarize(results, skipped)


def summarize(results: Sequence[TraceResult], skipped: Sequence[tuple[int, str]] = ()) -> TraceSummary:
    """Average the indirect effects of traces (all of one kind and window) by token class."""
    first = results[0]
    rows: list[list[Tensor]] = [[] for _ in CLASSES]
    for r in results:
        if (r.kind, r.window) != (first.kind, first.window):
            raise TraceArgumentError("summarize traces of one kind and window at a time.")
        effect = r.indirect_effect  # (T, L)
        for i, positions in enumerate(token_classes(r.subject_range, len(r.tokens))):
            rows[i].extend(effect[p] for p in positions)
    n_layers = first.scores.shape[1]
    stacked = [torch.stack(r) if r else torch.full((1, n_layers), torch.nan) for r in rows]
    return TraceSummary(
        kind=first.kind,
        window=first.window,
        noise=first.noise,
        samples=first.samples,
        effect=torch.stack([s.mean(0) for s in stacked]),
        std=torch.stack([s.std(0, correction=0) for s in stacked]),
        counts=tuple(len(r) for r in rows),
        low=sum(r.low for r in results) / len(results),
        high=sum(r.high for r in results) / len(results),
        results=tuple(results),
        skipped=tuple(skipped),
    )


def _prompt_of(record: Mapping[str, Any], index: int) -> tuple[str, str]:
    """(prompt, subject) of a CounterFact record or a {"prompt", "subject"} dict."""
    rewrite = record.get("requested_rewrite") if isinstance(record, Mapping) else None
    if isinstance(rewrite, Mapping) and {"prompt", "subject"} <= rewrite.keys():
        return rewrite["prompt"].replace("{}", rewrite["subject"]), rewrite["subject"]
    if isinstance(record, Mapping) and {"prompt", "subject"} <= record.keys():
        return record["prompt"], record["subject"]
    raise TraceArgumentError(
        f"record {index} has neither requested_rewrite.prompt/subject (CounterFact) nor prompt/subject; "
        "give CounterFact records or dicts with 'prompt' and 'subject'."
    )
