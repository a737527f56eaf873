"""The look of the ROME paper's causal-tracing figures: serif type, one colour map per kind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
KIND_NAMES = {"hidden": "state", "mlp": "MLP", "attn": "Attn"}
_RC = {
    "font.family": "serif",
    "font.serif": ["Times New Roman", "Times", "STIXGeneral", "DejaVu Serif"],
    "mathtext.fontset": "stix",
}


@contextmanager
def rome_style() -> Iterator[None]:
    with matplotlib.rc_context(_RC):
        yield


def layer_axis_label(kind: str, window: int, model_name: str) -> str:
    if kind == "hidden":
        return f"single restored layer within {model_name}"
    return f"center of interval of {window} restored {KIND_NAMES[kind]} layers"


def heatmap(ax, values, labels: list[str], kind: str, vmin: float, vmax: float | None = None):
    """ROME's heatmap: rows top-down, one column per layer, ticks every 5 layers."""
    n_rows, n_layers = values.shape
    mesh = ax.pcolor(values, cmap=CMAPS[kind], vmin=vmin, vmax=vmax)
    ax.invert_yaxis()
    ax.set_yticks([0.5 + i for i in range(n_rows)])
    ax.set_yticklabels(labels)
    step = 5 if n_layers > 10 else 1
    ax.set_xticks([0.5 + i for i in range(0, n_layers, step)])
    ax.set_xticklabels(list(range(0, n_layers, step)))
    return mesh


def save(fig, path: str | Path | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight", dpi=200)
