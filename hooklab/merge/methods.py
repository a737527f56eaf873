"""Merge methods: pure functions from same-shaped tensors (one per model) to one tensor.

They never write their inputs, work on any device, and compute in float32 (float64 when an
input is float64), returning that dtype: callers cast to the dtype they store. ``out=``
takes a tensor to write the result into, for callers that reuse memory across tensors. The equations
are in this folder's README.

The task-arithmetic family is one function, :func:`task_arithmetic`: plain task arithmetic
(Ilharco et al. 2023), TIES (Yadav et al. 2023: trim, elect sign, disjoint merge) and DARE
(Yu et al. 2024: random drop and rescale) are settings of it; :func:`ties` is TIES's preset,
with the signature WISE's shard merge calls.

Whole-tensor statistics (trim thresholds, slerp's angle) are taken first; the per-entry work
then runs over slices of ``CHUNK`` entries, so its temporaries stay small and are reused
instead of each costing a fresh, page-faulted allocation the size of the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

Sparsify = Literal["magnitude", "dare"]
Consensus = Literal["sum", "count"]
CHUNK = {"cpu": 1 << 20, "cuda": 1 << 26}  # entries per slice: cache-sized on CPUs, few launches on GPUs


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32: merges never compute in half precision."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def linear(
    tensors: Sequence[Float[Tensor, "*shape"]],
    weights: Sequence[float],
    *,
    normalize: bool = True,
    out: Float[Tensor, "*shape"] | None = None,
) -> Float[Tensor, "*shape"]:
    """Weighted sum Σ wᵢ θᵢ, divided by Σ wᵢ when ``normalize`` (model soup, LM-Cocktail's mix).

    Computed as θ₀ + Σᵢ cᵢ (θᵢ − θ₀), so identical inputs come back bit for bit.

    Example:
        >>> linear([a, b], [0.3, 0.7])          # 0.3 a + 0.7 b
    """
    _check_lengths(tensors, weights)
    dtype = compute_dtype(*tensors)
    total = math.fsum(weights)
    if normalize and abs(total) < 1e-12:
        raise ValueError(f"weights {list(weights)} sum to 0; linear merging with normalize=True divides by the sum")
    coef = [w / total for w in weights] if normalize else list(weights)
    out = _output(tensors[0], dtype, out)
    if len(tensors) == 2 and normalize:
        return torch.lerp(tensors[0].to(dtype), tensors[1].to(dtype), coef[1], out=out)  # one fused pass
    flats, flat_out = [t.reshape(-1) for t in tensors], out.view(-1)
    for part in _slices(flat_out):
        first = flats[0][part].to(dtype)
        torch.mul(first, math.fsum(coef), out=flat_out[part])
        for c, t in zip(coef[1:], flats[1:]):
            flat_out[part].add_(t[part].to(dtype) - first, alpha=c)
    return out


def task_arithmetic(
    base: Float[Tensor, "*shape"],
    tensors: Sequence[Float[Tensor, "*shape"]],
    weights: Sequence[float],
    *,
    density: float = 1.0,
    sparsify: Sparsify = "magnitude",
    consensus: Consensus | None = None,
    normalize: bool = False,
    rescale: bool | None = None,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    out: Float[Tensor, "*shape"] | None = None,
) -> Float[Tensor, "*shape"]:
    """θ_base + λ · combine(wᵢ · sparsify(θᵢ − θ_base)): task arithmetic, TIES and DARE in one.

    Args:
        density: share of each task vector kept (1 keeps all).
        sparsify: ``"magnitude"`` keeps the ⌊density · n⌋ (at least 1) largest |τ| (TIES's
            trim; of equal magnitudes the first ones); ``"dare"`` keeps each entry with
            probability ``density`` (DARE).
        consensus: ``None`` sums the weighted task vectors; ``"sum"`` (TIES) or ``"count"``
            elects a sign per entry (sign of Σ wᵢτᵢ, or of Σ sign(wᵢτᵢ); + on a tie) and sums
            only the entries that agree with it.
        normalize: divide by the sum of the weights that contributed (per entry with consensus).
        rescale: divide kept entries by ``density`` (default: only for DARE).
        scale: λ, multiplies the combined task vector.
        generator: DARE's random source (on the tensors' device), for drops that repeat.
        out: where to write the result (shape of ``base``, the compute dtype); default a new tensor.

    Example:
        >>> task_arithmetic(base, [math_ft, code_ft], [1.0, 1.0], scale=0.5)
        >>> task_arithmetic(base, [a, b], [1, 1], density=0.3, sparsify="dare", consensus="sum")  # DARE-TIES
    """
    _check_lengths(tensors, weights)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if sparsify not in ("magnitude", "dare"):
        raise ValueError(f"unknown sparsify {sparsify!r}; use 'magnitude' or 'dare'")
    if consensus not in (None, "sum", "count"):
        raise ValueError(f"unknown consensus {consensus!r}; use 'sum', 'count' or None")
    dtype = compute_dtype(base, *tensors)
    rescale = sparsify == "dare" if rescale is None else rescale
    flat_base, flats = base.reshape(-1), [t.reshape(-1) for t in tensors]
    # Trimming needs each whole task vector's k-th largest magnitude; all else is per entry.
    trims = [_Trim(t, flat_base, density, dtype) for t in flats] if density < 1 and sparsify == "magnitude" else None
    out = _output(base, dtype, out)
    flat_out = out.view(-1)
    for part in _slices(flat_out):
        origin = flat_base[part].to(dtype)
        deltas = []  # wᵢ · τᵢ on this slice, sparsified
        for i, (w, t) in enumerate(zip(weights, flats)):
            delta = t[part].to(dtype) - origin
            if density < 1:
                keep = trims[i].keep(delta) if trims else torch.rand(delta.shape, generator=generator, device=delta.device) < density
                delta.mul_(keep)
                if rescale:
                    delta /= density
            deltas.append(delta.mul_(w) if w != 1 else delta)
        torch.add(origin, _combine(deltas, weights, consensus, normalize), alpha=scale, out=flat_out[part])
    return out


def ties(
    base: Float[Tensor, "*shape"],
    tensors: Sequence[Float[Tensor, "*shape"]],
    weights: Sequence[float],
    density: float,
    *,
    consensus: Consensus = "sum",
    normalize: bool = True,
    scale: float = 1.0,
) -> Float[Tensor, "*shape"]:
    """TIES-merging: trim each τᵢ = θᵢ − θ_base to its top ``density`` by magnitude, elect a sign
    per entry, average the entries that agree (weighted), add to the base.

    ``tensors`` are updated copies of ``base`` (fine-tuned models, or WISE's knowledge shards).

    Example:
        >>> merged = ties(w0, [shard1, shard2, shard3], [1.0, 1.0, 1.0], density=0.2).to(w0.dtype)
    """
    return task_arithmetic(
        base, tensors, weights, density=density, sparsify="magnitude", consensus=consensus,
        normalize=normalize, scale=scale,
    )  # fmt: skip


def slerp(
    a: Float[Tensor, "*shape"],
    b: Float[Tensor, "*shape"],
    t: float,
    *,
    dot_threshold: float = 0.9995,
    out: Float[Tensor, "*shape"] | None = None,
) -> Float[Tensor, "*shape"]:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1), each tensor taken as one vector.

    The angle is measured between the normalised tensors; the sines weight the tensors
    themselves (mergekit's convention). Nearly parallel (or zero) tensors are interpolated
    linearly, where the spherical formula loses precision.

    Example:
        >>> slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.5)   # tensor([0.7071, 0.7071])
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    dtype = compute_dtype(a, b)
    a, b = a.to(dtype), b.to(dtype)
    norms = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    cos = float(torch.vdot(a.reshape(-1), b.reshape(-1))) / norms if norms > 0 else 1.0
    out = _output(a, dtype, out)
    if abs(cos) > dot_threshold:
        return torch.lerp(a, b, t, out=out)
    theta = math.acos(max(-1.0, min(1.0, cos)))
    torch.mul(a, math.sin((1 - t) * theta) / math.sin(theta), out=out)
    return out.add_(b, alpha=math.sin(t * theta) / math.sin(theta))


class _Trim:
    """TIES's trim of one task vector: keep its k = ⌊density · n⌋ (at least 1) largest magnitudes.

    The threshold (k-th largest |τ|) is found on the whole vector; ``keep`` is then called on
    its slices in order, handing out the entries tied at the threshold first come, first kept.
    """

    def __init__(self, tensor: Tensor, base: Tensor, density: float, dtype: torch.dtype):
        n = base.numel()
        self.k = max(1, int(density * n))  # as mergekit counts, so the two agree
        magnitude = torch.empty(n, dtype=dtype, device=base.device)  # |τ|, whole
        for part in _slices(magnitude):
            torch.sub(tensor[part].to(dtype), base[part].to(dtype), out=magnitude[part]).abs_()
        self.threshold, self.tie_budget = None, 0  # None: keep all (k = n) or none (k = 0)
        if 0 < self.k < n:  # the k-th largest |τ|: kthvalue is quicker on CPUs, radix select on GPUs
            on_gpu = magnitude.device.type == "cuda"
            self.threshold = kth_largest(magnitude, self.k) if on_gpu else magnitude.kthvalue(n - self.k + 1).values
            self.tie_budget = self.k - int((magnitude > self.threshold).sum())

    def keep(self, delta: Tensor) -> Tensor:
        if self.threshold is None:
            return torch.full(delta.shape, self.k > 0, device=delta.device)
        magnitude = delta.abs()
        keep = magnitude > self.threshold
        if self.tie_budget > 0:
            tied = (magnitude == self.threshold).nonzero().squeeze(1)[: self.tie_budget]
            keep[tied] = True
            self.tie_budget -= len(tied)
        return keep


def kth_largest(values: Tensor, k: int) -> Tensor:
    """The k-th largest of non-negative floats, exactly, in a few O(n) passes on any device.

    A radix select: for non-negative IEEE floats, the order of the bit patterns read as
    integers is the order of the values, so counting 11-bit digits from the top (``bincount``)
    narrows down the k-th largest pattern digit by digit. ``kthvalue`` does the same on a
    CPU, but on a GPU it runs each row in one thread block, slow for the hundreds of millions
    of entries of an 8B model's embedding.
    """
    ints = values.reshape(-1).view({4: torch.int32, 8: torch.int64}[values.element_size()])
    bit = 8 * values.element_size() - 1  # the sign bit is 0
    prefix, remaining, candidates = 0, k, ints
    while bit > 0:
        width = min(11, bit)
        bit -= width
        digit = (candidates >> bit) & ((1 << width) - 1)
        at_least = torch.bincount(digit, minlength=1 << width).flip(0).cumsum(0)  # count with digit >= d, d from the top
        i = int(torch.searchsorted(at_least, remaining))
        if i:
            remaining -= int(at_least[i - 1])
        chosen = (1 << width) - 1 - i
        candidates = candidates[digit == chosen]
        prefix |= chosen << bit
    return torch.tensor(prefix, dtype=ints.dtype, device=values.device).view(values.dtype)


def _combine(deltas: list[Tensor], weights: Sequence[float], consensus: Consensus | None, normalize: bool) -> Tensor:
    """Σ of the weighted task vectors (all, or those agreeing with the elected sign), optionally averaged."""
    if consensus is None:
        mixed = _summed(deltas)
        total = math.fsum(weights)
        return mixed.div_(total) if normalize and abs(total) > 1e-12 else mixed
    votes = _summed([d.sign() for d in deltas]) if consensus == "count" else _summed(deltas)
    positive = votes >= 0  # the elected sign: + on a tie
    mixed = torch.zeros_like(deltas[0])
    divisor = torch.zeros_like(deltas[0])
    for w, delta in zip(weights, deltas):
        agrees = torch.where(positive, delta > 0, delta < 0)  # zeros never agree: dropped entries don't vote
        mixed += delta.mul_(agrees)
        divisor.add_(agrees, alpha=w)
    return mixed.div_(divisor.masked_fill_(divisor == 0, 1)) if normalize else mixed


def _summed(tensors: list[Tensor]) -> Tensor:
    """Σ tensors, as a new tensor (no stacked copy)."""
    out = tensors[0].clone()
    for t in tensors[1:]:
        out += t
    return out


def _output(like: Tensor, dtype: torch.dtype, out: Tensor | None) -> Tensor:
    """``out`` checked to fit the result, or a new tensor."""
    if out is None:
        return torch.empty(like.shape, dtype=dtype, device=like.device)
    if out.shape != like.shape or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {tuple(like.shape)}, got {out.dtype} {tuple(out.shape)}")
    return out


def _slices(flat: Tensor) -> Iterator[slice]:
    step = CHUNK.get(flat.device.type, CHUNK["cuda"])
    return (slice(i, i + step) for i in range(0, flat.numel(), step))


def _check_lengths(tensors: Sequence[Tensor], weights: Sequence[float]) -> None:
    if not tensors:
        raise ValueError("no tensors to merge")
    if len(tensors) != len(weights):
        raise ValueError(f"{len(tensors)} tensors but {len(weights)} weights; give one weight per tensor")
