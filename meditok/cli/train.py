"""``meditok train CONFIG [--section.key value ...]``: run (or resume) a training job.

Examples::

    meditok tokenizer train configs/stage1_small.yaml --data.manifest corpus/manifest.csv
    meditok tokenizer train configs/stage2_small.yaml --model.init_from runs/stage1_small/ckpt-step00020000.pt
    torchrun --nproc_per_node 4 -m meditok.cli tokenizer train configs/stage1_large.yaml --device cuda

Any field of :class:`meditok.tokenizer.train.TrainConfig` can be overridden with its dotted name;
``--print-config`` shows the resolved configuration and exits.
"""
from __future__ import annotations

import argparse
import sys


def _train(args: argparse.Namespace) -> int:
    import yaml

    from meditok.tokenizer.train import TrainConfig, TrainingDiverged, train

    overrides = list(args.overrides or [])
    if "--print-config" in overrides:  # given after CONFIG it lands in the remainder
        overrides.remove("--print-config")
        args.print_config = True
    try:
        cfg = TrainConfig.load(args.config, overrides)
    except ValueError as exc:
        print(f"meditok train: error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    import contextlib
    import os

    from meditok.utils.lock import output_lock

    # One run per output_dir: a second launch on the same folder is refused (rank 0 holds the
    # lock for the whole run; the other ranks of a torchrun job write nothing there).
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        with output_lock(cfg.output_dir) if rank0 else contextlib.nullcontext():
            result = train(cfg)
    except TrainingDiverged as exc:
        print(f"meditok train: stopped: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"meditok train: error: {exc}", file=sys.stderr)
        return 2
    if result.get("final"):
        print(f"final model written to {result['final']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``train`` verb to a top-level ``meditok`` parser."""
    p = subparsers.add_parser(
        "train", help="train or resume a MedITok tokenizer (stage 1 / stage 2)",
        description="Train MedITok from a YAML config; dotted overrides such as "
                    "--optim.lr 1e-4 --data.manifest corpus/manifest.csv follow the config path. "
                    "Resumes automatically from the newest checkpoint in output_dir.")
    p.add_argument("config", help="training config YAML (see configs/)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (after overrides) and exit")
    p.add_argument("overrides", nargs=argparse.REMAINDER,
                   help="--section.key value pairs overriding the YAML")
    p.set_defaults(func=_train)
    return p


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m meditok.cli.train CONFIG ...``)."""
    parser = argparse.ArgumentParser(prog="meditok")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
