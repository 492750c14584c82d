"""The one device / precision switch: CPU fp32 by default, bf16 autocast on GPU."""
from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str = "cpu") -> torch.device:
    """``'auto'`` picks CUDA when available; anything else is passed to :class:`torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no GPU is available; use --device cpu")
    return device


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` in ``{'fp32', 'bf16'}`` (fp32 = no autocast).

    The quantiser and the projections around it disable autocast themselves, so tokens are
    always computed in fp32.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
