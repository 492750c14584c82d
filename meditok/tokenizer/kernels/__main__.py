"""``python -m meditok.tokenizer.kernels build|info``: compile / inspect the fused search kernel."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from meditok.tokenizer.kernels import cpu, search

    ap = argparse.ArgumentParser(prog="python -m meditok.tokenizer.kernels")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the fused nearest-code search into the cache")
    b.add_argument("--dest", default=None, help="directory (default: package _ext/, else user cache)")
    b.add_argument("--quiet", action="store_true")
    sub.add_parser("info", help="where the kernel is looked up, whether it loads, CPU settings")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        try:
            path = search.build(args.dest, verbose=not args.quiet)
        except Exception as e:  # noqa: BLE001 - never a traceback: the reference still works
            first = str(e).strip().splitlines()
            print(f"meditok: fused search kernel not built ({first[0] if first else type(e).__name__}); "
                  "the torch reference will be used (same tokens, slower)", file=sys.stderr)
            return 1
        print(path)
        return 0
    print("library name:", search.library_name())
    print("looked up in:", *map(str, search._cache_dirs()))
    for key, value in {**search.status(), **cpu.describe()}.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
