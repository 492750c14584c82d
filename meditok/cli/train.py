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
    from meditok.engine.launch import run_training
    from meditok.tokenizer.train import TrainConfig, train

    return run_training(args, TrainConfig, train, "meditok train", lambda cfg: cfg.output_dir)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``train`` verb to a top-level ``meditok`` parser."""
    p = subparsers.add_parser(
        "train", help="train or resume a MedITok tokenizer (stage 1 / stage 2)",
        description="Train MedITok from a YAML config; dotted overrides such as "
                    "--optim.lr 1e-4 --data.manifest corpus/manifest.csv follow the config path. "
                    "Resumes automatically from the newest checkpoint in output_dir.")
    from meditok.engine.launch import add_train_arguments

    add_train_arguments(p)
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
