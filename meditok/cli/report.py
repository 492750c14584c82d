"""``meditok report RUN_DIR ... --out report.html``: one self-contained page across families."""
from __future__ import annotations

import argparse
from pathlib import Path


def _report(args: argparse.Namespace) -> int:
    from meditok.report import build_report

    path = build_report(args.run_dirs, args.out, title=args.title)
    print(f"report: {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` verb."""
    rp = subparsers.add_parser("report", help="one self-contained HTML page from result dirs")
    rp.add_argument("run_dirs", nargs="+", type=Path)
    rp.add_argument("--out", type=Path, default=Path("report.html"))
    rp.add_argument("--title", default="MedITok evaluation report")
    rp.set_defaults(func=_report)
