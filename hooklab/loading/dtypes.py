"""Dtypes a model may be loaded in, checked against the devices that will compute in them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hooklab.errors import UnsupportedDtypeError

_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
}
_COMPUTE = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def resolve_dtype(dtype: torch.dtype | str | None, default: torch.dtype, devices: Sequence[str]) -> torch.dtype:
    """``dtype`` (or ``default``) as a torch dtype every device in ``devices`` can compute in."""
    if dtype is None:
        dtype = default if default in _COMPUTE else torch.float32
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.").lower()
        if name not in _NAMES:
            raise UnsupportedDtypeError(
                f"unknown dtype {dtype!r}; use one of {sorted(_NAMES)} or a torch dtype."
            )
        dtype = _NAMES[name]
    if dtype not in _COMPUTE:
        raise UnsupportedDtypeError(
            f"{dtype} is not a dtype models compute in; load in torch.float32, torch.bfloat16 "
            "or torch.float16 (quantized storage formats are not supported)."
        )
    for device in dict.fromkeys(devices):
        if not _computes_in(device, dtype):
            raise UnsupportedDtypeError(
                f"{device} cannot run a model in {dtype}; load it with dtype=torch.float32 "
                "(or pick a device that supports this dtype)."
            )
    return dtype


def _computes_in(device: str, dtype: torch.dtype) -> bool:
    if device.startswith("cuda") and dtype == torch.bfloat16:
        return torch.cuda.get_device_capability(torch.device(device))[0] >= 8
    try:
        x = torch.ones(4, 4, dtype=dtype, device=device)
        (x @ x).softmax(-1)
    except RuntimeError:
        return False
    return True
