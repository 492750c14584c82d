"""Inference efficiency benchmark (paper App. D.6, Table S4) → benchmarks/results/efficiency.*

Wraps ``meditok eval efficiency``: images/s and peak memory of ``model.reconstruct`` at the
paper's settings (batch 16 at 256², batch 8 at 512²) and CPU-sized ones, on the chosen device.
Untrained presets are fine here: speed and memory depend on the architecture, not the weights.

    python benchmarks/efficiency.py                       # tiny + small presets on CPU
    python benchmarks/efficiency.py preset:large --device cuda --amp
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from meditok.tokenizer.hub import checkpoint_label, load_tokenizer as load_model
from meditok.tokenizer.bench.efficiency import run_efficiency


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="*", default=["preset:tiny", "preset:small"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--settings", default=None, help="e.g. 16x256,8x512,1,4 (default: paper + "
                                                    "batch 1 and 4 at the model's size)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    models = [(checkpoint_label(c), load_model(c, args.device)) for c in args.checkpoints]
    run_efficiency(models, settings=args.settings, device=args.device, iters=args.iters,
                   warmup=args.warmup, amp=args.amp, out_dir=args.out, threads=args.threads)
    print((args.out / "efficiency.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
