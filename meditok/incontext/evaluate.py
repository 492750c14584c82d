"""Evaluation protocols (``meditok incontext eval``) and the paper's table layouts.

* **Segmentation** (Table 2 / 4 / 5 layout): every test image is tiled at its source's scale,
  each tile prompted (:mod:`meditok.incontext.infer`), predictions averaged, resized to the
  native size and decoded by the nearest prompt colour; IoU and Dice per foreground class per
  case (inside the fundus FOV), mIoU = mean over classes then cases
  (:mod:`meditok.metrics.dense`). Random colours are drawn per case (seeded); ``binary``
  models get one white pass per class.
* **Denoising / inpainting** (Table 3 layout): each test slice at 64 px, corrupted with a fixed
  seed (CT: projection-domain Poisson noise at ``i0`` photons; MR: Rician σ; inpainting: voided
  boxes), prompted by the training slice at the proportional position; MAE / PSNR / SSIM on
  ``[0, 1]`` (:mod:`meditok.metrics.image`), for inpainting also inside the holes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from meditok.incontext import colour as colouring
from meditok.incontext.degrade import ldct_noise, rician, void_boxes
from meditok.incontext.episodes import canvas, resize_image
from meditok.incontext.infer import (
    Embedder,
    Method,
    PromptBank,
    proportional_prompt,
    run_tiles,
    tile_query,
)
from meditok.incontext.sources import CT_WINDOW, Item, Source
from meditok.metrics.dense import SegmentationScore
from meditok.metrics.image import psnr, ssim
from meditok.utils.results import markdown_table


@dataclass
class SegEvalSettings:
    strategy: str = "position"
    scheme: str = "random"
    stride: int | None = None
    seed: int = 0
    max_cases: int = 0


def _case_colours(classes: list[str], scheme: str, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Colourings to run for one case: one random colouring, or one white pass per class."""
    if scheme == "binary":
        return [{c: colouring.WHITE.copy()} for c in classes]
    return [colouring.assign_colours(classes, "random", rng)]


def evaluate_segmentation(methods: list[Method], source: Source, cell: int, settings: SegEvalSettings,
                          embedder: Embedder | None = None, banks: dict | None = None) -> dict[str, Any]:
    """Score every method on ``source.test`` with one prompt strategy (same prompts for all)."""
    banks = {} if banks is None else banks
    key = (source.name, cell)
    if key not in banks:
        banks[key] = PromptBank.build(source.prompts or [], source.scale, cell)
    bank = banks[key]
    scores = {m.name: SegmentationScore() for m in methods}
    seconds = {m.name: 0.0 for m in methods}
    cases = source.test[: settings.max_cases or None]
    t_prompt = 0.0
    for ci, item in enumerate(cases):
        rng = np.random.default_rng([settings.seed, ci])
        classes = [c for c in source.classes if c in item.labels and item.labels[c].any()]
        if not classes:
            continue
        volumetric = item.n_slices > 1 and (source.prompts or [Item(item.image, "")])[0].n_slices > 1
        prompt_item = proportional_prompt(item, source.prompts, rng) if volumetric else \
            int(rng.integers(len(source.prompts)))
        gt = np.zeros(item.image.shape[:2], np.int64)
        for i, c in enumerate(classes):
            gt[item.labels[c]] = i + 1
        preds = {m.name: np.zeros_like(gt) for m in methods}
        for cols in _case_colours(classes, settings.scheme, rng):
            t = time.perf_counter()
            tq = tile_query(item.image, source.scale, cell, bank, cols, settings.strategy, prompt_item,
                            rng, embedder, settings.stride)
            t_prompt += time.perf_counter() - t
            for m in methods:
                t = time.perf_counter()
                rgb = run_tiles(m, tq, "segmentation")
                seconds[m.name] += time.perf_counter() - t
                dec = colouring.decode(rgb, {k: colouring.WHITE for k in cols} if m.white else cols)
                for j, c in enumerate(cols):
                    preds[m.name][dec == j + 1] = classes.index(c) + 1
        for m in methods:
            scores[m.name].add(preds[m.name], gt, list(range(1, len(classes) + 1)), item.region, item.case
                               + (f"_z{item.index}" if item.n_slices > 1 else ""))
    return {"source": source.name, "strategy": settings.strategy, "scheme": settings.scheme,
            "cases": len(cases), "prompt_seconds": round(t_prompt, 1),
            "methods": {n: {**s.summary(), "seconds": round(seconds[n], 1), "per_case": s.per_case}
                        for n, s in scores.items()}}


