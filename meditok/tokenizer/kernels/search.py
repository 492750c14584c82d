"""Exact nearest-code search of the multi-codebook quantiser, with a fused CPU kernel.

``nearest_codes(f, books)``: f ``[K, N, d]`` unit-norm chunks, books ``[K, V, d]`` unit-norm
codes (fp32) → ``[K, N]`` int64, the highest-scoring code per row, ties to the smallest index.
It always returns what :func:`reference_nearest_codes` (``bmm`` + ``argmax`` over row chunks,
the quantiser's original lookup) returns:

* CPU with the compiled extension: one fused pass (``nearest_code.cpp``) that never builds
  the ``[K, rows, V]`` score tensor. Its scores are the sequential fp32 FMA chain, which is
  what MKL's sgemm computes for the reference's chunks; a one-off probe per shape
  (:func:`bmm_is_sequential_fma`) checks that bit for bit on this machine, and rows whose
  reference chunk the loaded BLAS computes another way (a 1-row chunk → gemv) are redone with
  the reference. So the indices are identical, not merely close.
* anything else (CUDA, MPS, no compiler, non-finite input, reduced-precision matmul flags,
  tracing / ONNX export, tiny ``d·V``): the reference, device-agnostic torch.

The extension is never compiled at import: ``python -m meditok.tokenizer.kernels build`` (run by
``scripts/install.sh``) caches a ``.so`` whose name carries the torch version, the platform
and the source hash, first in ``_ext/`` next to this file, else in the user cache
(``meditok.utils.io.cache_root()``: ``$MEDITOK_CACHE``, ``$XDG_CACHE_HOME/meditok`` or ``~/.cache/meditok``, subfolder
``ext``). Without it the reference runs and one warning line says so. ``MEDITOK_FUSED_SEARCH``:
``0`` disables the kernel (no warning), ``build`` compiles it on first use if missing,
``trust`` skips the probe (the kernel's arithmetic is then the definition: the same tokens on
every CPU, which the BLAS-dependent reference does not promise).
"""
from __future__ import annotations

import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from meditok.utils.io import cache_root

__all__ = ["LOOKUP_ROWS", "nearest_codes", "reference_nearest_codes", "build", "load_extension",
           "extension_available", "library_name", "library_path", "bmm_is_sequential_fma", "status"]

SOURCE = Path(__file__).resolve().parent / "nearest_code.cpp"
#: Rows scored per batched matmul in the reference: bounds the [K, rows, V] score tensor
#: (8 x 1024 x 4096 fp32 = 128 MiB). The probe and the chunk split below depend on it.
LOOKUP_ROWS = 1024
_OPS_NAMESPACE = "meditok_fused"
# -ffp-contract=off: the arithmetic is written out with explicit FMAs and must not depend on
# what the compiler contracts; -fopenmp-simd only enables the `omp simd` pragmas (threads
# come from torch's own pool through at::parallel_for, no second OpenMP runtime).
_CXXFLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp-simd", "-ffp-contract=off",
             "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]


def _fresh_state() -> dict:
    return {"tried": False, "ok": False, "warned": False, "error": None, "path": None}


_state: dict = _fresh_state()
_verdicts: dict[tuple, bool] = {}


# --------------------------------------------------------------------------- reference
def reference_nearest_codes(f: torch.Tensor, books: torch.Tensor, rows: int = LOOKUP_ROWS) -> torch.Tensor:
    """The quantiser's original lookup: ``argmax(bmm(f, booksᵀ))`` over chunks of ``rows``.

    One ``bmm`` over the K codebooks instead of K matmuls (the d = 8 deep products are
    memory-bound; batching lets the threads share them); chunks bound the score tensor.
    """
    f = f.detach()
    books = books.detach()
    out = [torch.argmax(torch.bmm(f[:, i:i + rows], books.transpose(1, 2)), dim=-1)
           for i in range(0, f.shape[1], rows)]
    if not out:  # N == 0
        return torch.empty(f.shape[0], 0, dtype=torch.long, device=f.device)
    return torch.cat(out, dim=1)


# --------------------------------------------------------------------------- cache / build
def _source_hash() -> str:
    return hashlib.sha256(SOURCE.read_bytes() + " ".join(_CXXFLAGS).encode()).hexdigest()[:12]


def library_name() -> str:
    """File name of the compiled kernel for this torch build, platform and source."""
    tv = torch.__version__.replace("+", "_").replace(".", "_")
    git = (getattr(torch.version, "git_version", None) or "")[:8]  # same version, other build
    return f"meditok_fused_torch{tv}_{git}_{sys.platform}_{platform.machine()}_{_source_hash()}.so"


