"""``meditok <family> <verb>``: a thin command-line layer over the library.

Top level: the tokenizer's everyday verbs (``demo``, ``tokenize``, ``detokenize``,
``reconstruct``, ``info``, ``convert-official``), ``data`` (curation), ``report``, and one group
per family: ``tokenizer`` (``train``, ``eval``; also reachable as ``meditok train`` /
``meditok eval``), ``synth``, ``vqa``, ``incontext``. A family registers its verbs from its own
``cli`` module when it is installed. Errors raised on purpose
(:class:`meditok.errors.MedITokError`) are printed as one line, never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

#: (module, function) pairs that add verbs to the top-level parser, in help order.
REGISTRARS = (
    ("meditok.cli.tokenizer", "register"),
    ("meditok.cli.data", "register"),
    ("meditok.cli.export", "register"),
    ("meditok.cli.tokenizer", "register_family"),
    ("meditok.synthesis.cli", "register"),
    ("meditok.vqa.cli", "register"),
    ("meditok.incontext.cli", "register"),
    ("meditok.cli.train", "register"),   # alias: meditok train = meditok tokenizer train
    ("meditok.cli.eval", "register"),    # alias: meditok eval = meditok tokenizer eval
    ("meditok.cli.report", "register"),
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every family that is installed registers its verbs)."""
    from meditok import __version__

    parser = argparse.ArgumentParser(prog="meditok", description="MedITok medical image tokenizer")
    parser.add_argument("--version", action="version", version=f"meditok {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, func in REGISTRARS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a family whose package is absent is not offered
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            continue
        getattr(module, func)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meditok`` console script."""
    from meditok.errors import MedITokError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        from meditok.tokenizer.kernels.cpu import configure

        configure()  # threads from the cores really available (cgroup quota), exact heap setting
        return int(args.func(args) or 0)
    except (MedITokError, FileNotFoundError) as exc:
        print(f"meditok {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen input: one line, not a dump
        if os.environ.get("MEDITOK_DEBUG"):
            raise
        print(f"meditok {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(set MEDITOK_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 70


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
