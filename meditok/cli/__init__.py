"""``meditok <verb>``: a thin command-line layer over the library.

Each area registers its own verbs (``meditok.cli.tokenizer``, ``.data``, ``.train``, ``.eval``);
errors raised on purpose (:class:`meditok.errors.MedITokError`) are printed as one line,
never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

AREAS = ("tokenizer", "data", "train", "eval")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every area that is installed registers its verbs)."""
    from meditok import __version__

    parser = argparse.ArgumentParser(prog="meditok", description="MedITok medical image tokenizer")
    parser.add_argument("--version", action="version", version=f"meditok {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for area in AREAS:
        try:
            module = importlib.import_module(f"meditok.cli.{area}")
        except ModuleNotFoundError as exc:  # an area whose module is absent is simply not offered
            if exc.name != f"meditok.cli.{area}":
                raise
            continue
        module.register(sub)
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
        return int(args.func(args) or 0)
    except (MedITokError, FileNotFoundError) as exc:
        print(f"meditok {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
