"""The runtime options every task-family verb shares (``--device``, ``--threads``, ``--quiet``),
written once so that they mean the same in ``meditok synth``, ``vqa`` and ``incontext``."""
from __future__ import annotations

import argparse


def add_runtime_arguments(p: argparse.ArgumentParser, device: bool = True, quiet: bool = True) -> None:
    """Add ``--device`` (CPU by default), ``--threads`` (0: the process default) and ``--quiet``."""
    if device:
        p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bar")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count when the verb was given ``--threads N`` (N > 0)."""
    n = getattr(args, "threads", 0)
    if n:
        import torch

        torch.set_num_threads(int(n))
