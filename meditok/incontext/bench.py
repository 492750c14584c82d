"""``meditok incontext eval``: every model, baseline and specialist on the same prompts, in the
layouts of the paper's Tables 2 (segmentation mIoU, + Dice) and 3 (MAE / PSNR / SSIM).

Always included: "copy the prompt label" (Ŷ = P_y) and, for restoration, the corrupted input
itself. Every in-context model is scored on exactly the same canvases (prompts are chosen once
per case and strategy). Specialists are given per evaluation set (``drive=DIR``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from meditok.errors import InvalidInputError
from meditok.incontext.baselines import CopyPrompt, Identity
from meditok.incontext.evaluate import (
    SegEvalSettings,
    evaluate_restoration,
    evaluate_segmentation,
    restoration_table,
    segmentation_table,
)
from meditok.incontext.infer import Embedder, as_method, cell_size, load_model
from meditok.incontext.sources import load_sources
from meditok.incontext.tokens import TokenMVG
from meditok.metrics.dense import DENSE_CONVENTIONS
from meditok.metrics.image import METRIC_CONVENTIONS
from meditok.utils.results import environment, write_results

SEGMENTATION_SETS = ("drive", "chase", "sam_ct", "brain_mr", "prostate_mr")
#: name → (source, task, level, prompt volumes). CT: photons per ray; MR: Rician sigma.
RESTORATION_SETS = {"ct_denoise": ("ct_slices", "denoising", 5e4, None),
                    "mr_denoise": ("mr_slices", "denoising", 0.03, ["brain1"]),
                    "ct_inpaint": ("ct_slices", "inpainting", 0.0, None),
                    "mr_inpaint": ("mr_slices", "inpainting", 0.0, ["brain1"])}


def run_evaluation(models: list[tuple[str, str]], out: str | Path, *, data_root: str = "../shared/data",
                   specialists: dict[str, str] | None = None, seg_sets: list[str] | None = None,
                   restorations: list[str] | None = None, strategies: list[str] | None = None,
                   max_cases: int = 0, seed: int = 0, overwrite: bool = False, name: str = "incontext_eval",
                   stride: int | None = None) -> dict[str, Any]:
    """Evaluate ``models`` (``(label, checkpoint)``) and write ``{out}/{name}.json|md``."""
    out = Path(out)
    if (out / f"{name}.json").exists() and not overwrite:
        raise InvalidInputError(f"{out / name}.json exists; pass --overwrite to replace it")
    seg_sets = list(SEGMENTATION_SETS if seg_sets is None else seg_sets)
    restorations = list(RESTORATION_SETS if restorations is None else restorations)
    bad = [r for r in restorations if r not in RESTORATION_SETS] + [s for s in seg_sets if s not in SEGMENTATION_SETS]
    if bad:
        raise InvalidInputError(f"unknown evaluation sets {bad}")
    strategies = strategies or ["position"]
    specialists = specialists or {}
    t0 = time.time()
    loaded = [(label, load_model(spec)) for label, spec in models]
    spec_models = {k: load_model(v) for k, v in specialists.items()}
    cells = {cell_size(m) for _, m in loaded} | {cell_size(m) for m in spec_models.values()}
    if len(cells) != 1:
        raise InvalidInputError(f"models with different cell sizes {sorted(cells)} cannot share prompts")
    cell = cells.pop()
    need = {RESTORATION_SETS[r][0] for r in restorations} | set(seg_sets)
    sources = load_sources(data_root, sorted(need))
    embedder = Embedder() if "nearest" in strategies else None
    banks: dict = {}
    result: dict[str, Any] = {"models": dict(models), "specialists": specialists, "cell": cell,
                              "segmentation": [], "restoration": [], "conventions": {**DENSE_CONVENTIONS,
                                                                                    **METRIC_CONVENTIONS}}
    for s in seg_sets:
        for strat in strategies:
            methods = [as_method("copy prompt label", CopyPrompt(cell))]
            if s in spec_models:
                methods.append(as_method("U-Net specialist", spec_models[s]))
            for label, m in loaded:
                meth = as_method(label, m)
                if isinstance(m, TokenMVG):
                    meth.batch_size = 64
                methods.append(meth)
            r = evaluate_segmentation(methods, sources[s], cell,
                                      SegEvalSettings(strat, "random", stride, seed, max_cases), embedder, banks)
            result["segmentation"].append(r)
    for rname in restorations:
        src, task, level, cases = RESTORATION_SETS[rname]
        methods = [as_method("corrupted input", Identity(cell)), as_method("copy prompt label", CopyPrompt(cell))]
        if rname in spec_models:
            methods.append(as_method("U-Net specialist", spec_models[rname]))
        for label, m in loaded:
            if isinstance(m, TokenMVG):
                continue  # the token ceiling is below the identity for images (notes §5.2)
            methods += [as_method(f"{label} (AR)", m, "ar"), as_method(f"{label} (MIM)", m, "mim")]
        r = evaluate_restoration(methods, sources[src], task, cell, level, seed, cases)
        r["name"] = rname
        result["restoration"].append(r)
    result["wall_time_s"] = round(time.time() - t0, 1)
    result["environment"] = environment()
    md = [f"# In-context evaluation\n\nmodels: {dict(models)}; specialists: {specialists}; cell {cell} px; "
          f"wall time {result['wall_time_s']} s; load {result['environment'].get('load_average_1min')}\n"]
    for strat in strategies:
        rs = [r for r in result["segmentation"] if r["strategy"] == strat]
        if rs:
            md += [f"\n## Segmentation, prompts: {strat} — mIoU (Table 2 layout)\n", segmentation_table(rs, "miou"),
                   f"\n## Segmentation, prompts: {strat} — mean Dice\n", segmentation_table(rs, "mdice")]
    if result["restoration"]:
        md += ["\n## Other tasks (Table 3 layout), images in [0, 1] at 64 px\n", restoration_table(result["restoration"])]
        holes = [r for r in result["restoration"] if r["task"] == "inpainting"]
        for r in holes:
            md.append(f"\nInside the holes, {r['source']}: " + "; ".join(
                f"{n} MAE {v['hole_mae']:.4f} PSNR {v['hole_psnr']:.2f}" for n, v in r["methods"].items()) + "\n")
    write_results(out, name, result, "".join(md))
    return result
