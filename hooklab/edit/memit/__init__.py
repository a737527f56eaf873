"""MEMIT: mass-editing memory in a transformer (Meng et al. 2023, arXiv 2210.07229). See README.md."""

from hooklab.edit.memit.main import memit

__all__ = ["memit"]
