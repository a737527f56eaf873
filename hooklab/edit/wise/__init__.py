"""WISE: lifelong editing through a routed side memory (Wang et al. 2024, arXiv 2405.14768). See README.md."""

from hooklab.edit.wise.hparams import WiseHparams
from hooklab.edit.wise.memory import WiseMemory

__all__ = ["WiseHparams", "WiseMemory"]
