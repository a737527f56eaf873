"""The null-space projection P of the preserved knowledge's keys: P = Û Ûᵀ, Û the eigenvectors of
C = E[k kᵀ] whose eigenvalues are below the threshold. An update ΔW = Δ P leaves every key k with
P k ≈ 0, that is the keys the preserved knowledge uses, (almost) unchanged in output.

The eigendecomposition runs in float64 on the layer's device. P is cached on disk under a digest
of C and the threshold (C itself is cached by model fingerprint, corpus and token count), so a
sequence of edits, or a second run, computes it once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor

from hooklab.errors import EditSolveError
from hooklab.tensorfiles import save_atomic


def null_space_projection(
    moment: Float[Tensor, "d_mlp d_mlp"], threshold: float
) -> Float[Tensor, "d_mlp d_mlp"]:
    """P onto the span of C's eigenvectors with eigenvalues below ``threshold`` (float64, on C's device)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(moment.double())  # ascending
    small = eigenvectors[:, eigenvalues < threshold]  # (d_mlp, r)
    if small.shape[1] == 0:
        raise EditSolveError(
            f"no eigenvalue of the key statistics is below nullspace_threshold={threshold:g} (the smallest is "
            f"{float(eigenvalues[0]):.3g}), so the preserved keys leave no null space to edit in; raise "
            "nullspace_threshold."
        )
    return small @ small.T


def cached_projection(
    moment: Float[Tensor, "d_mlp d_mlp"], threshold: float, root: Path
) -> Float[Tensor, "d_mlp d_mlp"]:
    """:func:`null_space_projection`, read from ``root`` when this C and threshold were seen before."""
    c = moment.detach().to("cpu", torch.float64).contiguous()
    digest = hashlib.blake2b(c.numpy().tobytes(), digest_size=16)
    digest.update(repr(float(threshold)).encode())
    path = root / f"{digest.hexdigest()}.safetensors"
    if path.is_file():
        return load_file(str(path), device=str(moment.device))["projection"]
    projection = null_space_projection(moment, threshold)
    meta = {"format": "hooklab-nullspace", "threshold": repr(threshold)}
    save_atomic({"projection": projection.cpu().contiguous()}, path, meta)
    return projection
