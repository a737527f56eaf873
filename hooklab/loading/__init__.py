"""Loading checkpoints onto one device or many: sources, placement, the two loaders."""

from hooklab.loading.load import load, plan_placement
from hooklab.loading.placement import Placement

__all__ = ["Placement", "load", "plan_placement"]