# ----------------------------------------------------------------------------- restoration
def _corrupt(task: str, item: Item, cell: int, level: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(corrupted, clean, hole) at ``cell`` px for one slice."""
    clean = resize_image(item.image, (cell, cell))
    if task == "inpainting":
        x, hole = void_boxes(clean, rng, body=clean.mean(-1) > 0.05)
        return x, clean, hole
    if item.hu is not None:
        hu = resize_image(item.hu[..., None], (cell, cell))[..., 0]
        noise = ldct_noise(hu, item.pixel_mm * max(item.hu.shape) / cell, level, rng)
        lo, hi = CT_WINDOW
        x = np.clip((hu + noise - lo) / (hi - lo), 0, 1).astype(np.float32)
        return np.repeat(x[..., None], 3, -1), clean, None
    return rician(clean, level, rng), clean, None


def evaluate_restoration(methods: list[Method], source: Source, task: str, cell: int, level: float = 0.0,
                         seed: int = 0, prompt_cases: list[str] | None = None,
                         modes: dict[str, str] | None = None) -> dict[str, Any]:
    """MAE / PSNR / SSIM of every method on ``source.test`` for ``denoising`` or ``inpainting``."""
    prompts = [p for p in source.train if not prompt_cases or p.case in prompt_cases]
    targets, holes, canv = [], [], []
    for i, item in enumerate(source.test):
        rng = np.random.default_rng([seed, i])
        x, y, hole = _corrupt(task, item, cell, level, rng)
        p_item = prompts[proportional_prompt(item, prompts, rng)]
        px, py, _ = _corrupt(task, p_item, cell, level, rng)
        canv.append(canvas(np.stack([px, py, x, np.zeros_like(y)])))
        targets.append(y)
        holes.append(hole)
    x_all = torch.stack(canv)
    tgt = torch.from_numpy(np.stack(targets)).permute(0, 3, 1, 2)
    out: dict[str, Any] = {"source": source.name, "task": task, "level": level, "cases": len(targets),
                           "methods": {}}
    for m in methods:
        t = time.perf_counter()
        pred = torch.cat([m.fn(x_all[j:j + m.batch_size], task) for j in range(0, len(x_all), m.batch_size)])
        sec = time.perf_counter() - t
        p = ((pred.float() + 1) / 2).clamp(0, 1)
        res = {"mae": float((p - tgt).abs().mean()), "psnr": float(psnr(p, tgt).mean()),
               "ssim": float(ssim(p, tgt).mean()), "seconds": round(sec, 1)}
        if task == "inpainting":
            hm = torch.from_numpy(np.stack(holes))[:, None].expand_as(p)
            err = (p - tgt)[hm]
            res["hole_mae"] = float(err.abs().mean())
            res["hole_psnr"] = float(10 * torch.log10(1.0 / (err ** 2).mean().clamp_min(1e-10)))
        out["methods"][m.name] = res
    return out


# ----------------------------------------------------------------------------- tables
def segmentation_table(results: list[dict[str, Any]], metric: str = "miou", methods: list[str] | None = None) -> str:
    """Paper Table 2 layout: one row per method, one column per dataset (value: ``metric``)."""
    cols = [r["source"] for r in results]
    names = methods or list(dict.fromkeys(n for r in results for n in r["methods"]))
    rows = []
    for n in names:
        vals = [r["methods"].get(n, {}).get(metric) for r in results]
        present = [v for v in vals if v is not None and not np.isnan(v)]
        rows.append([n, *vals, float(np.mean(present)) if present else None])
    return markdown_table(["Method", *cols, "mean"], rows, digits=3)


def restoration_table(results: list[dict[str, Any]], methods: list[str] | None = None) -> str:
    """Paper Table 3 layout: MAE / PSNR / SSIM per task column group (synthesis: no paired data)."""
    names = methods or list(dict.fromkeys(n for r in results for n in r["methods"]))
    header = ["Method", "Synthesis MAE / PSNR / SSIM"]
    for r in results:
        header.append(f"{r['task'].capitalize()} {r['source']} MAE / PSNR / SSIM")
    rows = []
    for n in names:
        row = [n, "n/a (no paired data)"]
        for r in results:
            v = r["methods"].get(n)
            row.append("–" if v is None else f"{v['mae']:.4f} / {v['psnr']:.2f} / {v['ssim']:.3f}")
        rows.append(row)
    return markdown_table(header, rows)
