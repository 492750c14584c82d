"""The ``input | reconstruction | |error|`` panels written by ``reconstruct`` (display only)."""
from __future__ import annotations

import numpy as np
import torch

from meditok.data.preprocess import uint8_hwc
from meditok.tokenizer.resolution import display

#: A small fixed colour ramp (black → purple → orange → yellow) keeps matplotlib optional.
_STOPS = np.array([[0, 0, 4], [120, 28, 109], [237, 105, 37], [252, 255, 164]], np.float32)


def heat(err: np.ndarray) -> np.ndarray:
    """``H x W`` error in ``[0, 1]`` (1 == half the ``[-1, 1]`` range) → ``H x W x 3`` uint8."""
    err = np.clip(err, 0.0, 1.0)
    pos = err * (len(_STOPS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_STOPS) - 2)
    frac = (pos - lo)[..., None]
    return (_STOPS[lo] * (1 - frac) + _STOPS[lo + 1] * frac).astype(np.uint8)


def error_map(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Absolute error (mean over channels) of two ``[C, H, W]`` model-range images as a heat
    map, ``H x W x 3`` uint8."""
    return heat((a - b).abs().mean(0).clamp(0, 1).cpu().numpy())


def image_panel(inp: torch.Tensor, out: torch.Tensor) -> np.ndarray:
    """Panel of two ``[3, H, W]`` model-range images, enlarged for viewing when small."""
    return display(np.concatenate([uint8_hwc(inp), uint8_hwc(out), error_map(inp, out)], axis=1))


def unit_panel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Panel of two grey ``H x W`` slices in ``[0, 1]`` (volumes), enlarged when small."""
    def rgb(v: np.ndarray) -> np.ndarray:
        return np.repeat((np.clip(v, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)

    # |a - b| in [0, 1] units is twice that in the model's [-1, 1] range
    return display(np.concatenate([rgb(a), rgb(b), heat(np.abs(a - b) * 2.0)], axis=1))
