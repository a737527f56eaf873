"""Putting a loaded model's parts on their devices and routing activations between them."""

from __future__ import annotations

from accelerate import dispatch_model
from transformers import PreTrainedModel

from hooklab.loading.placement import Placement
from hooklab.loading.skeleton import Parts


def cpu_then_shard(model: PreTrainedModel, placement: Placement, parts: Parts) -> PreTrainedModel:
    """The classic path: a model whole in host memory, then each part moved to its device."""
    for path, device in placement.device_map(parts).items():
        model.get_submodule(path).to(device)
    return model


def route_between_devices(model: PreTrainedModel, placement: Placement, parts: Parts) -> None:
    """Attach accelerate's dispatch hooks, which move activations to each part's device."""
    device_map = placement.device_map(parts)
    if len(set(device_map.values())) > 1:
        dispatch_model(model, device_map=device_map, main_device=placement.devices[placement.first])
