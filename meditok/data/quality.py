"""2D quality control of App. A.2.2, applied to the proxy 8-bit (RGB or grey) image.

An image is rejected when (1) its intensity range is below 50, (2) its smallest side is
below 128 px, (3) its standard deviation is below 10, or (4) it has three or fewer unique
pixel values. (The paper's fifth, manual "relevance" screen is not automated.)

One rule beyond the paper, on by default (``reject_stripes``): an image whose rows are all
identical (or whose columns are) carries 1-D content only. 102 of the 550 ISIC archive files
we ship for tests are such vertical-stripe renderings, and the four paper rules keep them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meditok.data.readers import MedicalImage


@dataclass
class QCConfig:
    """Thresholds on the proxy 8-bit image (paper defaults)."""

    min_range: float = 50.0
    min_side: int = 128
    min_std: float = 10.0
    #: Reject images with this many unique values or fewer.
    max_unique: int = 3
    #: Beyond the paper: reject images whose rows (or columns) are all identical.
    reject_stripes: bool = True
    #: HU window used to build the 8-bit proxy of a CT image.
    ct_window: tuple[float, float] = (-1000.0, 2000.0)


#: MedMNIST images are 28x28 by construction, so the 128-px resolution floor would reject
#: the whole dataset; the other three rules stay as in the paper.
MEDMNIST_QC = QCConfig(min_side=28)


@dataclass
class QCResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def reason(self) -> str | None:
        """First failed rule (``low_range``, ``small``, ``low_std``, ``few_values``, ``stripes``) or None."""
        return self.reasons[0] if self.reasons else None


def proxy_uint8(img: MedicalImage, cfg: QCConfig | None = None) -> np.ndarray:
    """8-bit proxy: uint8 as is, HU through ``cfg.ct_window``, other kinds min-max; alpha dropped."""
    cfg = cfg or QCConfig()
    a = img.array
    if a.ndim == 3 and a.shape[2] in (2, 4):
        a = a[..., :-1]
    if img.kind == "uint8":
        return np.clip(a, 0, 255).astype(np.uint8)
    if img.kind == "hu":
        lo, hi = cfg.ct_window
    else:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((np.clip(a, lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)


def count_unique_upto(proxy: np.ndarray, limit: int) -> int:
    """Number of distinct pixel values (colours for RGB), counted exactly up to ``limit + 1``."""
    if proxy.ndim == 3:
        p = proxy.astype(np.uint32)
        flat = (p[..., 0] << 16) | (p[..., 1] << 8) | p[..., 2] if p.shape[2] >= 3 else p[..., 0]
        flat = flat.reshape(-1)
    else:
        return int(np.count_nonzero(np.bincount(proxy.reshape(-1), minlength=256)))
    remaining = flat
    count = 0
    while remaining.size and count <= limit:  # peel off one value at a time: O(N * limit)
        remaining = remaining[remaining != remaining[0]]
        count += 1
    return count


def check_quality(img: MedicalImage | np.ndarray, cfg: QCConfig | None = None) -> QCResult:
    """Apply the automatic rules; ``img`` may be a MedicalImage or an 8-bit array."""
    cfg = cfg or QCConfig()
    proxy = proxy_uint8(img, cfg) if isinstance(img, MedicalImage) else np.asarray(img, np.uint8)
    h, w = proxy.shape[:2]
    rng = float(int(proxy.max()) - int(proxy.min()))
    std = float(proxy.std())
    uniq = count_unique_upto(proxy, cfg.max_unique)
    stats = {"range": rng, "min_side": float(min(h, w)), "std": std, "unique": float(uniq)}
    reasons = []
    if rng < cfg.min_range:
        reasons.append("low_range")
    if min(h, w) < cfg.min_side:
        reasons.append("small")
    if std < cfg.min_std:
        reasons.append("low_std")
    if uniq <= cfg.max_unique:
        reasons.append("few_values")
    if cfg.reject_stripes and h > 1 and w > 1 and (
            not np.any(proxy[1:] != proxy[:-1]) or not np.any(proxy[:, 1:] != proxy[:, :-1])):
        reasons.append("stripes")
    return QCResult(not reasons, reasons, stats)
