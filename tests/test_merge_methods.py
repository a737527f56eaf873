"""Merge methods against hand-worked cases and plain reference computations."""

from __future__ import annotations

import math

import pytest
import torch

from hooklab.merge import methods
from hooklab.merge.methods import linear, slerp, task_arithmetic, ties


def reference_ties(base, tensors, weights, density):
    """TIES written out over whole tensors (Yadav et al. 2023; weighted disjoint mean)."""
    deltas = []
    for t, w in zip(tensors, weights):
        tau = (t - base).flatten()
        k = max(1, int(density * tau.numel()))
        keep = torch.zeros_like(tau, dtype=torch.bool)
        keep[tau.abs().argsort(descending=True, stable=True)[:k]] = True
        deltas.append(torch.where(keep, tau, 0) * w)
    stacked = torch.stack(deltas)
    elected = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = stacked.sign() == elected
    w = torch.tensor(weights)[:, None]
    divisor = (agree * w).sum(0)
    mixed = (stacked * agree).sum(0) / torch.where(divisor == 0, 1, divisor)
    return base + mixed.reshape(base.shape)


@pytest.fixture
def small_chunks(monkeypatch):
    """Slices of 7 entries, so every per-entry path runs over many slices."""
    monkeypatch.setitem(methods.CHUNK, "cpu", 7)


def test_linear_equals_weighted_sum():
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(5, 6, generator=g) for _ in range(3)]
    w = [0.2, 0.5, 1.3]
    ref = sum(wi * t.double() for wi, t in zip(w, ts)) / sum(w)
    assert torch.allclose(linear(ts, w).double(), ref, atol=1e-6)
    assert torch.allclose(linear(ts, w, normalize=False).double(), ref * sum(w), atol=1e-5)
    assert torch.allclose(linear(ts[:2], [1, 3]), (ts[0] + 3 * ts[1]) / 4, atol=1e-6)


def test_linear_of_identical_tensors_is_exact(small_chunks):
    t = torch.randn(10, 9)
    assert torch.equal(linear([t, t, t], [0.1, 0.7, 0.2]), t)
    assert torch.equal(linear([t, t], [0.3, 0.7]), t)
    half = t.bfloat16()
    out = linear([half, half], [0.3, 0.7])
    assert out.dtype == torch.float32 and torch.equal(out.bfloat16(), half)


def test_ties_hand_worked():
    base = torch.zeros(4)
    a = torch.tensor([1.0, -2.0, 0.5, 3.0])  # top half by magnitude: 3, -2
    b = torch.tensor([-1.5, 1.0, 1.2, 0.1])  # top half: -1.5, 1.2
    # trimmed: a' = [0, -2, 0, 3], b' = [-1.5, 0, 1.2, 0]; votes [-1.5, -2, 1.2, 3] -> signs - - + +
    # agreeing means: [-1.5, -2, 1.2, 3]
    assert torch.equal(ties(base, [a, b], [1.0, 1.0], density=0.5), torch.tensor([-1.5, -2.0, 1.2, 3.0]))
    # b weighs 2, nothing trimmed: weighted τ a [1, -2, .5, 3], b [-3, 2, 2.4, .2]; votes [-2, 0, 2.9, 3.2]
    # elect - + + + (a tie is +); agreeing sums / weights: [-3/2, 2/2, 2.9/3, 3.2/3]
    assert torch.allclose(ties(base, [a, b], [1.0, 2.0], density=1.0), torch.tensor([-1.5, 1.0, 2.9 / 3, 3.2 / 3]))


def test_ties_signs_disagree_hand_worked():
    base = torch.tensor([1.0, 1.0])
    a = torch.tensor([3.0, 0.0])  # tau [2, -1]
    b = torch.tensor([0.0, 4.0])  # tau [-1, 3]
    # density 1: votes [1, 2] -> + +; only the positive entries count: [2, 3]
    assert torch.equal(ties(base, [a, b], [1.0, 1.0], density=1.0), torch.tensor([3.0, 4.0]))
    # count consensus: entry 0 has one + and one - -> tie -> +
    assert torch.equal(ties(base, [a, b], [1.0, 1.0], density=1.0, consensus="count"), torch.tensor([3.0, 4.0]))


def test_ties_matches_reference_over_slices(small_chunks):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(8, 13, generator=g)
    tensors = [base + torch.randn(8, 13, generator=g) for _ in range(3)]
    for density in (0.2, 0.5, 1.0):
        got = ties(base, tensors, [1.0, 0.5, 2.0], density)
        assert torch.allclose(got, reference_ties(base, tensors, [1.0, 0.5, 2.0], density), atol=1e-6)


