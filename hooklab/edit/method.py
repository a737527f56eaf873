"""What an edit method is to the rest of hooklab: one entry of the registry.

A method is either a *weight update* (ROME, MEMIT): ``compute`` turns requests into low-rank
updates of its edit layers, which :class:`~hooklab.edit.deltas.Edit` applies, undoes, saves and
loads; or a *memory* kept beside the weights (WISE): ``attach`` trains the requests into a new
object that is attached to the model and has ``detach()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hooklab.edit.hparams import Hparams
from hooklab.errors import EditMethodError

if TYPE_CHECKING:
    from torch import Tensor

    from hooklab.edit.request import EditRequest
    from hooklab.edit.update import Update
    from hooklab.model import HookedModel

# (model, requests, hparams, {layer: C = E[k kᵀ]}) -> ({layer: Update}, notes for the edit file)
Compute = Callable[["HookedModel", Sequence["EditRequest"], Any, Mapping[int, "Tensor"]], tuple[dict[int, "Update"], dict]]
# (model, requests, hparams) -> an attached memory with detach()
Attach = Callable[["HookedModel", Sequence["EditRequest"], Any], Any]


@dataclass(frozen=True)
class EditMethod:
    """One edit method.

    Attributes:
        name: what ``method=`` and ``--method`` say.
        summary: one line for the CLI's help and the README's table.
        hparams: its :class:`~hooklab.edit.hparams.Hparams` subclass.
        compute: for a weight-update method (see module docstring); the model must be left as it was.
        attach: for a memory method.
        needs_stats: whether ``compute`` reads the edit layers' key statistics C (``stats=``).
    """

    name: str
    summary: str
    hparams: type[Hparams]
    compute: Compute | None = None
    attach: Attach | None = None
    needs_stats: bool = True

    def __post_init__(self) -> None:
        if (self.compute is None) == (self.attach is None):
            raise EditMethodError(f"edit method {self.name!r} gives {'both' if self.compute else 'neither'} of compute "
                                  "and attach; give exactly one (compute for weight updates, attach for a memory).")
