"""GPU benchmark, ready to run on a CUDA machine (paper App. D.6 / Table S4 settings).

    python benchmarks/gpu_benchmark.py                      # large: B16 R256, B8 R512, B1 R256; ~10 min
    python benchmarks/gpu_benchmark.py --budget-s 300       # stop starting new cells after 5 min
    python benchmarks/gpu_benchmark.py --device cpu --preset tiny --quick   # smoke test of this script

For each setting (batch x resolution) of ``large`` (random weights: no offline release
weights; timings are architecture timings) it measures tokenize / detokenize / round trip
images per second and peak memory (``torch.cuda.max_memory_allocated``) in

* ``fp32`` and ``bf16`` (autocast; the quantiser stays fp32), each
* eager and ``torch.compile``-d (encoder and decoder compiled; the search is not),

the share of tokens equal to eager fp32, then a short training-throughput run (stage-1 full
recipe, bf16, gradient checkpointing) alternating the original and the one-backward
objective. Everything goes to ``benchmarks/results/gpu_benchmark.{json,md}`` with the GPU
name, torch / CUDA versions and this command line. Cells that would start after
``--budget-s`` are recorded as skipped, so the script fits a fixed device lease.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SETTINGS = ((16, 256), (8, 512), (1, 256))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gib(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 3) if dev.type == "cuda" else None


def build(preset: str, dev: torch.device, compiled: bool):
    from meditok import MedITok

    torch.manual_seed(0)
    model = MedITok.from_preset(preset).eval().requires_grad_(False).to(dev)
    if compiled:
        model.encoder = torch.compile(model.encoder)
        model.decoder = torch.compile(model.decoder)
    return model


def time_ops(model, x: torch.Tensor, precision: str, iters: int) -> dict:
    dev = x.device
    tokens = model.tokenize(x, precision)
    ops = {"tokenize": lambda: model.tokenize(x, precision),
           "detokenize": lambda: model.detokenize(tokens, precision),
           "round_trip": lambda: model.reconstruct(x, precision)}
    row: dict = {}
    for name, fn in ops.items():
        fn()  # warm-up (and compilation)
        _sync(dev)
        _peak_reset(dev)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(dev)
        sec = (time.perf_counter() - t0) / iters
        row[f"{name}_img_s"] = round(x.shape[0] / sec, 2)
        row[f"{name}_peak_GiB"] = _peak_gib(dev)
    return row, tokens


def inference(preset: str, dev: torch.device, settings, iters: int, deadline: float,
              compile_too: bool) -> list[dict]:
    rows = []
    variants = [(c, p) for c in ([False, True] if compile_too else [False]) for p in ("fp32", "bf16")]
    models = {}
    for batch, res in settings:
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(batch, 3, res, res, generator=g) * 2 - 1).to(dev)
        ref = None
        for compiled, precision in variants:
            row = {"preset": preset, "batch": batch, "resolution": res, "precision": precision,
                   "compiled": compiled}
            if time.time() > deadline:
                rows.append({**row, "status": "skipped (time budget)"})
                continue
            try:
                if compiled not in models:
                    models[compiled] = build(preset, dev, compiled)
                t0 = time.perf_counter()
                timing, tokens = time_ops(models[compiled], x, precision, iters)
                row.update(timing, status="ok", seconds=round(time.perf_counter() - t0, 1))
                if ref is None:
                    ref = tokens
                row["tokens_equal_eager_fp32"] = round(float((tokens == ref).float().mean()), 5)
            except torch.cuda.OutOfMemoryError:
                row["status"] = "OOM"
                _peak_reset(dev)
            except Exception as exc:  # noqa: BLE001 - record and go on (e.g. compile failure)
                row["status"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def training(preset: str, dev: torch.device, batch: int, steps: int, deadline: float) -> dict:
    """Alternate steps of the original and the one-backward objective on one trainer."""
    import tempfile

    from meditok.tokenizer.train import TrainConfig, Trainer

    if time.time() > deadline:
        return {"status": "skipped (time budget)"}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.from_dict({
            "model": {"preset": preset, "grad_checkpointing": dev.type == "cuda" and preset == "large"},
            "stage": 1, "device": dev.type, "precision": "bf16" if dev.type == "cuda" else "fp32",
            "data": {"batch_size": batch}, "steps": 2 * steps + 4, "output_dir": tmp,
            "tensorboard": False, "progress": False})
        trainer = Trainer(cfg)
        size = trainer.model.config.model.image_size
        g = torch.Generator().manual_seed(0)
        b = {"image": torch.rand(batch, 3, size, size, generator=g) * 2 - 1, "caption": ["an image"] * batch}
        times: dict[str, list[float]] = {"reference": [], "one_backward": []}
        for i in range(steps + 1):
            for mode in (times if i % 2 == 0 else reversed(list(times))):
                trainer.loss_fn.adaptive = mode
                _sync(dev)
                t0 = time.perf_counter()
                trainer.train_step([b])
                _sync(dev)
                if i > 0:  # step 0 of each: warm-up
                    times[mode].append(time.perf_counter() - t0)
            if time.time() > deadline:
                break
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items() if v}
        return {"status": "ok", "preset": preset, "batch": batch, "image_size": size,
                "precision": cfg.precision, "steps_each": len(times["reference"]),
                **{f"{k}_s_per_step": round(v, 3) for k, v in med.items()},
                **{f"{k}_img_s": round(batch / v, 2) for k, v in med.items()},
                "speedup": round(med["reference"] / med["one_backward"], 3) if len(med) == 2 else None,
                "peak_GiB": _peak_gib(dev)}


def markdown(result: dict) -> str:
    lines = [f"# GPU benchmark: {result['device_name']}", "",
             f"`{result['command']}` — torch {result['torch']}, CUDA {result['cuda']}, "
             f"{result['wall_s']} s in all.", "",
             "| preset | batch | res | precision | compiled | tokenize img/s | detokenize img/s | "
             "round trip img/s | round-trip peak GiB | tokens = eager fp32 | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["inference"]:
        lines.append(f"| {r['preset']} | {r['batch']} | {r['resolution']} | {r['precision']} | "
                     f"{r['compiled']} | {r.get('tokenize_img_s', '—')} | {r.get('detokenize_img_s', '—')} | "
                     f"{r.get('round_trip_img_s', '—')} | {r.get('round_trip_peak_GiB', '—')} | "
                     f"{r.get('tokens_equal_eager_fp32', '—')} | {r['status']} |")
    t = result["training"]
    lines += ["", "Training (stage-1 full recipe, alternating steps):", "", "```", json.dumps(t, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="large")
    ap.add_argument("--settings", default=None, help="e.g. 16x256,8x512 (default: Table S4 + B1 R256)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--budget-s", type=float, default=540.0, help="start no new cell after this")
    ap.add_argument("--quick", action="store_true", help="smoke test: one tiny setting, 1 iteration")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    from meditok.errors import MedITokError
    from meditok.utils.device import resolve_device

    try:
        dev = resolve_device(args.device)
    except MedITokError as exc:  # no CUDA here: one line, no traceback
        raise SystemExit(f"gpu_benchmark: {exc}") from None
    start = time.time()
    deadline = start + args.budget_s
    settings = SETTINGS
    if args.settings:
        settings = tuple(tuple(int(v) for v in s.split("x")) for s in args.settings.split(","))
    if args.quick:
        settings, args.iters, args.train_batch, args.train_steps = ((2, 32),), 1, 2, 1
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    rows = inference(args.preset, dev, settings, args.iters, deadline, not args.no_compile and not args.quick)
    train = training(args.preset, dev, args.train_batch, args.train_steps, deadline)
    result = {"device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
              "command": "python benchmarks/gpu_benchmark.py " + " ".join(sys.argv[1:]),
              "wall_s": round(time.time() - start, 1), "inference": rows, "training": train,
              "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_benchmark" if dev.type == "cuda" else "gpu_benchmark_smoke_cpu"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
