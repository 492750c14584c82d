"""CPU run-time settings: threads this process may really use, the heap setting of the exact
fast path (:func:`tune_allocator`), and a record of both for benchmarks (:func:`describe`).
:func:`configure` applies both; entry points (CLI, benchmarks) call it once.

torch's default thread count is the OpenMP default, i.e. the CPUs in the affinity mask; a
container's CPU quota (cgroup ``cpu.max``) is ignored, so a 2-CPU container on a 64-core host
starts 64 threads that fight over 2 cores. :func:`available_cpus` takes both limits into
account and :func:`configure_threads` applies it unless the user chose a count.

Shared machines: with several jobs on the same cores, libgomp's default spin-waiting costs
more than it saves (measured 1.3-3x slower small-model calls, outliers far worse, in the
issue that introduced this module); start long jobs with ``OMP_WAIT_POLICY=PASSIVE`` (it must
be in the environment before torch starts its thread pool) and give each job its share of
the cores with ``--threads`` / ``torch.set_num_threads``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import platform
from pathlib import Path
from typing import Any

import torch

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _cgroup_quota() -> float | None:
    """CPUs granted by the cgroup CPU quota (v2 ``cpu.max`` or v1 CFS), None when unlimited."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """CPUs this process can run on: the affinity mask, capped by the cgroup quota (≥ 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))  # a fractional share cannot run a whole thread
    return max(1, n)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads and return the count used.

    ``threads`` given: exactly that. Otherwise the count the user chose through
    ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` is kept, else torch's default is capped at
    :func:`available_cpus` (never raised above it).
    """
    if threads is not None and threads > 0:
        torch.set_num_threads(int(threads))
    elif not any(os.environ.get(k) for k in _THREAD_ENV):
        torch.set_num_threads(max(1, min(torch.get_num_threads(), available_cpus())))
    return torch.get_num_threads()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_allocator = {"tuned": False}


def tune_allocator(threshold_mib: int = 1024) -> bool:
    """Keep large tensor buffers in the heap instead of fresh ``mmap`` pages (glibc only).

    torch's CPU allocator is plain ``malloc``; glibc serves blocks above its mmap threshold
    (128 KiB, adapting up to 32 MiB) with fresh pages and unmaps them on free, so every
    activation of a conv stage and every score chunk of the search page-faults its memory
    in again on each call (``small`` tokenize at 128², batch 16: x1.10 faster with 2 threads,
    x1.3 with 1 thread, once the search is fused). Raising the mmap and
    trim thresholds lets freed blocks be reused. Exact (no number changes); the cost is that
    up to ``threshold_mib`` of freed memory stays with the process. Returns whether applied.
    """
    if _allocator["tuned"]:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        size = int(threshold_mib) << 20
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, size)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, size))
    except (OSError, AttributeError):
        return False
    _allocator["tuned"] = ok
    return ok


def configure(threads: int | None = None, allocator: bool = True) -> dict[str, Any]:
    """The CPU fast path's process settings: threads from the available cores
    (:func:`configure_threads`) and the heap setting (:func:`tune_allocator`). Both exact."""
    n = configure_threads(threads)
    return {"threads": n, "allocator_tuned": tune_allocator() if allocator else False}


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def bf16_native() -> bool:
    """Whether this CPU runs bf16 matmuls/convolutions natively (AVX-512 BF16 or AMX)."""
    from meditok.utils.device import bf16_native as native

    return native("cpu")


def describe() -> dict[str, Any]:
    """What a benchmark should record about the CPU side of a run."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    flags = _cpu_flags()
    return {
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "available_cpus": available_cpus(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cgroup_cpu_quota": _cgroup_quota(),
        "load_avg_1_5_15": [round(x, 2) for x in load] if load else None,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "allocator_tuned": _allocator["tuned"],
        "cpu_isa": sorted(f for f in flags if f.startswith(("avx512f", "avx512_bf16", "amx", "avx2"))),
        "torch": torch.__version__,
        "onednn": str(torch.backends.mkldnn.is_available()),
        "mkl": str(torch.backends.mkl.is_available()),
    }
