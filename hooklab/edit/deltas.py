"""An edit as data: per-layer weight updates that can be applied, undone, saved and loaded.

Each update changes one MLP output projection, ``W ← W + ΔW`` with ``W`` seen as
(d_model, d_mlp) (``sites.mlp_out`` hides the storage orientation). Low-rank updates are kept
as factors, ``ΔW = left @ right.T`` — ROME writes rank 1 per request, MEMIT rank ≤ the batch —
and stored dense only where factors would be larger. Applying keeps the edited weights'
original values in host memory (GPU memory is the scarce resource on a sharded model; an undo
is one copy back), so :meth:`Edit.undo` restores them bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from hooklab import sites, tensorfiles
from hooklab.edit import registry
from hooklab.edit.request import EditRequest
from hooklab.edit.update import PARTS, Update
from hooklab.errors import EditFileError, EditMismatchError, EditSolveError, HooklabError
from hooklab.fingerprint import tensor_digest
from hooklab.layers import check_layers
from hooklab.model import HookedModel
from hooklab.tensorfiles import TensorSpec

log = logging.getLogger(__name__)
FORMAT = "hooklab-edit"
VERSION = "1"
DAMAGED = "the file is damaged or was not written by hooklab; save the edit again (Edit.save) or recompute it"


@dataclass
class Edit:
    """Weight updates made for one base model, with what made them.

    ``base_fingerprint`` is the fingerprint of the model the updates were computed on; an edit
    is applied only to a model with that fingerprint. Example:

        >>> edit = hooklab.edit(model, [request], method="rome")   # computed and applied
        >>> edit.save("eiffel.safetensors"); edit.undo()            # weights as before, bit for bit
        >>> again = hooklab.apply_edit(model, "eiffel.safetensors")
    """

    method: str
    updates: dict[int, Update]
    base_fingerprint: str
    requests: list[EditRequest] = field(default_factory=list)
    hparams: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    notes: dict[str, Any] = field(default_factory=dict)  # how it was made: templates, statistics tokens, time
    # Set while applied: the model, the edited weights' original values (host memory) and a
    # digest of each edited weight right after applying (so undo notices later changes).
    _model: HookedModel | None = field(default=None, init=False, repr=False)
    _originals: dict[int, Tensor] = field(default_factory=dict, init=False, repr=False)
    _applied_digests: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _version_after: tuple = field(default=(), init=False, repr=False)

    @property
    def layers(self) -> list[int]:
        return sorted(self.updates)

    @property
    def applied(self) -> bool:
        return self._model is not None

    def apply(self, model: HookedModel) -> Edit:
        """Add the updates to ``model``'s weights (checked first; nothing changes if a check fails)."""
        if self.applied:
            raise EditMismatchError("this edit is already applied; undo() it before applying it again.")
        if model.fingerprint != self.base_fingerprint:
            raise EditMismatchError(
                f"this edit was made for a model with fingerprint {self.base_fingerprint} "
                f"({self.model_name or 'unnamed'}), but this model's is {model.fingerprint}. Apply it to "
                "the model it was computed on, with the same earlier edits applied in the same order."
            )
        targets = {layer: self._site_for(model, layer) for layer in self.layers}
        deltas = {}
        for layer, site in targets.items():  # compute every new weight before writing any
            weight = site.weight
            delta = self.updates[layer].to(site.device).matrix()
            new = (weight.float() + delta.float()).to(weight.dtype)
            if not torch.isfinite(new).all():
                raise EditSolveError(
                    f"the update of layer {layer} holds NaN or infinite values; nothing was applied. "
                    "Recompute the edit (a larger mom2_update_weight or more statistics tokens regularise it)."
                )
            deltas[layer] = new
        with torch.no_grad():
            for layer, site in targets.items():
                self._originals[layer] = site.weight.detach().to("cpu", copy=True)
                site.weight.copy_(deltas[layer])
                self._applied_digests[layer] = tensor_digest(site.weight)
        self._version_after = model.weights_version()
        self._model = model
        model.edits.append(self)
        log.info("applied %s edit to layers %s", self.method, self.layers)
        return self

    def undo(self) -> None:
        """Restore the edited weights bit for bit."""
        model = self._require_applied()
        sites_ = {layer: sites.mlp_out(model, layer) for layer in self.layers}
        changed = [layer for layer, s in sites_.items() if tensor_digest(s.weight) != self._applied_digests[layer]]
        if changed:
            raise EditMismatchError(
                f"the weights of layer(s) {changed} changed after this edit was applied (a later edit?); "
                "undo the later edits first, newest first."
            )
        untouched = model.weights_version() == self._version_after  # no weight written since apply
        with torch.no_grad():
            for layer, site in sites_.items():
                site.weight.copy_(self._originals[layer].to(site.device))
        if untouched:  # every weight is now as it was when apply checked the fingerprint
            model.vouch_fingerprint(self.base_fingerprint)
        self._originals.clear()
        self._applied_digests.clear()
        model.edits[:] = [e for e in model.edits if e is not self]  # by identity: edits compare as tensors
        self._model = None

    @contextmanager
    def undone(self) -> Iterator[HookedModel]:
        """The model without this edit for the duration of the block, then with it again."""
        model = self._require_applied()
        self.undo()
        try:
            yield model
        finally:
            self.apply(model)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the updates and their provenance to a safetensors file (atomically)."""
        path = Path(path)
        tensors = {}
        for update in self.updates.values():
            tensors.update({k: v.detach().float().cpu().contiguous() for k, v in update.tensors().items()})
        metadata = {
            "format": FORMAT,
            "version": VERSION,
            "method": self.method,
            "layers": json.dumps(self.layers),
            "base_fingerprint": self.base_fingerprint,
            "model": self.model_name,
            "hparams": json.dumps(self.hparams),
            "requests": json.dumps([r.to_dict() for r in self.requests]),
            "notes": json.dumps(self.notes),
        }
        return tensorfiles.save_atomic(tensors, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, devices: Mapping[int, torch.device] | None = None) -> Edit:
        """Read an edit file; each layer's tensors go straight to ``devices[layer]`` (default CPU).

        Every tensor is checked against the metadata first (dtype, shape, one update per listed layer).
        """
        return _load(path, devices or {}, None)

    def _require_applied(self) -> HookedModel:
        if self._model is None:
            raise EditMismatchError("this edit is not applied; apply(model) it first.")
        return self._model

    def _site_for(self, model: HookedModel, layer: int) -> sites.MlpOut:
        site = sites.mlp_out(model, layer)
        if tuple(site.weight.shape) != self.updates[layer].shape:
            raise EditMismatchError(
                f"layer {layer}'s update has shape {self.updates[layer].shape} but the model's MLP output "
                f"projection is {tuple(site.weight.shape)}; this edit is for another architecture."
            )
        return site

    def __repr__(self) -> str:
        ranks = ", ".join(f"{layer}: rank {u.rank}" for layer, u in sorted(self.updates.items()))
        state = "applied" if self.applied else "not applied"
        return f"Edit({self.method}, {len(self.requests)} request(s), layers {{{ranks}}}, {state})"


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """An edit file's metadata, checked to be one (nothing else is read)."""
    required = ("method", "layers", "base_fingerprint", "hparams", "requests")
    return tensorfiles.read_metadata(path, fmt=FORMAT, what="edit file", error=EditFileError, version=VERSION,
                                     required=required)  # fmt: skip


