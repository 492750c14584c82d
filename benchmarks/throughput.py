"""Tokenizer throughput: images/s and peak memory for tokenize, detokenize and round trip.

Every (preset, resolution, batch, precision) cell runs in its own subprocess so that the peak
resident memory (``ru_maxrss``) belongs to that cell alone. Results go to
``benchmarks/results/throughput.{json,md}``.

    python benchmarks/throughput.py                       # small + tiny, CPU, fp32 and bf16
    python benchmarks/throughput.py --presets large --resolutions 256 --batches 1 5
    python benchmarks/throughput.py --device cuda         # on a GPU (bf16 autocast)

bf16 is the optional fast path: encoder/decoder under bf16 autocast, quantisation still in
fp32 (the model disables autocast there); the share of identical tokens vs fp32 is reported.
Weights are the bundled checkpoint for ``small`` when present, random otherwise (``large``
has no offline weights: its timings are architecture timings, its token agreement is measured
on random weights and says little about the released model).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _model(preset: str, image_size: int):
    import torch

    from meditok import MedITok
    from meditok.tokenizer.hub import bundled_checkpoint

    torch.manual_seed(0)
    if preset == "small":
        try:
            return MedITok.from_pretrained(bundled_checkpoint()), "bundled checkpoint"
        except Exception:  # noqa: BLE001 - fall back to random weights, reported in the row
            pass
    return MedITok.from_preset(preset, image_size=image_size).eval(), "random init"


def run_cell(preset: str, res: int, batch: int, precision: str, device: str, repeats: int) -> dict:
    """Time one cell in this process (called in a subprocess by :func:`main`)."""
    import torch

    from meditok.utils.device import autocast, resolve_device

    dev = resolve_device(device)
    model, weights = _model(preset, res)
    model = model.to(dev)
    x = (torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dev)
    ctx = lambda: autocast(dev, precision)  # noqa: E731

    def timed(fn) -> float:
        with ctx():
            fn()  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            with ctx():
                fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / repeats

    tokens = model.tokenize(x)
    row = {"preset": preset, "resolution": res, "batch": batch, "precision": precision,
           "device": str(dev), "weights": weights, "threads": torch.get_num_threads()}
    for name, fn in [("tokenize", lambda: model.tokenize(x)),
                     ("detokenize", lambda: model.detokenize(tokens)),
                     ("round_trip", lambda: model.reconstruct(x))]:
        sec = timed(fn)
        row[f"{name}_img_s"] = round(batch / sec, 2)
        row[f"{name}_s_per_img"] = round(sec / batch, 4)
    if precision != "fp32":
        with ctx():
            fast = model.tokenize(x)
        row["tokens_unchanged_vs_fp32"] = round(float((fast == tokens).float().mean()), 5)
    if dev.type == "cuda":
        row["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        row["peak_mem_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| preset | res | batch | precision | device | tokenize img/s | detokenize img/s | "
            "round trip img/s | round trip s/img | tokens = fp32 | peak MiB | weights |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['resolution']} | {r['batch']} | {r['precision']} | {r['device']} | "
            f"{r['tokenize_img_s']} | {r['detokenize_img_s']} | {r['round_trip_img_s']} | "
            f"{r['round_trip_s_per_img']} | {r.get('tokens_unchanged_vs_fp32', '—')} | "
            f"{r['peak_mem_mib']} | {r['weights']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["small", "tiny"])
    ap.add_argument("--resolutions", nargs="+", type=int, default=[128, 256])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "throughput"))
    ap.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell, print JSON
    args = ap.parse_args()
    if args.cell:
        import torch

        torch.set_num_threads(args.threads)
        preset, res, batch, precision = args.cell.split(",")
        print(json.dumps(run_cell(preset, int(res), int(batch), precision, args.device, args.repeats)))
        return
    rows = []
    for preset in args.presets:
        for res in args.resolutions:
            for batch in args.batches:
                for precision in args.precisions:
                    cmd = [sys.executable, __file__, "--cell", f"{preset},{res},{batch},{precision}",
                           "--device", args.device, "--threads", str(args.threads),
                           "--repeats", str(args.repeats)]
                    res_ = subprocess.run(cmd, capture_output=True, text=True)
                    if res_.returncode != 0:
                        print(f"cell {preset},{res},{batch},{precision} failed:\n{res_.stderr[-2000:]}")
                        continue
                    row = json.loads(res_.stdout.strip().splitlines()[-1])
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "threads": args.threads}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(f"Threads: {args.threads}, device: {args.device}\n\n" + markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
