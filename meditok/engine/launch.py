"""The ``train`` verb of every family, written once: ``CONFIG [--section.key value ...]``,
``--print-config``, one run per output folder, and one-line errors with stable exit codes
(2 = bad configuration, 3 = training diverged, 0 = done).

A family's CLI adds the arguments with :func:`add_train_arguments` and runs
:func:`run_training` with its config class and its ``train`` function.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any, Callable


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """CONFIG, ``--print-config`` and the dotted overrides that follow CONFIG."""
    p.add_argument("config", help="training config YAML (see configs/)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (after overrides) and exit")
    p.add_argument("overrides", nargs=argparse.REMAINDER,
                   help="--section.key value pairs overriding the YAML")


def run_training(args: argparse.Namespace, config_cls: type, train: Callable[[Any], dict],
                 prog: str, output_dir: Callable[[Any], str], done: str = "final model") -> int:
    """Load ``config_cls`` from ``args``, then ``train(cfg)`` under a lock on its output folder.

    ``output_dir(cfg)`` names the run folder: rank 0 of a torchrun job holds an exclusive lock on
    it for the whole run, so a second launch on the same folder is refused instead of two jobs
    writing (and resuming from) the same checkpoints.
    """
    import yaml

    from meditok.engine.loop import TrainingDiverged
    from meditok.utils.lock import output_lock

    overrides = list(args.overrides or [])
    if "--print-config" in overrides:  # given after CONFIG it lands in the remainder
        overrides.remove("--print-config")
        args.print_config = True
    try:
        cfg = config_cls.load(args.config, overrides)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        with output_lock(output_dir(cfg)) if rank0 else contextlib.nullcontext():
            result = train(cfg)
    except TrainingDiverged as exc:
        print(f"{prog}: stopped: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if result.get("final"):
        step = f" (step {result['step']})" if "step" in result else ""
        print(f"{done} written to {result['final']}{step}")
    return 0
