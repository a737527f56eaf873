"""The logit lens: each layer's residual stream read out through the final norm and unembedding.

Shows at which layer the model's answer (or any target token) becomes its top prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklab.blocks import unembed
from hooklab.model import HookedModel
from hooklab.sites import resid_post


@dataclass(frozen=True)
class LogitLens:
    """Top token and the target's probability and rank, at every layer and position."""

    str_tokens: list[str]
    top_tokens: list[list[str]]
    top_probs: Float[Tensor, "layer pos"]
    target: str
    target_probs: Float[Tensor, "layer pos"]
    target_ranks: Int[Tensor, "layer pos"]

    def first_top_layer(self, pos: int = -1) -> int | None:
        """The first layer at which the target is the top token at ``pos`` (None if never)."""
        hits = (self.target_ranks[:, pos] == 0).nonzero()
        return int(hits[0]) if len(hits) else None

    def rows(self, pos: int = -1) -> list[dict]:
        """One row per layer at position ``pos``: top token, its probability, the target's."""
        return [
            {
                "layer": layer,
                "top_token": self.top_tokens[layer][pos],
                "top_prob": float(self.top_probs[layer, pos]),
                "target_prob": float(self.target_probs[layer, pos]),
                "target_rank": int(self.target_ranks[layer, pos]),
            }
            for layer in range(len(self.top_tokens))
        ]

    def table(self, pos: int = -1) -> str:
        """The rows as aligned text, for a terminal."""
        lines = [f"layer  {'top token':<14} p(top)  p({self.target!r})  rank"]
        for r in self.rows(pos):
            lines.append(
                f"{r['layer']:>5}  {r['top_token']!r:<14} {r['top_prob']:6.3f}  "
                f"{r['target_prob']:{len(repr(self.target)) + 3}.3f}  {r['target_rank']:>4}"
            )
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None, *, dpi: int = 200):
        """The figure: top-token probability per layer and position, each cell labelled with its
        token (a leading space shown as ␣), and the target's probability at the last token."""
        import matplotlib.pyplot as plt

        n_layers, n_pos = self.top_probs.shape
        fig, (ax, side) = plt.subplots(
            1, 2, figsize=(1.6 + 0.95 * n_pos + 2.6, 1.9 + 0.26 * n_layers), width_ratios=[n_pos, 2.6],
            sharey=True, layout="constrained",
        )  # fmt: skip
        im = ax.imshow(self.top_probs.numpy(), aspect="auto", origin="lower", cmap="Blues", vmin=0, vmax=1)
        for layer in range(n_layers):
            for pos in range(n_pos):
                color = "white" if self.top_probs[layer, pos] > 0.6 else "black"
                label = _shown(_clip(self.top_tokens[layer][pos], 8))
                ax.text(pos, layer, label, ha="center", va="center", fontsize=7.5, color=color)
        ax.set_xticks(range(n_pos), [_shown(t) for t in self.str_tokens], rotation=45, ha="right",
                      rotation_mode="anchor", fontsize=9)  # fmt: skip
        ax.set_yticks(range(n_layers), [str(layer) for layer in range(n_layers)], fontsize=8)
        ax.set_xlabel("input token", fontsize=10)
        ax.set_ylabel("layer", fontsize=10)
        fig.suptitle("Logit lens: each layer's residual stream read through the unembedding", fontsize=12)
        bar = fig.colorbar(im, ax=ax, location="top", shrink=0.5, aspect=40, pad=0.0)
        bar.set_label("p(top token)", fontsize=9)
        bar.ax.tick_params(labelsize=8)

        side.plot(self.target_probs[:, -1].numpy(), range(n_layers), marker="o", ms=3.5, lw=1.4)
        side.set_xlim(-0.03, 1.03)
        side.set_ylim(-0.5, n_layers - 0.5)
        side.tick_params(labelleft=True, labelsize=8)
        side.set_xlabel(f"p({_shown(self.target)}) after {_shown(self.str_tokens[-1])}", fontsize=10)
        side.set_ylabel("layer", fontsize=10)
        side.set_title("target token", fontsize=11)
        side.grid(alpha=0.3, lw=0.6)
        first = self.first_top_layer()
        if first is not None:
            side.axhline(first, color="tab:red", ls="--", lw=1)
            side.annotate(f"top from layer {first}", (0.97, first), xytext=(0, 3), textcoords="offset points",
                          ha="right", va="bottom", color="tab:red", fontsize=8)  # fmt: skip
        if path is not None:
            fig.savefig(path, dpi=dpi)
        return fig


def _shown(token: str) -> str:
    """A token as printed in a figure: leading spaces as ␣, newlines and tabs escaped."""
    stripped = token.lstrip(" ")
    return "␣" * (len(token) - len(stripped)) + stripped.replace("\n", "\\n").replace("\t", "\\t")


def _clip(token: str, n: int) -> str:
    return token if len(token) <= n else token[: n - 1] + "…"


@torch.no_grad()
def logit_lens(model: HookedModel, prompt: str, *, target: str | None = None) -> LogitLens:
    """Read every layer's residual stream through the final norm and unembedding.

    Args:
        target: a string whose first token is tracked; default the model's own next token.

    Example:
        >>> lens = hooklab.logit_lens(model, "The Eiffel Tower is in the city of", target=" Paris")
        >>> print(lens.table()); lens.plot("lens.png")
    """
    tokens = model.to_tokens(prompt)
    names = [resid_post(layer) for layer in range(model.cfg.n_layers)]
    logits, cache = model.run_with_cache(tokens, names_filter=names)
    if target is None:
        target_id = int(logits[0, -1].argmax())
        target = model.tokenizer.decode([target_id])
    else:
        target_id = model.tokenizer(target, add_special_tokens=False).input_ids[0]
    top_probs, top_ids, target_probs, target_ranks = [], [], [], []
    for name in names:
        probs = unembed(model, cache[name][0]).float().softmax(-1)  # (T, V)
        p_top, i_top = probs.max(-1)
        p_target = probs[:, target_id]
        top_probs.append(p_top.cpu())
        top_ids.append(i_top.cpu())
        target_probs.append(p_target.cpu())
        target_ranks.append((probs > p_target[:, None]).sum(-1).cpu())
    return LogitLens(
        str_tokens=model.to_str_tokens(tokens[0]),
        top_tokens=[[model.tokenizer.decode([i]) for i in ids.tolist()] for ids in top_ids],
        top_probs=torch.stack(top_probs),
        target=target,
        target_probs=torch.stack(target_probs),
        target_ranks=torch.stack(target_ranks),
    )
