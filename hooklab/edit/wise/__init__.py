"""WISE: lifelong editing through a routed side memory (Wang et al. 2024, arXiv 2405.14768). See README.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hooklab.edit.method import EditMethod
from hooklab.edit.wise.hparams import WiseHparams
from hooklab.lazy import lazy_api

if TYPE_CHECKING:
    from hooklab.edit.wise.memory import WiseMemory


def _attach(model, requests, hp: WiseHparams) -> WiseMemory:
    from hooklab.edit.wise.memory import WiseMemory

    memory = WiseMemory(model, hp)
    try:
        return memory.add(requests)
    except BaseException:
        memory.detach()  # a failed edit leaves the model as it was
        raise


METHOD = EditMethod("wise", "a routed side memory of one layer for lifelong editing, one edit after another",
                    WiseHparams, attach=_attach, needs_stats=False)  # fmt: skip

__all__ = ["METHOD", "WiseHparams", "WiseMemory"]
__getattr__, __dir__ = lazy_api(globals(), {"WiseMemory": "hooklab.edit.wise.memory"})