def apply_edit(model: HookedModel, path: str | os.PathLike) -> Edit:
    """Load an edit file straight onto each layer's device and apply it; returns the undoable Edit.

    Refuses (before reading any tensor) a file made for a model with another fingerprint, and one
    whose tensors do not fit its metadata or the model; the model is then left as it was.

    Example:
        >>> edit = hooklab.apply_edit(model, "eiffel.safetensors"); ...; edit.undo()
    """
    meta = read_metadata(path)
    tensorfiles.refuse_other_base(meta, path, model.fingerprint)
    return _load(path, None, model).apply(model)


def _load(path: str | os.PathLike, devices: Mapping[int, torch.device] | None, model: HookedModel | None) -> Edit:
    """An edit file read after checking it all (against ``model``'s layers and widths too, if given);
    without ``devices``, each layer's tensors go to the model's device for that layer."""
    meta = read_metadata(path)
    method, layers, requests, hparams = _header(meta, path)
    dims = {"requests": len(requests)}
    if model is not None:
        try:
            check_layers(layers, model.cfg.n_layers, EditFileError)
        except EditFileError as e:
            raise EditFileError(f"{path} edits {e} The file is damaged or for another model: apply it to the model "
                                "it was made for.") from None  # fmt: skip
        targets = {layer: sites.mlp_out(model, layer) for layer in layers}
        dims["d_model"], dims["d_mlp"] = targets[layers[0]].weight.shape
        if devices is None:
            devices = {layer: site.device for layer, site in targets.items()}
    names = tensorfiles.tensor_names(path, EditFileError)
    expected = {}
    for layer in layers:  # one update per listed layer: dense, or factors of one column per request
        if f"layers.{layer}.dense" in names:
            expected[f"layers.{layer}.dense"] = TensorSpec(("d_model", "d_mlp"))
        else:
            expected[f"layers.{layer}.left"] = TensorSpec(("d_model", "requests"))
            expected[f"layers.{layer}.right"] = TensorSpec(("d_mlp", "requests"))
        if f"layers.{layer}.keys" in names:
            expected[f"layers.{layer}.keys"] = TensorSpec(("d_mlp", "requests"))
    fix = DAMAGED
    if model is not None:
        fix = "the file is damaged or for another model; apply it to the model it was made for"
    tensorfiles.check_tensors(path, expected, error=EditFileError, dims=dims, fix=fix)
    devices = devices or {}
    updates = {}
    by_device: dict[str, list[int]] = {}
    for layer in layers:
        by_device.setdefault(str(devices.get(layer, "cpu")), []).append(layer)
    for device, group in by_device.items():
        with safe_open(str(path), framework="pt", device=device) as f:
            for layer in group:
                parts = {p: f.get_tensor(f"layers.{layer}.{p}") for p in PARTS if f"layers.{layer}.{p}" in names}
                updates[layer] = Update(layer, **parts)
    return Edit(
        method=method,
        updates=updates,
        base_fingerprint=meta["base_fingerprint"],
        requests=requests,
        hparams=hparams,
        model_name=meta.get("model", ""),
        notes=tensorfiles.json_field(meta, "notes", path, EditFileError, dict) if "notes" in meta else {},
    )


