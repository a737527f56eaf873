"""The placement plan: contiguous, balanced by bytes, validated before any weight moves."""

from __future__ import annotations

import itertools

import pytest
import torch

import hooklab
from hooklab.errors import PlacementError
from hooklab.loading.placement import Placement, plan_layers
from hooklab.loading.skeleton import Parts


def parts(layer_bytes, first=0, last=0) -> Parts:
    return Parts("model.layers", tuple(layer_bytes), ("model.embed_tokens",), first, ("model.norm", "lm_head"), last)


def brute_force_best_max(p: Parts, k: int) -> int:
    """The smallest achievable fullest-device load, by trying every contiguous cut."""
    n, best = p.n_layers, None
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        loads = [sum(p.layer_bytes[a:b]) for a, b in zip(bounds, bounds[1:])]
        loads[0] += p.first_bytes
        loads[-1] += p.last_bytes
        best = max(loads) if best is None else min(best, max(loads))
    return best


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_uniform_layers_balance_within_one_layer_plus_embedding(k):
    layer, emb = 100, 250
    p = parts([layer] * 32, first=emb, last=emb)
    plan = plan_layers(p, ["cpu"] * k, [None] * k)
    assert list(plan.layers) == sorted(plan.layers)  # contiguous, in order
    assert set(plan.layers) == set(range(k))  # every device gets layers
    assert plan.first == 0 and plan.last == k - 1
    assert sum(plan.nbytes) == p.total_bytes
    assert max(plan.nbytes) - min(plan.nbytes) <= layer + emb
    assert max(plan.nbytes) == brute_force_best_max(p, k)


def test_llama8b_shape_two_devices_within_5_percent():
    # Llama-3-8B in bf16: 1.05 GB embedding, 436 MB per layer, 1.05 GB untied unembedding.
    p = parts([436_207_616] * 32, first=1_050_673_152, last=1_050_673_152 + 8192)
    plan = plan_layers(p, ["cuda:0", "cuda:1"], [None, None])
    mean = sum(plan.nbytes) / 2
    assert max(abs(b - mean) for b in plan.nbytes) / mean <= 0.05
    assert plan.layers.count(0) == plan.layers.count(1) == 16


@pytest.mark.parametrize("seed", range(5))
def test_optimal_for_random_sizes(seed):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 100, (12,), generator=g).tolist()
    p = parts(sizes, first=int(torch.randint(0, 200, (1,), generator=g)), last=40)
    for k in (2, 3, 5):
        assert max(plan_layers(p, ["cpu"] * k, [None] * k).nbytes) == brute_force_best_max(p, k)


def test_fake_device_sizes_balance_fill_ratio():
    p = parts([100] * 30)
    plan = plan_layers(p, ["cpu"] * 2, [1000, 2000], weighted=True)  # second device twice as big
    assert plan.layers.count(0) == 10 and plan.layers.count(1) == 20
    assert plan.nbytes[0] <= 1000 and plan.nbytes[1] <= 2000


def test_fits_around_a_small_device():
    p = parts([100] * 10)
    plan = plan_layers(p, ["cpu"] * 2, [250, None])
    assert plan.nbytes[0] <= 250


def test_max_memory_too_small():
    with pytest.raises(PlacementError, match="does not fit.*raise max_memory"):
        plan_layers(parts([100] * 10), ["cpu"] * 2, [300, 300])


def test_more_devices_than_layers():
    with pytest.raises(PlacementError, match="3 devices for a model of 2 layers"):
        plan_layers(parts([1, 1]), ["cpu"] * 3, [None] * 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"devices": ["tpu:0"]}, "unknown device|not supported"),
        ({"devices": ["banana"]}, "unknown device"),
        ({"devices": ["cuda:7"]}, "cuda:7 is not there"),
        ({"n_devices": 9}, "asked for 9 GPUs"),
        ({"devices": []}, "devices= is empty"),
        ({"device": "cpu", "n_devices": 1}, "only one of"),
        ({"devices": ["cpu", "cpu", "cpu"]}, "3 devices for a model of 2 layers"),
        ({"devices": ["cpu"] * 2, "max_memory": ["1KB", "1KB"]}, "does not fit"),
        ({"devices": ["cpu"] * 2, "max_memory": ["1KB"]}, "one per device"),
        ({"strategy": "teleport"}, "unknown strategy"),
    ],
)
def test_load_refuses_bad_placements_early(pico_llama, kwargs, message):
    with pytest.raises(PlacementError, match=message):
        hooklab.load(pico_llama, **kwargs)


def test_plan_placement_on_its_own(pico_llama):
    plan = hooklab.plan_placement(pico_llama, devices=["cpu", "cpu"])
    assert plan.devices == ("cpu", "cpu") and plan.layers == (0, 1)
    assert "0-0" in str(plan) and "+emb" in str(plan) and "+head" in str(plan)


def test_user_placement_is_used_and_checked(pico_llama):
    mine = Placement(devices=("cpu", "cpu"), layers=(1, 1), first=0)
    model = hooklab.load(pico_llama, placement=mine)
    assert model.placement == mine and model.placement.nbytes[0] > 0
    with pytest.raises(PlacementError, match="assigns 3 layers but the model has 2"):
        hooklab.load(pico_llama, placement=Placement(devices=("cpu",), layers=(0, 0, 0)))
    with pytest.raises(PlacementError, match="slot"):
        Placement(devices=("cpu",), layers=(0, 1))
    with pytest.raises(PlacementError, match=r"KiB on slot 1 \(cpu\), over its 100 B"):
        hooklab.load(pico_llama, placement=mine, max_memory=[10**9, 100])
