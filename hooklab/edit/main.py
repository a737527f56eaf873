"""``hooklab.edit``: compute an edit's weight updates without touching the model, then apply them.

Which method does what is the registry's business (``hooklab/edit/registry.py``); this module
only runs one: checks, statistics, compute, apply.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from hooklab.edit import registry
from hooklab.edit.deltas import Edit
from hooklab.edit.hparams import Hparams
from hooklab.edit.request import Requests, as_requests
from hooklab.edit.stats import Stats, second_moments
from hooklab.edit.tokens import subject_prompt, target_ids
from hooklab.errors import EditRequestError
from hooklab.model import HookedModel

log = logging.getLogger(__name__)
HparamsLike = Hparams | Mapping[str, Any] | str | os.PathLike


def compute_edit(
    model: HookedModel,
    requests: Requests,
    method: str = "rome",
    hparams: HparamsLike | None = None,
    stats: Stats | None = None,
) -> Edit:
    """The weight updates that make ``requests`` true, as an :class:`Edit` not yet applied.

    The model is left exactly as it was: its weights are never written (updates of earlier
    layers or requests act through hooks while later ones are computed).

    Args:
        requests: one or more :class:`EditRequest` (or dicts with prompt, subject, target).
        method: a registered weight-update method: ``"rome"`` (one request at a time, rank one
            each), ``"memit"`` (a batch), ... (``hooklab.edit.registry.names()``).
        hparams: the method's hyperparameters (``RomeHparams``, ...), a dict or a JSON/YAML
            file with every field; default ``for_model(model)``.
        stats: the key statistics C: a text corpus (path or list of texts; collected once
            with ``hooklab.collect`` and cached) or what ``hooklab.collect(..., reduce="second_moment")`` returned.
    """
    entry = registry.get(method)
    if entry.compute is None:
        raise EditRequestError(
            f"{method} keeps its edits beside the weights instead of in a weight update, so it has no compute-only "
            f"form; use hooklab.edit(model, requests, method={method!r}) (it returns the attached memory)."
        )
    requests = as_requests(requests)
    hp = entry.hparams.resolve(model, hparams)
    hp.check(model.cfg.n_layers)
    for request in requests:  # tokenizer-level checks before any heavy work
        target_ids(model.tokenizer, request.target)
        subject_prompt(model.tokenizer, request.prompt, request.subject)
    base = model.fingerprint
    moments, count = second_moments(model, hp.edit_layers, stats, hp.mom2_tokens) if entry.needs_stats else ({}, 0)
    start = time.perf_counter()
    updates, notes = entry.compute(model, requests, hp, moments)
    notes.update(stats_tokens=count, seconds=round(time.perf_counter() - start, 3))
    log.info("%s: %d request(s) computed in %.1f s", method, len(requests), notes["seconds"])
    return Edit(method, updates, base, requests, hp.to_dict(), model.name, notes)


def edit(
    model: HookedModel,
    requests: Requests,
    method: str = "rome",
    hparams: HparamsLike | None = None,
    stats: Stats | None = None,
) -> Any:
    """Edit ``model`` in place; returns the applied, undoable :class:`Edit` (or the attached memory).

    A weight-update method (ROME, MEMIT) computes the updates first, the model untouched, then
    applies them (see :func:`compute_edit`). A memory method (``method="wise"``) trains the
    requests into a new, attached memory (``stats`` is not used) and returns it: ``detach()``
    undoes it.

    Example:
        >>> request = hooklab.EditRequest("{} is located in the city of", "Eiffel Tower", " Rome")
        >>> e = hooklab.edit(model, request, method="rome", stats="wikitext.txt")
        >>> model.generate("The Eiffel Tower is located in the city of")   # ' Rome, ...'
        >>> e.save("eiffel.safetensors"); e.undo()
    """
    entry = registry.get(method)
    if entry.attach is not None:
        hp = entry.hparams.resolve(model, hparams)
        return entry.attach(model, as_requests(requests), hp)
    return compute_edit(model, requests, method, hparams, stats).apply(model)
