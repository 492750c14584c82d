"""Inference efficiency (paper App. D.6, Table S4): images/s and peak memory.

Measures ``model.reconstruct`` (tokenise + detokenise, the tokenizer's inference round trip)
at the paper's settings (batch 16 at 256², batch 8 at 512²) plus CPU-sized ones, on whatever
device runs it. Memory:

* CUDA: ``torch.cuda.max_memory_allocated`` during the timed calls (weights included), GB.
* CPU: the fused nearest-code search and the heap setting of the CPU fast path are used
  (``meditok.tokenizer.kernels``; both exact); ``fast_decoder=True`` adds the sub-pixel decoder
  convolutions (tokens unchanged, reconstruction within ~1e-5). The record names the threads,
  the load average and whether the fused search was active.
* CPU: the process's peak resident set size (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs`` before each setting) and its increase over the resident size just
  before the setting (activations and workspace), GB. Falls back to a 2 ms RSS sampler when the
  peak cannot be reset, and to ``resource.getrusage`` (never reset) elsewhere.
"""
from __future__ import annotations

import resource
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from meditok.utils.device import seed_everything
from meditok.utils.results import environment, markdown_table, write_results

PAPER_SETTINGS = ((16, 256), (8, 512))
CPU_SETTINGS = ((1, None), (4, None))  # None: the model's own input size
RESULT_NAME = "efficiency"
GB = 1024 ** 3


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class CpuPeakMemory:
    """Peak resident memory of this process over a ``with`` block, in bytes."""

    def __init__(self, sample_s: float = 0.002):
        self.sample_s = sample_s
        self.baseline = self.peak = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "CpuPeakMemory":
        rss = _status_kb("VmRSS")
        self.baseline = (rss or 0) * 1024
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM (reset via /proc/self/clear_refs)"
        except OSError:
            if rss is not None:
                self.method = "VmRSS sampled every 2 ms"
                self.peak = self.baseline
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
            else:
                self.method = "ru_maxrss (process lifetime peak, not reset)"
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, (_status_kb("VmRSS") or 0) * 1024)
            time.sleep(self.sample_s)

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        elif self.method.startswith("VmHWM"):
            self.peak = (_status_kb("VmHWM") or 0) * 1024
        else:
            scale = 1 if sys.platform == "darwin" else 1024
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure(model, batch_size: int, size: int, device: str | torch.device = "cpu",
            iters: int = 3, warmup: int = 1, amp: bool = False) -> dict[str, Any]:
    """Time ``model.reconstruct`` on a random batch; images/s and peak memory (GB)."""
    device = torch.device(device)
    row: dict[str, Any] = {"batch": batch_size, "resolution": size, "device": device.type}
    if size % model.config.model.downsample:
        return {**row, "status": f"not supported (not a multiple of "
                                 f"{model.config.model.downsample})"}
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(batch_size, 3, size, size, generator=gen) * 2 - 1).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    try:
        with autocast:
            for _ in range(warmup):
                model.reconstruct(x)
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                mem = nullcontext()
            else:
                mem = CpuPeakMemory()
            with mem:
                start = time.perf_counter()
                for _ in range(iters):
                    model.reconstruct(x)
                _sync(device)
                elapsed = time.perf_counter() - start
    except torch.cuda.OutOfMemoryError:
        return {**row, "status": "OOM"}
    row.update(status="ok", iters=iters, seconds_per_batch=elapsed / iters,
               fps=batch_size * iters / elapsed)
    if device.type == "cuda":
        row.update(memory_gb=torch.cuda.max_memory_allocated(device) / GB,
                   memory_kind="torch.cuda.max_memory_allocated")
    else:
        row.update(memory_gb=mem.peak / GB, memory_delta_gb=max(mem.peak - mem.baseline, 0) / GB,
                   memory_kind=f"peak RSS of the process ({mem.method})")
    return row


