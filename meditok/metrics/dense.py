"""Dense-prediction metrics: IoU (Jaccard) and Dice per class, mIoU / mean Dice, pooled sums.

Conventions (written next to every number in the result files, see :data:`DENSE_CONVENTIONS`):

* A label map is an integer array (0 = background, 1 … K = classes) or a boolean mask
  (one class). ``region`` (optional boolean mask, e.g. a fundus field of view) restricts every
  count to the pixels inside it.
* Per case (one image, or one volume counted in 3-D): for each foreground class present in the
  ground truth **or** the prediction, ``IoU = |P∩G| / |P∪G|`` and ``Dice = 2|P∩G| / (|P|+|G|)``.
  A class absent from both is skipped (undefined, not 1). Background is excluded.
* ``mIoU`` / ``mDice`` of a case = mean over its classes; of a dataset = mean over cases.
  The *pooled* variants sum intersections and unions over all cases first (what vessel papers
  often report); both are given.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

DENSE_CONVENTIONS = {
    "iou": "per case and foreground class |P∩G|/|P∪G| (classes absent from both skipped, background "
           "excluded), mean over classes, then mean over cases (mIoU)",
    "dice": "per case and foreground class 2|P∩G|/(|P|+|G|), averaged like IoU",
    "pooled": "intersections/unions summed over all cases before dividing",
}


def _as_array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_counts(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
                     classes: Sequence[int] | None = None,
                     region: np.ndarray | torch.Tensor | None = None) -> dict[int, tuple[int, int, int]]:
    """``{class: (|P∩G|, |P|, |G|)}`` for each foreground class (default: every non-zero value
    in either map). Boolean maps are one class, ``1``."""
    p, g = _as_array(pred), _as_array(target)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} != target shape {g.shape}")
    if p.dtype == bool:
        p = p.astype(np.int64)
    if g.dtype == bool:
        g = g.astype(np.int64)
    if region is not None:
        r = _as_array(region).astype(bool)
        if r.shape != g.shape:
            raise ValueError(f"region shape {r.shape} != target shape {g.shape}")
        p, g = p[r], g[r]
    if classes is None:
        classes = sorted(int(c) for c in np.union1d(np.unique(p), np.unique(g)) if c != 0)
    out = {}
    for c in classes:
        pc, gc = p == c, g == c
        out[int(c)] = (int(np.count_nonzero(pc & gc)), int(np.count_nonzero(pc)), int(np.count_nonzero(gc)))
    return out


def iou_dice(inter: int, n_pred: int, n_true: int) -> tuple[float, float]:
    """IoU and Dice from counts (``nan`` when the class is absent from both)."""
    union = n_pred + n_true - inter
    if union == 0:
        return float("nan"), float("nan")
    return inter / union, 2 * inter / (n_pred + n_true)


@dataclass
class SegmentationScore:
    """Accumulates cases; :meth:`summary` gives mIoU / mDice (mean over cases) and pooled values."""

    per_case: list[dict[str, float]] = field(default_factory=list)
    pooled: dict[int, list[int]] = field(default_factory=dict)

    def add(self, pred, target, classes: Sequence[int] | None = None, region=None, case: str = "") -> dict[str, float]:
        """Score one case; returns ``{"case", "iou", "dice", "iou_<c>", "dice_<c>" …}``."""
        counts = confusion_counts(pred, target, classes, region)
        row: dict = {"case": case}
        ious, dices = [], []
        for c, (i, npred, ntrue) in counts.items():
            acc = self.pooled.setdefault(c, [0, 0, 0])
            acc[0] += i
            acc[1] += npred
            acc[2] += ntrue
            iou, dice = iou_dice(i, npred, ntrue)
            row[f"iou_{c}"], row[f"dice_{c}"] = iou, dice
            if not np.isnan(iou):
                ious.append(iou)
                dices.append(dice)
        row["iou"] = float(np.mean(ious)) if ious else float("nan")
        row["dice"] = float(np.mean(dices)) if dices else float("nan")
        self.per_case.append(row)
        return row

    def summary(self) -> dict[str, float]:
        """``miou``, ``mdice`` (mean over cases of the per-case class means), ``pooled_iou``,
        ``pooled_dice`` (per class pooled, mean over classes) and ``cases``."""
        vals = [r["iou"] for r in self.per_case if not np.isnan(r["iou"])]
        dvals = [r["dice"] for r in self.per_case if not np.isnan(r["dice"])]
        pi, pd = [], []
        for i, npred, ntrue in self.pooled.values():
            a, b = iou_dice(i, npred, ntrue)
            if not np.isnan(a):
                pi.append(a)
                pd.append(b)
        nan = float("nan")
        return {"miou": float(np.mean(vals)) if vals else nan, "mdice": float(np.mean(dvals)) if dvals else nan,
                "pooled_iou": float(np.mean(pi)) if pi else nan, "pooled_dice": float(np.mean(pd)) if pd else nan,
                "cases": len(self.per_case)}


def mean_iou(preds: Iterable, targets: Iterable, regions: Iterable | None = None) -> float:
    """mIoU over cases (see the module conventions)."""
    score = SegmentationScore()
    regions = list(regions) if regions is not None else None
    for k, (p, g) in enumerate(zip(preds, targets)):
        score.add(p, g, region=None if regions is None else regions[k])
    return score.summary()["miou"]


def mean_dice(preds: Iterable, targets: Iterable, regions: Iterable | None = None) -> float:
    """Mean Dice over cases (see the module conventions)."""
    score = SegmentationScore()
    regions = list(regions) if regions is not None else None
    for k, (p, g) in enumerate(zip(preds, targets)):
        score.add(p, g, region=None if regions is None else regions[k])
    return score.summary()["mdice"]