def _header(meta: dict[str, str], path: str | os.PathLike) -> tuple[str, list[int], list[EditRequest], dict]:
    """Method, layers, requests and hparams of an edit file, checked to agree with each other."""
    method = meta["method"]
    updates = registry.names(updates_only=True)
    if method not in updates:
        raise EditFileError(f"{path} holds an edit of method {method!r}; edit files hold the updates of a registered "
                            f"method ({', '.join(updates)}): register {method!r} first, or {DAMAGED}.")  # fmt: skip
    layers = tensorfiles.json_field(meta, "layers", path, EditFileError, list)
    if not layers or not all(type(x) is int for x in layers) or len(set(layers)) != len(layers):
        raise EditFileError(f"{path}: metadata 'layers' must list distinct layer numbers, got {layers}; {DAMAGED}.")
    hparams = tensorfiles.json_field(meta, "hparams", path, EditFileError, dict)
    try:
        edit_layers = registry.get(method).hparams.from_dict(hparams).edit_layers
    except HooklabError as e:
        raise EditFileError(f"{path}: its hparams are not {method}'s ({e}); {DAMAGED}.") from None
    if sorted(edit_layers) != sorted(layers):
        raise EditFileError(
            f"{path} lists layers {layers}, but its {method} hparams edit {list(edit_layers)}; {DAMAGED}."
        )
    raw = tensorfiles.json_field(meta, "requests", path, EditFileError, list)
    try:
        requests = [EditRequest.from_dict(r) for r in raw]
    except (HooklabError, TypeError) as e:
        raise EditFileError(
            f"{path}: metadata 'requests' holds something other than edit requests ({e}); {DAMAGED}."
        ) from None
    return method, sorted(layers), requests, hparams
