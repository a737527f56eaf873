"""ROME: rank-one model editing (Meng et al. 2022, arXiv 2202.05262). See README.md."""

from hooklab.edit.rome.main import rome

__all__ = ["rome"]
