"""WiseMemory: a side copy of one MLP output projection that lifelong edits are trained into.

The model's own weights are never written: the memory holds its changes (merged shards,
completed shards, the shard being trained) on the side layer's device, and while attached a
router on that layer lets the side weights answer for the tokens whose activation score is
above the threshold ε. Detaching removes the router, so the model is exactly as before.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from hooklab import sites
from hooklab.blocks import stop_after
from hooklab.edit.contexts import context_templates
from hooklab.edit.request import EditRequest, Requests, as_requests
from hooklab.edit.tokens import pad_id, pad_right
from hooklab.edit.wise.files import load_memory, save_memory
from hooklab.edit.wise.hparams import WiseHparams
from hooklab.edit.wise.pool import UnrelatedPool
from hooklab.edit.wise.router import Router, Sides, add_router, scores
from hooklab.edit.wise.shards import Shards
from hooklab.edit.wise.train import train_edit
from hooklab.errors import EditMismatchError, HparamsError
from hooklab.model import HookedModel

log = logging.getLogger(__name__)
UNRELATED_TEXTS = (24, 32)  # (tokens, count) of the texts the model writes itself when none are given
UNRELATED_TOKENS = 32  # unrelated texts are cut to this many tokens: enough context, bounded cost


class WiseMemory:
    """Lifelong editing with WISE (Wang et al. 2024): a routed side memory at one layer.

    Created attached: edits added with :meth:`add` change the model's answers at once, and
    :meth:`detach` takes the memory off (the model is then exactly as it was). Example:

        >>> mem = hooklab.WiseMemory(model)                       # defaults for the model's size
        >>> mem.add(hooklab.requests_from_zsre(records[:100]))    # one edit after another
        >>> mem.save("memory.safetensors"); mem.detach()
        >>> mem = hooklab.WiseMemory.load(model, "memory.safetensors")

    Args:
        hparams: :class:`WiseHparams`, a dict or a JSON/YAML file with every field; default
            ``WiseHparams.for_model(model)``.
        unrelated: texts the side memory must stay silent on (the routing loss's negatives);
            default: texts the model writes itself (seeded).
        templates: the context prefixes edits are trained under (default: generated, seeded).
        attach: whether the new, empty memory goes on the model at once.
    """

    def __init__(
        self,
        model: HookedModel,
        hparams: WiseHparams | Mapping[str, Any] | str | os.PathLike | None = None,
        *,
        unrelated: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
        attach: bool = True,
    ):
        hp = WiseHparams.resolve(model, hparams)
        hp.check(model.cfg.n_layers)
        if unrelated is None:
            tokens, count = UNRELATED_TEXTS
            written = context_templates(model, ((tokens, count),), seed=hp.seed + 1)[1:]  # "<text>. {}"
            unrelated = [t.format("").strip() for t in written]
        if isinstance(unrelated, str) or not unrelated or not all(isinstance(t, str) and t.strip() for t in unrelated):
            raise HparamsError("unrelated must be a list of non-empty texts.")
        self.model = model
        self.hparams = hp
        self.site = sites.mlp_out(model, hp.layer)
        self.base_fingerprint = model.fingerprint
        # The prefixes edits are trained under; a loaded memory keeps the ones it was trained with.
        if templates is None:
            templates = context_templates(model, hp.context_lengths, seed=hp.seed)
        self.templates = list(templates)
        self.unrelated = list(unrelated)
        self.shards = Shards()
        self.edit_scores: list[float] = []  # per edit: its lowest activation score when trained
        self.unrelated_ceiling = 0.0  # the threshold's floor: floor_quantile of the unrelated texts' highest scores
        self.requests: list[EditRequest] = []
        self.seconds = 0.0  # spent training edits
        self._pool: tuple[tuple, UnrelatedPool] | None = None  # (the model's weights version, the pool's keys)
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        if attach:
            self.attach()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the memory (shards, masks, threshold data, requests, the model's fingerprint) to a safetensors file."""
        return save_memory(self, path)

    @classmethod
    def load(cls, model: HookedModel, path: str | os.PathLike) -> WiseMemory:
        """Read a memory file for ``model`` and attach it; refuses a model with another fingerprint."""
        return load_memory(cls, model, path)

    # -- state ------------------------------------------------------------------------------------

    @property
    def is_attached(self) -> bool:
        return self._handle is not None

    @property
    def threshold(self) -> float:
        """ε: act_ratio × the lowest score any edit ended with, and not below the unrelated texts' routed scores.

        Later edits and merges change the sides, so an unrelated token that stayed under the
        edits' scores when they were trained may rise above them; the floor (``floor_quantile``
        of the unrelated texts' highest scores) keeps such texts with the main weights
        (infinite before the first edit).
        """
        if not self.edit_scores:
            return float("inf")
        return max(self.hparams.act_ratio * min(self.edit_scores), self.unrelated_ceiling)

    def __len__(self) -> int:
        return self.shards.n_edits

    # -- attaching ----------------------------------------------------------------------------------

    def attach(self) -> WiseMemory:
        """Put the router on the side layer (the memory answers from now on)."""
        if self.is_attached:
            return self
        self._check_model()
        self._handle = add_router(self.site, self._router())
        return self

    def detach(self) -> None:
        """Take the router off: the model computes exactly as it did before the memory."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @contextmanager
    def attached(self) -> Iterator[WiseMemory]:
        """The memory attached for the duration of the block, then as it was."""
        was = self.is_attached
        self.attach()
        try:
            yield self
        finally:
            if not was:
                self.detach()

    @contextmanager
    def undone(self) -> Iterator[HookedModel]:
        """The model without the memory for the duration of the block (``hooklab.evaluate``'s reference for loc)."""
        was = self.is_attached
        self.detach()
        try:
            yield self.model
        finally:
            if was:
                self.attach()

    # -- editing ------------------------------------------------------------------------------------

    def add(self, requests: Requests) -> WiseMemory:
        """Train edits into the memory one after another (the lifelong setting); returns the memory.

        Each edit is trained into the current shard; when it fails (NaN or infinite loss), an
        :class:`EditSolveError` is raised and the memory keeps what it had before that edit.
        """
        requests = as_requests(requests)
        self._check_model()
        was = self.is_attached
        self.detach()  # the edit is trained against the main weights at the side layer
        try:
            for request in tqdm(requests, desc="WISE", unit="edit", disable=len(requests) < 2, leave=False):
                self._add_one(request)
        finally:
            self._update_ceiling()
            if was:
                self.attach()
        log.info("WISE memory: %d edit(s), ε = %.3g, %d side(s)", len(self), self.threshold, len(self.shards.sides()))
        return self

    def _add_one(self, request: EditRequest) -> None:
        hp = self.hparams
        start = time.perf_counter()
        shape, device = tuple(self.site.weight.shape), self.site.device
        fresh = self.shards.current is None
        shard = self.shards.begin(shape, hp.mask_ratio, hp.seed, device)
        try:
            replay = (shard.keys, shard.values) if shard.keys is not None else None
            trained = train_edit(self.model, [request], self.templates, self._draw_unrelated(), shard.delta, shard.mask, hp,
                                 replay)  # fmt: skip
        except Exception:
            if fresh:  # leave no empty shard behind
                self.shards.current = None
                self.shards.n_started -= 1
            raise
        shard.delta = trained.delta
        shard.remember(trained.keys, trained.values)
        shard.n_edits += 1
        self.edit_scores.append(trained.score)
        self.requests.append(request)
        self.shards.close_if_full(hp.edits_per_shard, hp.shards_per_merge, hp.density)
        self.seconds += time.perf_counter() - start
        log.info("WISE %r -> %r: %d steps, loss %.3g, score %.3g (unrelated max %.3g)", request.text, request.target,
                 trained.steps, trained.loss, trained.score, trained.unrelated_score)  # fmt: skip

    # -- looking inside -----------------------------------------------------------------------------

    @torch.no_grad()
    def scores(self, text: str) -> Float[Tensor, "pos sides"]:
        """The activation score ‖Δ a(x)‖ of each token of ``text`` under each side change."""
        keys = self._keys([text])[0]
        sides = self.shards.sides()
        return scores(keys, sides) if sides else keys.new_zeros(len(keys), 0)

    @torch.no_grad()
    def routed(self, text: str) -> Bool[Tensor, " pos"]:
        """Which tokens of ``text`` the side memory answers (the score under the token's side above ε)."""
        keys = self._keys([text])[0]
        sides = self._sides(torch.float32)
        if not len(sides):
            return torch.zeros(len(keys), dtype=torch.bool)
        return sides.route(keys.float())[1].norm(dim=-1) > self.threshold

    # -- internals ----------------------------------------------------------------------------------

    def _sides(self, dtype: torch.dtype) -> Sides:
        return Sides(self.shards.sides(), self.shards.side_keys(), dtype)

    def _router(self) -> Router:
        return Router(self._sides(self.site.weight.dtype), self.threshold)

    def _check_model(self) -> None:
        if self.model.fingerprint != self.base_fingerprint:
            raise EditMismatchError(
                f"the model's weights changed since this WISE memory was made (fingerprint {self.model.fingerprint}, "
                f"the memory's base {self.base_fingerprint}); undo the later weight edits, or start a new memory."
            )

    def _update_ceiling(self) -> None:
        """The threshold's floor: ``floor_quantile`` of each unrelated text's highest routed score under the sides now.

        The quantile rounds up to a text's score, so with few texts (or 1) it is their maximum.
        """
        sides = self.shards.sides()
        if sides:
            highest = self._unrelated_pool().highest(sides, self.shards.side_keys())
            self.unrelated_ceiling = float(torch.quantile(highest, self.hparams.floor_quantile, interpolation="higher"))

    def _unrelated_pool(self) -> UnrelatedPool:
        """Layer L's keys of each unrelated text, computed once per version of the model's weights."""
        version = self.model.weights_version()
        if self._pool is None or self._pool[0] != version:
            self._pool = (version, UnrelatedPool(self._keys(self.unrelated)))
        return self._pool[1]

    def _draw_unrelated(self) -> Float[Tensor, "n d_mlp"]:
        """Keys of ``n_unrelated`` unrelated texts, drawn afresh for each edit (seeded by its number)."""
        texts = self._unrelated_pool().texts
        picks = random.Random(self.hparams.seed * 1_000_003 + len(self.edit_scores)).sample(
            range(len(texts)), min(self.hparams.n_unrelated, len(texts))
        )
        return torch.cat([texts[i] for i in picks]) if picks else texts[0][:0]

    @torch.no_grad()
    def _keys(self, texts: Sequence[str]) -> list[Float[Tensor, "pos d_mlp"]]:
        """Layer L's MLP keys of every token of each text (the forward stops after layer L)."""
        tok = self.model.tokenizer
        rows = [tok(t)["input_ids"][:UNRELATED_TOKENS] for t in texts]
        ids, mask = pad_right(rows, pad_id(tok), self.model.cfg.device)
        found: list[Tensor] = []

        def grab(k: Tensor, hook) -> None:
            found.append(k)

        hooks = [(self.site.hook_in, grab), stop_after(self.hparams.layer)]
        with self.model.hooks(fwd_hooks=hooks):
            self.model.bridge(ids, attention_mask=mask)
        keys = found[0]
        return [keys[i, : len(r)].to(self.site.device) for i, r in enumerate(rows)]

