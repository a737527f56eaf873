"""A stable digest of a model's weights, computed where each weight lives.

Edit files record the fingerprint of the model they were made for, so applying one to any
other model can be refused. Each tensor is reduced on its own device to a 64-bit
position-weighted sum of its bit patterns (exact integer arithmetic, so CPU and GPU agree and
any single changed value changes the sum); names, shapes, dtypes and those sums are hashed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

_CHUNK = 1 << 20
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# Odd 64-bit multipliers (as signed int64): golden-ratio and splitmix constants.
_A, _B = -7046029254386353131, 7640891576956012809


@torch.no_grad()
def tensor_digest(tensor: torch.Tensor) -> int:
    """A 64-bit digest of a tensor's bits, computed on its device."""
    words = tensor.detach().contiguous().reshape(-1).view(_INT_OF_SIZE[tensor.element_size()])
    width = min(_CHUNK, words.numel())  # no wider than the tensor: most tensors are far smaller than a chunk
    weights = (torch.arange(width, device=tensor.device, dtype=torch.int64) * _A + _B) | 1
    total = torch.zeros((), dtype=torch.int64, device=tensor.device)
    for i, chunk in enumerate(words.split(_CHUNK)):
        n = chunk.numel()
        # Each chunk's sum gets its own odd multiplier, so positions across chunks differ too.
        total += (chunk.to(torch.int64) * weights[:n]).sum() * (2 * i + 1)
    return int(total.item()) & (2**64 - 1)


def fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hex digest of names, shapes, dtypes and contents (order-independent in the names)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{tensor_digest(tensor):016x}\n".encode())
    return digest.hexdigest()[:32]
