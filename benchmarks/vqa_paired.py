"""Paired significance of VQA-RAD closed-accuracy differences between evaluated systems.

Reads the ``<label>.predictions.jsonl`` files that ``meditok vqa eval`` writes next to its table
and runs the exact McNemar test (:func:`meditok.metrics.text.paired_closed_test`) for each pair:
by default every system against ``--baseline`` (the text-only LM trained and selected the same way,
the comparison VQA-RAD's strong language priors make the one that matters), plus the pairs given
with ``--pair A B``. Writes ``paired.{json,md}`` into the results folder.

    python benchmarks/vqa_paired.py --results benchmarks/results/vqa
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meditok.errors import InvalidInputError
from meditok.metrics.text import paired_closed_test
from meditok.utils.results import markdown_table, write_results
from meditok.vqa.bench import label_stem

DEFAULT_BASELINE = "text-only (no image), 8 epochs, val-selected epoch"


def load_predictions(results: Path, label: str) -> list[dict]:
    path = results / f"{label_stem(label)}.predictions.jsonl"
    if not path.exists():
        raise InvalidInputError(f"{path}: no predictions for label {label!r} (run meditok vqa eval first)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(results: Path, a: str, b: str, cache: dict[str, list[dict]] | None = None) -> dict:
    cache = {} if cache is None else cache
    for lab in (a, b):
        if lab not in cache:
            cache[lab] = load_predictions(results, lab)
    rows_a, rows_b = cache[a], cache[b]
    if [r["qid"] for r in rows_a] != [r["qid"] for r in rows_b]:
        raise InvalidInputError(f"{results}: {a!r} and {b!r} answered different questions or in another order")
    r = paired_closed_test(rows_a, [x["prediction"] for x in rows_a], [x["prediction"] for x in rows_b])
    return {"a": a, "b": b, **r}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "benchmarks/results/vqa"))
    ap.add_argument("--baseline", default=DEFAULT_BASELINE)
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"))
    args = ap.parse_args(argv)
    results = Path(args.results)
    table = json.loads((results / "vqa_rad.json").read_text())
    pairs = [(lab, args.baseline) for lab in table["order"] if lab != args.baseline] + [tuple(p) for p in args.pair]
    cache: dict[str, list[dict]] = {}  # the baseline is in every default pair: read it once
    out = [compare(results, a, b, cache) for a, b in pairs]
    md = ["# Paired closed-accuracy tests on VQA-RAD test (exact McNemar)", "",
          ("Same closed questions for both systems; A only / B only: questions one system answers right "
           "and the other wrong; difference in points of closed accuracy; two-sided exact binomial p."), "",
          markdown_table(["A", "B", "closed n", "A only", "B only", "A − B (points)", "p"],
                         [[r["a"], r["b"], r["closed_n"], r["a_only"], r["b_only"],
                           f"{r['difference_points']:+.2f}", f"{r['p_value']:.3f}"] for r in out]), ""]
    result = {"baseline": args.baseline, "pairs": out,
              "command": shlex.join(["python", "benchmarks/vqa_paired.py", *(argv if argv is not None else sys.argv[1:])])}
    write_results(results, "paired", result, "\n".join(md))
    return result


if __name__ == "__main__":
    main()
