"""The edit methods hooklab knows, in one table; ``register`` adds one (a variant, a new method).

Each method folder exports its :class:`~hooklab.edit.method.EditMethod` as ``METHOD``; the table
below lists them. ``hooklab.edit``, the CLI's ``--method`` and the README's table of methods read
the table, and nothing else names a method.
"""

from __future__ import annotations

from hooklab.edit.alphaedit import METHOD as ALPHAEDIT
from hooklab.edit.memit import METHOD as MEMIT
from hooklab.edit.method import EditMethod
from hooklab.edit.rome import METHOD as ROME
from hooklab.edit.wise import METHOD as WISE
from hooklab.errors import EditMethodError

_METHODS: dict[str, EditMethod] = {m.name: m for m in (ROME, MEMIT, ALPHAEDIT, WISE)}


def get(name: str) -> EditMethod:
    """The method called ``name``, or a clear error listing the known ones."""
    if name not in _METHODS:
        raise EditMethodError(f"unknown edit method {name!r}; use one of {names()} (or register it first).")
    return _METHODS[name]


def names(*, updates_only: bool = False) -> list[str]:
    """The registered methods' names; ``updates_only``: those that compute weight updates."""
    return [n for n, m in _METHODS.items() if m.compute is not None or not updates_only]


def register(method: EditMethod, *, replace: bool = False) -> EditMethod:
    """Add ``method`` to the table (``replace=True`` to put a new entry under a taken name)."""
    if not isinstance(method, EditMethod):
        raise EditMethodError(f"register takes an EditMethod, got {type(method).__name__}.")
    if method.name in _METHODS and not replace:
        raise EditMethodError(f"an edit method {method.name!r} is registered already; pass replace=True to replace it.")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> EditMethod:
    """Take the method ``name`` out of the table; returns it."""
    get(name)
    return _METHODS.pop(name)


def table() -> str:
    """The methods as a Markdown table (the README's, kept equal to this by a test)."""
    rows = [f"| `{m.name}` | {'weight update' if m.compute else 'side memory'} | `{m.hparams.__name__}` | {m.summary} |"
            for m in _METHODS.values()]  # fmt: skip
    return "\n".join(["| method | kind | hyperparameters | what it does |", "|---|---|---|---|", *rows])
