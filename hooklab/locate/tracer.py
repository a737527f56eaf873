"""Causal tracing (Meng et al. 2022, ROME), with every restoration of a layer in one batch.

A clean run; ``samples`` corrupted runs with Gaussian noise on the subject's token embeddings;
then, for each (token, layer), the corrupted runs again with one clean state restored, scored
by the probability of the target. ROME runs one corrupted forward per restoration. Here a
restoration is a batch row: rows join the batch at the first layer they restore (everything
below is the corrupted run, recorded once), run only the positions from the restored token on
(earlier positions are the corrupted run's, so their keys and values come from the record),
and hooks on each layer's own device patch the rows that restore that layer.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from hooklab import sites
from hooklab.blocks import BlockRecord, KVPrefix, KVRecorder, unembed
from hooklab.errors import TraceArgumentError
from hooklab.locate.noise import noise_scale
from hooklab.locate.prompt import Prompt, target_id, tokenize
from hooklab.locate.result import TraceResult
from hooklab.model import HookedModel

log = logging.getLogger(__name__)

Kind = Literal["hidden", "mlp", "attn"]
SITES = {"hidden": sites.resid_post, "mlp": sites.mlp_output, "attn": sites.attn_output}
ACTIVATION_BUDGET = 2 * 1024**3  # bytes of MLP activations one batch may hold, when max_rows is not given


@dataclass(frozen=True)
class Restoration:
    """Restore the clean value of a site at ``tokens`` in every layer of ``layers``."""

    tokens: tuple[int, ...]
    layers: tuple[int, ...]


def window_layers(layer: int, window: int, n_layers: int) -> tuple[int, ...]:
    """The ``window`` layers centred on ``layer``, clipped at both ends (as ROME does)."""
    return tuple(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


class CausalTracer:
    """The clean and corrupted runs of one prompt, ready to score any restorations.

    Example:
        >>> tracer = CausalTracer(model, "The Eiffel Tower is located in the city of", "Eiffel Tower")
        >>> tracer.high, tracer.low                      # clean and corrupted p(target)
        >>> tracer.trace("mlp").plot("mlp.png")          # one TraceResult per kind, setup shared
        >>> tracer.restore("hidden", [Restoration(tokens=(3,), layers=(5,))])
    """

    @torch.no_grad()
    def __init__(
        self,
        model: HookedModel,
        prompt: str,
        subject: str,
        *,
        target: str | int | None = None,
        samples: int = 10,
        noise: str | float = "3sigma",
        seed: int = 0,
        max_rows: int | None = None,
    ):
        if samples < 1:
            raise TraceArgumentError(f"samples must be at least 1, got {samples}.")
        if max_rows is not None and max_rows < 1:
            raise TraceArgumentError(f"max_rows must be at least 1, got {max_rows}.")
        self.model, self.samples, self.seed, self.max_rows = model, samples, seed, max_rows
        self.prompt: Prompt = tokenize(model, prompt, subject)
        self.noise = noise_scale(model, noise)
        given = None if target is None else target_id(model, target)
        n_layers = model.cfg.n_layers
        names = [SITES[kind](layer) for kind in SITES for layer in range(n_layers)]
        tokens = self.prompt.tokens.to(model.cfg.device)
        self.blocks, (logits, cache) = BlockRecord.capture(
            model, lambda: model.run_with_cache(tokens, names_filter=names, use_cache=False)
        )
        clean_probs = logits[0, -1].float().softmax(-1)
        self.target_id = int(clean_probs.argmax()) if given is None else given
        self.high = float(clean_probs[self.target_id])
        # Clean values of every site, each on its layer's device: (T, D).
        self.clean = {
            kind: [cache[SITES[kind](layer)][0].to(self.blocks.devices[layer]) for layer in range(n_layers)]
            for kind in SITES
        }
        self._corrupt()

    @property
    def n_layers(self) -> int:
        return self.blocks.n_layers

    def corruption(self) -> Float[Tensor, "samples subject d_model"]:
        """The noise added to the subject's token embeddings, one slice per sample (seeded)."""
        b, e = self.prompt.subject
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randn(self.samples, e - b, self.model.cfg.d_model, generator=gen) * self.noise

    def _corrupt(self) -> None:
        """The corrupted run: its residual stream entering every layer, keys/values and p(target)."""
        b, e = self.prompt.subject
        noise = self.corruption()

        def add_noise(embed: Tensor, hook) -> Tensor:
            embed = embed.clone()
            embed[:, b:e] += noise.to(embed.device, embed.dtype)
            return embed

        tokens = self.prompt.tokens.expand(self.samples, -1).to(self.model.cfg.device)
        resid = self.model.run_with_hooks(tokens, fwd_hooks=[(sites.token_embedding(), add_noise)], stop_at_layer=0)
        self.kv = KVRecorder()
        self.resid_pre: list[Tensor] = []  # (S, T, D) entering each layer
        for layer in range(self.n_layers):
            self.resid_pre.append(resid.to(self.blocks.devices[layer]))
            resid = self.blocks.block(layer, resid, cache=self.kv)
        self.blocks.recorded(self.kv)
        self.low = float(self._target_prob(resid[:, -1]).mean())

    def _target_prob(self, resid: Float[Tensor, "rows d_model"]) -> Float[Tensor, " rows"]:
        return unembed(self.model, resid[:, None])[:, 0].float().softmax(-1)[:, self.target_id].cpu()

    @torch.no_grad()
    def trace(self, kind: Kind = "hidden", window: int = 10) -> TraceResult:
        """p(target) with each (token, layer) restored: the single state for ``"hidden"``, the
        outputs of ``window`` MLP / attention layers centred on the layer for ``"mlp"`` / ``"attn"``.

        Tokens before the subject are the same in the clean and corrupted runs (attention is
        causal), so restoring them changes nothing: their scores are the corrupted probability.
        """
        _check_kind(kind)
        if window < 1:
            raise TraceArgumentError(f"window must be at least 1, got {window}.")
        b, _ = self.prompt.subject
        n_tokens = len(self.prompt.ids)
        restorations = [
            Restoration((t,), (layer,) if kind == "hidden" else window_layers(layer, window, self.n_layers))
            for t in range(b, n_tokens)
            for layer in range(self.n_layers)
        ]
        scores = torch.full((n_tokens, self.n_layers), self.low)
        scores[b:] = self.restore(kind, restorations).view(n_tokens - b, self.n_layers)
        return TraceResult(
            prompt=self.prompt.text,
            subject=self.prompt.subject_text,
            tokens=self.prompt.str_tokens,
            subject_range=self.prompt.subject,
            target=self.model.tokenizer.decode([self.target_id]),
            target_id=self.target_id,
            kind=kind,
            window=window if kind != "hidden" else 1,
            samples=self.samples,
            noise=self.noise,
            seed=self.seed,
            scores=scores,
            low=self.low,
            high=self.high,
        )

    @torch.no_grad()
    def restore(self, kind: Kind, restorations: Sequence[Restoration]) -> Float[Tensor, " n"]:
        """p(target), averaged over the samples, for each restoration (batched)."""
        _check_kind(kind)
        for r in restorations:
            bad = [t for t in r.tokens if not 0 <= t < len(self.prompt.ids)] + [
                layer for layer in r.layers if not 0 <= layer < self.n_layers
            ]
            if not r.tokens or not r.layers or bad:
                raise TraceArgumentError(
                    f"{r} restores nothing or something out of range: tokens are 0..{len(self.prompt.ids) - 1}, "
                    f"layers 0..{self.n_layers - 1}."
                )
        out = torch.empty(len(restorations))
        by_tokens = defaultdict(list)
        for i, r in enumerate(restorations):
            by_tokens[tuple(sorted(set(r.tokens)))].append(i)
        for tokens, members in by_tokens.items():
            members.sort(key=lambda i: min(restorations[i].layers))
            p0 = tokens[0] if self.blocks.slices_positions else 0
            per_batch = max(1, self._rows(len(self.prompt.ids) - p0) // self.samples)
            for k in range(0, len(members), per_batch):
                batch = members[k : k + per_batch]
                out[batch] = self._run(kind, tokens, p0, [restorations[i].layers for i in batch])
        return out

    def _rows(self, n_pos: int) -> int:
        if self.max_rows is not None:
            return self.max_rows
        cfg = self.model.cfg
        per_row = n_pos * cfg.d_mlp * 4 * torch.finfo(cfg.dtype).bits // 8  # gate, up, act, down inputs
        return max(self.samples, ACTIVATION_BUDGET // per_row)

    def _run(self, kind: Kind, tokens: tuple[int, ...], p0: int, groups: list[tuple[int, ...]]) -> Tensor:
        """One batch: ``groups`` (sorted by first layer) restore ``tokens``; S rows per group.

        Group j's rows are j*S..(j+1)*S-1 and join at its first layer, so at layer ℓ the batch
        holds the groups whose first layer is at most ℓ.
        """
        S = self.samples
        joins = [min(g) for g in groups]
        rel = [t - p0 for t in tokens]  # restored positions within the suffix p0..T-1
        resid, n_in = None, 0
        with self._patches(kind, groups, tokens, rel):
            for layer in range(joins[0], self.n_layers):
                n_new = sum(1 for j in joins if j == layer)
                if n_new:
                    joining = self.resid_pre[layer][:, p0:].repeat(n_new, 1, 1)  # (n_new*S, P, D)
                    resid = joining if resid is None else torch.cat([resid.to(joining.device), joining])
                    n_in += n_new
                prefix = None
                if p0:
                    prefix = KVPrefix(self.kv.keys[layer][..., :p0, :], self.kv.values[layer][..., :p0, :], n_in)
                resid = self.blocks.block(layer, resid, p0, prefix)
        return self._target_prob(resid[:, -1]).view(len(groups), S).mean(1)

    @contextmanager
    def _patches(
        self, kind: Kind, groups: list[tuple[int, ...]], tokens: tuple[int, ...], rel: list[int]
    ) -> Iterator[None]:
        """Hooks that write the clean site values into the rows of the groups restoring each layer."""
        S = self.samples
        hooks = []
        for layer in sorted({layer for g in groups for layer in g}):
            device = self.blocks.devices[layer]
            rows = torch.tensor([j * S + s for j, g in enumerate(groups) if layer in g for s in range(S)], device=device)
            pos = torch.tensor(rel, device=device)
            value = self.clean[kind][layer][list(tokens)]  # (k, D)

            def patch(act: Tensor, hook, rows=rows, pos=pos, value=value) -> Tensor:
                act[rows[:, None], pos[None, :]] = value.to(act.dtype)
                return act

            hooks.append((SITES[kind](layer), patch))
        with self.model.hooks(fwd_hooks=hooks):
            yield


def trace(
    model: HookedModel,
    prompt: str,
    subject: str,
    *,
    target: str | int | None = None,
    kind: Kind = "hidden",
    window: int = 10,
    samples: int = 10,
    noise: str | float = "3sigma",
    seed: int = 0,
    max_rows: int | None = None,
) -> TraceResult:
    """Causal tracing of one fact (ROME's method, batched): where does the model recall it?

    Args:
        target: the token whose probability is scored (text, first token; or an id); default
            the model's own greedy next token.
        kind: restore the residual stream after a layer (``"hidden"``), or the outputs of
            ``window`` MLP (``"mlp"``) or attention (``"attn"``) layers centred on it.
        noise: ``"3sigma"`` (3 × the spread of token embeddings, see ``noise_scale``) or a number.
        max_rows: most sequences in one batch (default: as many as 2 GiB of activations allow).

    Example:
        >>> result = hooklab.trace(model, "The Eiffel Tower is located in the city of", "Eiffel Tower", kind="mlp")
        >>> result.plot("eiffel-mlp.png"); result.peak()
    """
    tracer = CausalTracer(
        model, prompt, subject, target=target, samples=samples, noise=noise, seed=seed, max_rows=max_rows
    )
    return tracer.trace(kind, window)


def _check_kind(kind: str) -> None:
    if kind not in SITES:
        raise TraceArgumentError(f"kind must be one of {list(SITES)}, got {kind!r}.")
