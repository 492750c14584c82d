"""Linear-probe benchmark (paper §4.3, Table 2) → benchmarks/results/probe.*

Wraps ``meditok eval probe``: frozen tokenizer features (flattened quantised tokens by default)
on BreastMNIST and PneumoniaMNIST (official splits, 28 px upsampled to the model size) and ISIC
benign/malignant (seeded 60/20/20 split), with the raw-pixel probe and the published MedMNIST v2
ResNet-18 (28) AUCs in the same table.

    python benchmarks/linear_probe.py runs/stage2/final --features tokens,features,embed
    python benchmarks/linear_probe.py preset:small        # untrained reference point
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from meditok.tokenizer.hub import checkpoint_label, load_tokenizer as load_model
from meditok.metrics.probe import ProbeConfig
from meditok.tokenizer.bench.probe_bench import DATASETS, run_probe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default="preset:small")
    p.add_argument("--data-root", type=Path,
                   default=Path(os.environ.get("MEDITOK_SHARED_DATA", ROOT.parent / "shared" / "data")))
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--features", default="tokens")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--cache", type=Path, default=None, help="feature cache (default runs/probe_cache/...)")
    args = p.parse_args(argv)
    model = load_model(args.checkpoint, args.device)
    # Cached features are large and checkpoint-specific: keep them out of the results folder.
    cache = args.cache or ROOT / "runs" / "probe_cache" / checkpoint_label(args.checkpoint).replace(":", "-")
    run_probe(model, args.data_root, datasets=args.datasets.split(","),
              kinds=args.features.split(","), device=args.device, batch_size=args.batch_size,
              config=ProbeConfig(max_epochs=args.max_epochs, patience=args.patience),
              out_dir=args.out, label=checkpoint_label(args.checkpoint), seed=args.seed,
              cache_dir=cache)
    print((args.out / "probe.md").read_text(encoding="utf-8"))
    print(f"feature cache: {cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
