"""The one device / precision / seed switch: CPU fp32 by default, bf16 autocast on GPU.

Every entry point (CLI verbs, trainers, benchmarks, Python jobs) resolves its device here, so
``--device auto`` means the same everywhere and asking for CUDA on a machine without one gives
the same one-line error from every verb.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from meditok.errors import DeviceError

PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str | torch.device | None = "cpu", local_rank: int | None = None) -> torch.device:
    """``cpu`` (default), ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available) → a device.

    ``local_rank`` picks the GPU of a torchrun process when ``name`` is ``cuda``/``auto``.
    Raises :class:`~meditok.errors.DeviceError` (one line, no traceback in the CLI) when CUDA
    is asked for and not available, or the name is not a device.
    """
    text = str(name or "cpu").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"--device {name}: not a device name (use cpu, cuda, cuda:N or auto)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available on this machine; "
                              "use --device cpu (or auto)")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) present")
    elif device.type not in ("cpu", "mps"):
        raise DeviceError(f"--device {name}: unsupported device type {device.type!r}")
    return device


def autocast(device: torch.device | str, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` in ``{'fp32', 'bf16'}`` (fp32 = no autocast).

    The quantiser and the projections around it disable autocast themselves, so tokens are
    always computed in fp32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def bf16_native(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls / convolutions run natively on ``device``: CUDA, or a CPU with
    AVX-512 BF16 or AMX (elsewhere CPU bf16 is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        if check is not None and not bool(check()):
            return False
    except (RuntimeError, AttributeError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def default_precision(device: torch.device | str, requested: str = "auto") -> str:
    """``auto`` → bf16 on GPU, fp32 on CPU (bf16 on CPU only when asked for explicitly)."""
    if requested == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be auto, fp32 or bf16, got {requested!r}")
    return requested


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (all devices); return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