def test_trim_keeps_exactly_k_when_magnitudes_tie(small_chunks):
    base = torch.zeros(40)
    t = torch.ones(40)
    t[::2] = -1.0  # every magnitude is 1
    got = task_arithmetic(base, [t], [1.0], density=0.25)
    assert int((got != 0).sum()) == 10
    assert torch.equal(got[:10], t[:10])  # the first ones are kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kth_largest_equals_kthvalue(dtype):
    g = torch.Generator().manual_seed(4)
    values = torch.cat([torch.randn(5000, generator=g).abs(), torch.zeros(300), torch.full((200,), 0.5)]).to(dtype)
    values[:100] *= 1e-30  # tiny and subnormal-ish magnitudes too
    n = values.numel()
    for k in (1, 2, 150, 2600, 5200, n - 1, n):
        assert methods.kth_largest(values, k) == values.kthvalue(n - k + 1).values, k


def test_results_go_into_out_when_given():
    g = torch.Generator().manual_seed(5)
    base, a, b = (torch.randn(30, generator=g) for _ in range(3))
    for call in (lambda out: linear([a, b], [1, 2], out=out), lambda out: linear([a, b, base], [1, 2, 3], out=out),
                 lambda out: ties(base, [a, b], [1, 1], 0.5) if out is None else task_arithmetic(
                     base, [a, b], [1, 1], density=0.5, consensus="sum", normalize=True, out=out),
                 lambda out: slerp(a, b, 0.3, out=out)):  # fmt: skip
        out = torch.full((30,), float("nan"))
        assert call(out) is out and torch.equal(out, call(None))
    with pytest.raises(ValueError, match="out must be"):
        linear([a, b], [1, 1], out=torch.empty(3))


def test_task_arithmetic_is_base_plus_scaled_task_vectors():
    g = torch.Generator().manual_seed(2)
    base, a, b = (torch.randn(6, 4, generator=g) for _ in range(3))
    got = task_arithmetic(base, [a, b], [0.5, 2.0], scale=0.3)
    assert torch.allclose(got, base + 0.3 * (0.5 * (a - base) + 2.0 * (b - base)), atol=1e-6)
    assert torch.equal(task_arithmetic(base, [base, base], [1.0, 1.0]), base)


def test_dare_drops_and_rescales_reproducibly():
    base = torch.zeros(20000)
    t = torch.full((20000,), 2.0)
    out = task_arithmetic(base, [t], [1.0], density=0.3, sparsify="dare", generator=torch.Generator().manual_seed(0))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.02
    assert torch.allclose(out[kept], torch.tensor(2.0 / 0.3))
    again = task_arithmetic(base, [t], [1.0], density=0.3, sparsify="dare", generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_slerp_hand_worked():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    r = math.sqrt(0.5)
    assert torch.allclose(slerp(a, b, 0.5), torch.tensor([r, r]))
    assert torch.allclose(slerp(a, b, 1 / 3), torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]))
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    # Norms are kept through the tensors themselves: 2a and b at t=0.5 -> 2a·sin(π/4)/1 + b·sin(π/4).
    assert torch.allclose(slerp(2 * a, b, 0.5), torch.tensor([2 * r, r]))
    # Parallel tensors: linear interpolation.
    assert torch.allclose(slerp(a, 3 * a, 0.5), 2 * a)
    t = torch.randn(3, 3)
    assert torch.equal(slerp(t, t, 0.37), t)


def test_methods_leave_inputs_alone():
    g = torch.Generator().manual_seed(3)
    base, a, b = (torch.randn(50, generator=g) for _ in range(3))
    copies = [x.clone() for x in (base, a, b)]
    linear([a, b], [1, 2])
    linear([a, b, base], [1, 2, 3])
    task_arithmetic(base, [a, b], [1, 1], density=0.5, consensus="sum", normalize=True)
    task_arithmetic(base, [a, b], [1, 1], density=0.5, sparsify="dare", generator=torch.Generator().manual_seed(0))
    slerp(a, b, 0.3)
    assert all(torch.equal(x, c) for x, c in zip((base, a, b), copies))


def test_bad_arguments():
    t = torch.zeros(3)
    with pytest.raises(ValueError, match="2 tensors but 1 weights"):
        linear([t, t], [1.0])
    with pytest.raises(ValueError, match="sum to 0"):
        linear([t, t], [1.0, -1.0])
    with pytest.raises(ValueError, match="density"):
        ties(t, [t], [1.0], density=0.0)
    with pytest.raises(ValueError, match="one shape"):
        slerp(t, torch.zeros(4), 0.5)
