"""IoU / Dice (meditok.metrics.dense) on hand-made masks with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from meditok.metrics.dense import (
    SegmentationScore,
    confusion_counts,
    iou_dice,
    mean_dice,
    mean_iou,
)


def _box(y0, y1, x0, x1, shape=(10, 10)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_binary_masks_known_values():
    g = _box(0, 4, 0, 4)          # 16 px
    p = _box(2, 6, 0, 4)          # 16 px, 8 overlap
    assert confusion_counts(p, g) == {1: (8, 16, 16)}
    iou, dice = iou_dice(8, 16, 16)
    assert iou == pytest.approx(8 / 24) and dice == pytest.approx(0.5)
    assert mean_iou([p], [g]) == pytest.approx(1 / 3)
    assert mean_dice([p], [g]) == pytest.approx(0.5)
    assert mean_iou([g], [g]) == 1.0
    assert mean_iou([~g], [g]) == 0.0
    # torch tensors are accepted too
    assert mean_iou([torch.from_numpy(p)], [torch.from_numpy(g)]) == pytest.approx(1 / 3)


def test_region_restricts_the_counts():
    g = _box(0, 4, 0, 4)
    p = _box(0, 4, 0, 8)                       # 16 false positives at x 4..7
    region = _box(0, 10, 0, 5)                 # only x < 5 counts: 4 false positives left
    assert confusion_counts(p, g, region=region) == {1: (16, 20, 16)}
    assert mean_iou([p], [g], [region]) == pytest.approx(16 / 20)


def test_multiclass_mean_over_classes_then_cases_and_pooled():
    g = np.zeros((10, 10), np.int64)
    g[:5] = 1
    g[5:] = 2
    p = g.copy()
    p[5:, :5] = 1                               # half of class 2 predicted as class 1
    s = SegmentationScore()
    row = s.add(p, g, [1, 2])
    assert row["iou_1"] == pytest.approx(50 / 75)
    assert row["iou_2"] == pytest.approx(25 / 50)
    assert row["iou"] == pytest.approx((50 / 75 + 25 / 50) / 2)
    assert row["dice_2"] == pytest.approx(2 * 25 / 75)
    s.add(g, g, [1, 2])                         # a perfect second case
    summ = s.summary()
    assert summ["cases"] == 2
    assert summ["miou"] == pytest.approx(((50 / 75 + 25 / 50) / 2 + 1.0) / 2)
    # pooled: class 1 (100 ∩, 125 ∪), class 2 (75 ∩, 100 ∪)
    assert summ["pooled_iou"] == pytest.approx((100 / 125 + 75 / 100) / 2)


def test_classes_absent_from_both_are_skipped_not_perfect():
    g = np.zeros((6, 6), np.int64)
    g[:2, :2] = 1
    row = SegmentationScore().add(g, g, [1, 2])
    assert np.isnan(row["iou_2"]) and row["iou"] == 1.0
    empty = SegmentationScore()
    empty.add(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
    assert np.isnan(empty.summary()["miou"])
    with pytest.raises(ValueError, match="shape"):
        confusion_counts(np.zeros((3, 3)), np.zeros((4, 4)))