def parse_settings(text: str | None, native: int) -> list[tuple[int, int]]:
    """``"16x256,8x512,4"`` → ``[(16, 256), (8, 512), (4, native)]``; None → defaults."""
    if not text:
        out = list(PAPER_SETTINGS) + [(b, s or native) for b, s in CPU_SETTINGS]
    else:
        out = []
        for part in text.split(","):
            b, _, s = part.strip().partition("x")
            out.append((int(b), int(s) if s else native))
    return list(dict.fromkeys(out))


def run_efficiency(models: Sequence[tuple[str, Any]], *, settings: str | None = None,
                   device: str | torch.device = "cpu", iters: int = 3, warmup: int = 1,
                   amp: bool = False, out_dir: str | Path | None = None, seed: int = 0,
                   threads: int | None = None, progress: bool = True,
                   fast_decoder: bool = False) -> dict[str, Any]:
    """Measure each ``(label, model)`` at every setting; write ``efficiency.json/.md``."""
    seed_everything(seed)
    from meditok.tokenizer.kernels import cpu, fastpath, search

    cpu_settings = cpu.configure(threads) if torch.device(device).type == "cpu" else {}
    rows = []
    for label, model in models:
        if fast_decoder:
            fastpath.enable_fast_decoder(model)
        native = int(model.config.preprocess.image_size)
        todo = parse_settings(settings, native)
        for b, s in tqdm(todo, desc=f"efficiency {label}", unit="setting", disable=not progress):
            r = measure(model, b, s, device, iters, warmup, amp)
            rows.append({"model": label, "params_m": model.num_parameters() / 1e6, **r})
    result = {"rows": rows, "device": str(device), "amp_bf16": amp, "iters": iters,
              "warmup": warmup, "operation": "model.reconstruct (tokenize + detokenize)",
              "fast_decoder": fast_decoder, "cpu": {**cpu_settings, **cpu.describe()},
              "search": search.status(), "environment": environment()}
    if out_dir is not None:
        write_results(out_dir, RESULT_NAME, result, to_markdown(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    """Table S4 layout (memory GB and FPS per setting), one row per model."""
    settings = list(dict.fromkeys((r["batch"], r["resolution"]) for r in result["rows"]))
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    lookup = {(r["model"], r["batch"], r["resolution"]): r for r in result["rows"]}

    def cell(m: str, b: int, s: int, key: str) -> Any:
        r = lookup.get((m, b, s))
        if r is None:
            return None
        return r.get(key) if r["status"] == "ok" else r["status"]

    header = ["Model", "Params (M)"] + [f"Memory (B{b}, R{s})" for b, s in settings] \
        + [f"FPS (B{b}, R{s})" for b, s in settings]
    rows = []
    for m in models:
        params = next(r["params_m"] for r in result["rows"] if r["model"] == m)
        rows.append([m, params] + [cell(m, b, s, "memory_gb") for b, s in settings]
                    + [cell(m, b, s, "fps") for b, s in settings])
    env = result["environment"]
    kinds = sorted({r.get("memory_kind", "") for r in result["rows"] if r["status"] == "ok"})
    text = "# Inference efficiency (paper Table S4 layout)\n\n" + markdown_table(header, rows)
    text += (f"\n* operation: {result['operation']}; device {result['device']}"
             f"{' (bf16 autocast)' if result['amp_bf16'] else ' (fp32)'}; "
             f"{result['iters']} timed calls after {result['warmup']} warm-up\n"
             f"* memory (GB): {'; '.join(kinds)}\n"
             f"* CPU path: fused search {result.get('search', {}).get('fused_kernel')}, "
             f"sub-pixel decoder {result.get('fast_decoder', False)}, load average "
             f"{result.get('cpu', {}).get('load_avg_1_5_15')}\n"
             f"* torch {env['torch']}, {env['cpu_threads']} CPU threads"
             f"{', ' + env['cuda_device'] if 'cuda_device' in env else ''}\n")
    deltas = [r for r in result["rows"] if r.get("memory_delta_gb") is not None]
    if deltas:
        text += "* CPU memory increase over the pre-run RSS (GB): " + ", ".join(
            f"{r['model']} B{r['batch']} R{r['resolution']}: {r['memory_delta_gb']:.3f}"
            for r in deltas) + "\n"
    return text
