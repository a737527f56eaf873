"""One prompt's causal trace: p(target) for every restored (token, layer), with its figure."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from hooklab.locate.plots import KIND_NAMES, heatmap, layer_axis_label, rome_style, save


@dataclass(frozen=True)
class TraceResult:
    """``scores[t, l]``: p(target) averaged over the corrupted samples with (token t, layer l)
    restored; ``low`` / ``high``: p(target) corrupted with nothing restored / clean.

    ``subject_range`` is (first, last + 1) into ``tokens``; ``window`` is 1 for ``"hidden"``.
    """

    prompt: str
    subject: str
    tokens: tuple[str, ...]
    subject_range: tuple[int, int]
    target: str
    target_id: int
    kind: str
    window: int
    samples: int
    noise: float
    seed: int
    scores: Float[Tensor, "tokens layers"]
    low: float
    high: float

    @property
    def indirect_effect(self) -> Float[Tensor, "tokens layers"]:
        """How much each restoration brings back: ``scores - low``."""
        return self.scores - self.low

    def peak(self) -> tuple[int, int, float]:
        """(token, layer, score) of the restoration that brings back the most."""
        flat = int(self.scores.argmax())
        token, layer = divmod(flat, self.scores.shape[1])
        return token, layer, float(self.scores[token, layer])

    def plot(self, path: str | Path | None = None, *, model_name: str = "the model", ax=None):
        """The ROME figure: a heatmap of p(target), subject tokens starred, scale from ``low``."""
        import matplotlib.pyplot as plt

        labels = list(self.tokens)
        for i in range(*self.subject_range):
            labels[i] += "*"
        labels = [repr(t)[1:-1] for t in labels]  # shows newlines and keeps leading spaces visible
        with rome_style():
            if ax is None:
                fig, ax = plt.subplots(figsize=(3.5, max(2.0, 0.2 * len(labels))), dpi=200)
            else:
                fig = ax.figure
            mesh = heatmap(ax, self.scores.numpy(), labels, self.kind, vmin=self.low)
            what = "state" if self.kind == "hidden" else KIND_NAMES[self.kind]
            ax.set_title(f"Impact of restoring {what} after corrupted input", fontsize=9)
            ax.set_xlabel(layer_axis_label(self.kind, self.window, model_name), fontsize=8)
            ax.tick_params(labelsize=7)
            bar = fig.colorbar(mesh, ax=ax)
            bar.ax.tick_params(labelsize=7)
            bar.ax.set_title(f"p({self.target.strip()})", y=-0.12, fontsize=8)
            save(fig, path)
        return fig

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``scores`` as nested lists)."""
        d = asdict(self)
        d.update(tokens=list(self.tokens), subject_range=list(self.subject_range), scores=self.scores.tolist())
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceResult:
        return cls(
            **{
                **d,
                "tokens": tuple(d["tokens"]),
                "subject_range": tuple(d["subject_range"]),
                "scores": torch.tensor(d["scores"]),
            }
        )