def _cache_dirs() -> list[Path]:
    return [Path(__file__).resolve().parent / "_ext", cache_root() / "ext"]


def library_path() -> Path | None:
    """The cached ``.so`` for this torch and source, or None."""
    for d in _cache_dirs():
        p = d / library_name()
        if p.is_file():
            return p
    return None


def _compile_command(out: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths, library_paths

    cxx = os.environ.get("CXX", "c++")
    inc = [f"-I{p}" for p in include_paths("cpu")]
    libs = [f"-L{p}" for p in library_paths("cpu")]
    return [cxx, *_CXXFLAGS, *inc, str(SOURCE), "-o", str(out), *libs, "-lc10", "-ltorch_cpu"]


def build(dest: str | Path | None = None, verbose: bool = False) -> Path:
    """Compile the kernel into ``dest`` (default: the package ``_ext/`` if writable, else the
    user cache) and return the path of the ``.so``.

    One ``c++`` call: ops are registered with ``TORCH_LIBRARY`` (no pybind11, no Python
    headers, no ninja), so the library depends only on libtorch. Written atomically, so a
    concurrent reader never sees a half-written file. Raises ``RuntimeError`` on failure.
    """
    targets = [Path(dest)] if dest else _cache_dirs()
    last_err: Exception | None = None
    for d in targets:
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=d)
            os.close(fd)
        except OSError as e:  # not writable: try the next location
            last_err = e
            continue
        cmd = _compile_command(Path(tmp))
        if verbose:
            print(" ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
        t0 = time.perf_counter()
        try:
            try:
                res = subprocess.run(cmd, capture_output=True, text=True)
            except OSError as e:  # no compiler at all
                raise RuntimeError(f"cannot run the C++ compiler {cmd[0]!r}: {e}") from None
            if res.returncode != 0:
                raise RuntimeError(f"compiling {SOURCE.name} failed:\n{res.stderr[-4000:]}")
            final = d / library_name()
            os.chmod(tmp, 0o755)  # mkstemp made it 0600: other users of a shared install read it
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if verbose:
            print(f"built {final} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return final
    raise RuntimeError(f"no writable directory for the compiled kernel: {last_err}")


def _ops():
    return getattr(torch.ops, _OPS_NAMESPACE)


def load_extension(build_if_missing: bool = False) -> bool:
    """Load the cached kernel into ``torch.ops.meditok_fused`` (compiles only if asked or
    ``MEDITOK_FUSED_SEARCH=build``). Returns whether it is usable; never raises."""
    if _state["tried"] and (_state["ok"] or not build_if_missing):
        return _state["ok"]
    _state["tried"] = True
    if os.environ.get("MEDITOK_FUSED_SEARCH", "1") == "0":
        _state["error"] = "disabled by MEDITOK_FUSED_SEARCH=0"
        return False
    try:
        path = library_path()
        if path is None and (build_if_missing or os.environ.get("MEDITOK_FUSED_SEARCH") == "build"):
            path = build()
        if path is None:
            _state["error"] = "not built; run: python -m meditok.tokenizer.kernels build"
            return False
        if not hasattr(_ops(), "nearest_codes_status"):
            torch.ops.load_library(str(path))
        _ops().isa()  # smoke call: the library really registered its ops
        _state.update(ok=True, path=path, error=None)
    except Exception as e:  # noqa: BLE001 - any failure means: use the reference
        text = str(e).strip().splitlines()
        _state.update(ok=False, error=f"{type(e).__name__}: {text[0] if text else ''}")
    return _state["ok"]


def extension_available() -> bool:
    """Whether the fused kernel is loaded (loads it from the cache on first call)."""
    return load_extension()


def status() -> dict:
    """What the search uses in this process (for ``meditok info`` and benchmark records)."""
    ok = load_extension()
    return {"fused_kernel": ok, "path": str(_state["path"]) if ok else None,
            "isa": _ops().isa() if ok else None, "reason": None if ok else _state["error"]}


def _warn_once() -> None:
    if not _state["warned"]:
        _state["warned"] = True
        # warn_explicit with a pseudo file name: one line, no source line echoed under it
        warnings.warn_explicit(f"fused nearest-code search unavailable ({_state['error']}); "
                               "using the slower torch reference (same tokens)",
                               RuntimeWarning, "meditok", 0)


# --------------------------------------------------------------------------- exactness guards
def _reference_not_fp32_fma(f: torch.Tensor, books: torch.Tensor) -> bool:
    """Cases where the reference's bmm is NOT the sequential fp32 FMA chain, so the kernel
    would not be bit-identical and the reference is used instead:

    * ``d * V < 400``: ATen's bmm takes a naive loop (mul then add, no FMA) when
      ``d * rows * V < 400``; a chunk of one row can hit it whenever ``d * V < 400``;
    * reduced-precision fp32 matmuls requested globally (``set_float32_matmul_precision
      ('medium')`` or oneDNN's ``fp32_precision`` = bf16/tf32): bmm then runs in oneDNN bf16
      and its tokens change; mirrored, whatever it costs.
    """
    if f.shape[2] * books.shape[1] < 400:
        return True
    try:
        if torch.get_float32_matmul_precision() != "highest":
            return True
    except RuntimeError:  # legacy and new precision APIs mixed: the per-backend flags decide
        pass
    mk = getattr(torch.backends, "mkldnn", None)
    for obj in (getattr(mk, "matmul", None), mk, torch.backends):
        if getattr(obj, "fp32_precision", "none") in ("bf16", "tf32"):
            return True
    return False


def bmm_is_sequential_fma(rows: int, d: int, v: int, k: int = 8) -> bool:
    """Does this process's ``torch.bmm`` compute a ``[k, rows, d] @ [k, d, v]`` fp32 product
    as the sequential FMA chain (the kernel's arithmetic)? Checked bit for bit once per shape
    and thread count on random unit vectors (about the cost of one reference chunk), cached.

    A probe instead of a table because the order is the BLAS's choice. Measured with MKL
    2024.2 (d = 8, V = 4096): its AVX-512 path is sequential for every row count except 1
    (gemv); its AVX2 path (what MKL runs on AMD CPUs) is not for some row counts (1, 2, 8,
    37, ...) and, with 2 threads and k = 1, for none; paths without FMA never are.
    """
    if os.environ.get("MEDITOK_FUSED_SEARCH") == "trust":
        return True
    key = (rows, d, v, k, torch.get_num_threads())
    verdict = _verdicts.get(key)
    if verdict is None:
        g = torch.Generator().manual_seed(12345)
        fp = torch.nn.functional.normalize(torch.randn(k, rows, d, generator=g), dim=-1)
        bp = torch.nn.functional.normalize(torch.randn(k, v, d, generator=g), dim=-1)
        with torch.no_grad():
            scores = torch.bmm(fp, bp.transpose(1, 2))
            verdict = _ops().scores_mismatch(fp, bp, scores) == 0
        _verdicts[key] = verdict
    return verdict


def _exporting() -> bool:
    # Traced / exported graphs must contain plain torch ops (portable, no .so needed).
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    onnx = getattr(torch, "onnx", None)
    if onnx is not None and getattr(onnx, "is_in_onnx_export", lambda: False)():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_exporting", lambda: False)())


# --------------------------------------------------------------------------- public entry
@torch.compiler.disable  # under torch.compile the search runs eagerly between compiled parts
def nearest_codes(f: torch.Tensor, books: torch.Tensor, rows: int = LOOKUP_ROWS) -> torch.Tensor:
    """Index of the highest-scoring code per row: f ``[K, N, d]``, books ``[K, V, d]`` →
    ``[K, N]`` int64, identical to :func:`reference_nearest_codes` with chunks of ``rows``
    (ties: smallest index)."""
    f = f.detach()
    books = books.detach()
    if _exporting() or not (f.device.type == "cpu" and books.device.type == "cpu"
                            and f.dtype == torch.float32 and books.dtype == torch.float32
                            and f.dim() == 3 and books.dim() == 3
                            and f.shape[0] > 0 and f.shape[1] > 0):
        return reference_nearest_codes(f, books, rows)
    if _reference_not_fp32_fma(f, books):
        return reference_nearest_codes(f, books, rows)
    if not load_extension():
        if os.environ.get("MEDITOK_FUSED_SEARCH", "1") != "0":
            _warn_once()
        return reference_nearest_codes(f, books, rows)
    k, n, d, v = f.shape[0], f.shape[1], f.shape[2], books.shape[1]
    full = (n // rows) * rows  # rows the reference scores in full chunks
    last = n - full  # rows of its final, shorter chunk
    if full and not bmm_is_sequential_fma(rows, d, v, k):
        return reference_nearest_codes(f, books, rows)
    idx, code = _ops().nearest_codes_status(f, books)
    if code != 0:  # non-finite / overflow-prone input: the reference has torch's NaN semantics
        return reference_nearest_codes(f, books, rows)
    if last and not bmm_is_sequential_fma(last, d, v, k):
        # the reference's last chunk goes through another BLAS kernel (e.g. gemv for 1 row):
        # redo just those rows its way (fewer than ``rows`` rows, cheap)
        idx[:, full:] = reference_nearest_codes(f[:, full:], books, rows)
    return idx
