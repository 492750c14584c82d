"""MR denoising PSNR of an in-context model against the Rician noise level (issue 12 diagnostic).

    python benchmarks/incontext_noise_sweep.py --data ../shared/data --specialist runs/incontext/unet_denoise/final

The evaluation protocol of ``meditok incontext eval`` (64-px slices of the held-out MR volume, prompts at
the proportional slice, fixed seed) at several noise levels: it shows whether a model's output error follows
the input's noise or sits at a floor of its own. Writes ``results/incontext/noise_sweep.{json,md}``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from meditok.incontext.baselines import Identity
from meditok.incontext.bench import RESTORATION_SETS
from meditok.incontext.evaluate import evaluate_restoration
from meditok.incontext.infer import as_method, cell_size, load_model
from meditok.incontext.sources import load_sources
from meditok.utils.results import environment, markdown_table, write_results

OUT = Path(__file__).resolve().parent / "results" / "incontext"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--model", default="meditok-mvg-small")
    ap.add_argument("--specialist", default=None, help="a U-Net denoising specialist to compare")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.02, 0.03, 0.05, 0.08])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    src, task, default_sigma, cases = RESTORATION_SETS["mr_denoise"]
    model = load_model(a.model)
    cell = cell_size(model)
    named = [("corrupted input", Identity(cell), "ar"), ("MVG (AR)", model, "ar"), ("MVG (MIM)", model, "mim")]
    if a.specialist:
        named.append(("U-Net specialist", load_model(a.specialist), "ar"))
    source = load_sources(a.data, [src])[src]
    t0, rows, result = time.time(), [], {"model": a.model, "specialist": a.specialist, "levels": {}}
    for sigma in a.sigmas:
        methods = [as_method(n, m, mode) for n, m, mode in named]
        r = evaluate_restoration(methods, source, task, cell, sigma, 0, cases)
        psnr = {k: round(v["psnr"], 2) for k, v in r["methods"].items()}
        result["levels"][str(sigma)] = {"cases": r["cases"], "psnr": psnr}
        rows.append([sigma, r["cases"], *[psnr[n] for n, _, _ in named]])
    result["wall_time_s"] = round(time.time() - t0, 1)
    result["environment"] = environment()
    md = (f"# MR denoising PSNR (dB) vs Rician sigma\n\nmodel {a.model}; the evaluation's level is {default_sigma}; "
          f"{cell}-px slices, {rows[0][1]} cases; wall {result['wall_time_s']} s\n\n"
          + markdown_table(["sigma", "cases", *[n for n, _, _ in named]], rows) + "\n")
    write_results(a.out, "noise_sweep", result, md)
    print(md)


if __name__ == "__main__":
    main()
