"""``hooklab.edit``: compute an edit's weight updates without touching the model, then apply them."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from hooklab.edit.deltas import Edit
from hooklab.edit.hparams import HPARAMS, MemitHparams, RomeHparams
from hooklab.edit.request import EditRequest
from hooklab.edit.stats import Stats, second_moments
from hooklab.edit.tokens import subject_prompt, target_ids
from hooklab.errors import EditRequestError, HparamsError
from hooklab.model import HookedModel

if TYPE_CHECKING:
    from hooklab.edit.wise import WiseHparams, WiseMemory

log = logging.getLogger(__name__)
Method = Literal["rome", "memit", "wise"]
Requests = EditRequest | Mapping[str, str] | Sequence[EditRequest | Mapping[str, str]]
Hparams = RomeHparams | MemitHparams | Mapping[str, Any] | str | os.PathLike


def compute_edit(
    model: HookedModel,
    requests: Requests,
    method: Method = "rome",
    hparams: Hparams | None = None,
    stats: Stats | None = None,
) -> Edit:
    """The weight updates that make ``requests`` true, as an :class:`Edit` not yet applied.

    The model is left exactly as it was: its weights are never written (updates of earlier
    layers or requests act through hooks while later ones are computed).

    Args:
        requests: one or more :class:`EditRequest` (or dicts with prompt, subject, target).
        method: ``"rome"`` (one request at a time, rank one each) or ``"memit"`` (a batch).
        hparams: :class:`RomeHparams` / :class:`MemitHparams`, a dict or a JSON/YAML file with
            every field; default ``for_model(model)``.
        stats: the key statistics C: a text corpus (path or list of texts; collected once
            with ``hooklab.collect`` and cached) or what ``hooklab.collect(..., reduce="second_moment")`` returned.
    """
    if method == "wise":
        raise EditRequestError(
            "WISE keeps a routed side memory instead of a weight update, so it has no compute-only form; "
            "use hooklab.edit(model, requests, method='wise') or hooklab.WiseMemory(model).add(requests)."
        )
    if method not in HPARAMS:
        raise EditRequestError(f"unknown method {method!r}; use 'rome', 'memit' or 'wise'.")
    requests = _requests(requests)
    hp = _hparams(model, method, hparams)
    hp.check(model.cfg.n_layers)
    for request in requests:  # tokenizer-level checks before any heavy work
        target_ids(model.tokenizer, request.target)
        subject_prompt(model.tokenizer, request.prompt, request.subject)
    base = model.fingerprint
    moments, count = second_moments(model, hp.edit_layers, stats, hp.mom2_tokens)
    start = time.perf_counter()
    if method == "rome":
        from hooklab.edit.rome import rome

        updates, notes = rome(model, requests, hp, moments[hp.layer])
    else:
        from hooklab.edit.memit import memit

        updates, notes = memit(model, requests, hp, moments)
    notes.update(stats_tokens=count, seconds=round(time.perf_counter() - start, 3))
    log.info("%s: %d request(s) computed in %.1f s", method, len(requests), notes["seconds"])
    return Edit(method, updates, base, requests, hp.to_dict(), model.name, notes)


def edit(
    model: HookedModel,
    requests: Requests,
    method: Method = "rome",
    hparams: Hparams | WiseHparams | None = None,
    stats: Stats | None = None,
) -> Edit | WiseMemory:
    """Edit ``model`` in place with ROME or MEMIT; returns the applied, undoable :class:`Edit`.

    Computes the updates first (the model untouched), then applies them. See :func:`compute_edit`.
    ``method="wise"`` trains the requests into a new, attached :class:`~hooklab.WiseMemory`
    (one edit after another; ``stats`` is not used) and returns it: ``detach()`` undoes it.

    Example:
        >>> request = hooklab.EditRequest("{} is located in the city of", "Eiffel Tower", " Rome")
        >>> e = hooklab.edit(model, request, method="rome", stats="wikitext.txt")
        >>> model.generate("The Eiffel Tower is located in the city of")   # ' Rome, ...'
        >>> e.save("eiffel.safetensors"); e.undo()
    """
    if method == "wise":
        from hooklab.edit.wise import WiseMemory

        requests = _requests(requests)
        memory = WiseMemory(model, hparams)
        try:
            return memory.add(requests)
        except BaseException:
            memory.detach()  # a failed edit leaves the model as it was
            raise
    return compute_edit(model, requests, method, hparams, stats).apply(model)


def _requests(requests: Requests) -> list[EditRequest]:
    if isinstance(requests, (EditRequest, Mapping)):
        requests = [requests]
    out = [r if isinstance(r, EditRequest) else EditRequest.from_dict(r) for r in requests]
    if not out:
        raise EditRequestError("no edit requests given.")
    return out


def _hparams(model: HookedModel, method: str, hparams: Hparams | None) -> RomeHparams | MemitHparams:
    cls = HPARAMS[method]
    if hparams is None:
        return cls.for_model(model)
    if isinstance(hparams, (RomeHparams, MemitHparams)):
        if not isinstance(hparams, cls):
            raise HparamsError(f"method {method!r} takes {cls.__name__}, got {type(hparams).__name__}.")
        return hparams
    if isinstance(hparams, Mapping):
        return cls.from_dict(dict(hparams))
    return cls.from_file(hparams)
