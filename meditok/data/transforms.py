"""Training / evaluation transforms of App. C.1, pure torch, driven by a ``torch.Generator``.

Train: CT windowing augmentation (HU inputs only) → random resized crop (scale 0.9-1, aspect
3/4-4/3) to ``S`` → horizontal flip (p=.5) → vertical flip (p=.5) → rotation by +90° or -90°
(p=.5, both directions, unlike the official code whose -90° branch equals +90°) → grayscale
(p=.1). Without augmentation (``aug=None``: evaluation, or training with ``data.augment:
false``) the transform is the deterministic contract of :func:`meditok.data.preprocess.to_input`:
the fixed ``PreprocessConfig.ct_window`` and the configured resize policy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from meditok.data.preprocess import PreprocessConfig, resize_to_square, window

#: (name, (low, high) HU, probability) — the paper's five windows; probabilities sum to 1.
CT_WINDOWS: tuple[tuple[str, tuple[float, float], float], ...] = (
    ("full", (-1000.0, 2000.0), 0.20),
    ("common", (-1000.0, 1000.0), 0.30),
    ("soft_tissue", (-150.0, 250.0), 0.30),
    ("lung", (-1400.0, 200.0), 0.15),
    ("bone", (-500.0, 1300.0), 0.05),
)


@dataclass
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_rotate: float = 0.5
    p_grayscale: float = 0.1
    #: Probability of drawing a random window at all (the official code uses 0.5 and falls
    #: back to the common window; the paper describes always drawing: 1.0).
    p_ct_window: float = 1.0


def sample_ct_window(gen: torch.Generator | None = None) -> tuple[str, tuple[float, float]]:
    """Draw one of :data:`CT_WINDOWS` with the paper's probabilities."""
    probs = torch.tensor([p for *_, p in CT_WINDOWS])
    i = int(torch.multinomial(probs, 1, generator=gen))
    return CT_WINDOWS[i][0], CT_WINDOWS[i][1]


def _rand(gen: torch.Generator | None) -> float:
    return float(torch.rand((), generator=gen))


def random_resized_crop_box(h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
                            gen: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a crop covering ``scale`` of the area with aspect in ``ratio``."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * _rand(gen))
        aspect = math.exp(log_r[0] + (log_r[1] - log_r[0]) * _rand(gen))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            return top, left, ch, cw
    # fallback: centre crop with the closest allowed aspect
    aspect = min(max(w / h, ratio[0]), ratio[1])
    cw, ch = (w, int(round(w / aspect))) if w / h < aspect else (int(round(h * aspect)), h)
    cw, ch = min(cw, w), min(ch, h)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def train_transform(x: torch.Tensor, pre: PreprocessConfig, is_hu: bool = False,
                    aug: AugmentConfig | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
    """One image ``[C, H, W]`` (HU when ``is_hu``, else ``[-1, 1]``) → ``[3, S, S]``.

    ``aug=None`` gives the deterministic contract (``pre.ct_window``, ``pre.resize``), the
    same tensor :func:`meditok.data.preprocess.to_input` gives for that image.
    """
    size = pre.image_size
    if aug is None:
        x = window(x, *pre.ct_window) if is_hu else x
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return resize_to_square(x.float().contiguous(), size, pre.resize)
    if is_hu:
        win = sample_ct_window(gen)[1] if _rand(gen) < aug.p_ct_window else tuple(pre.ct_window)
        x = window(x, *win)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    _, h, w = x.shape
    top, left, ch, cw = random_resized_crop_box(h, w, aug.crop_scale, aug.crop_ratio, gen)
    x = x[:, top:top + ch, left:left + cw]
    x = F.interpolate(x[None].float(), size=(size, size), mode="bilinear", antialias=True,
                      align_corners=False)[0]
    if _rand(gen) < aug.p_hflip:
        x = x.flip(-1)
    if _rand(gen) < aug.p_vflip:
        x = x.flip(-2)
    if _rand(gen) < aug.p_rotate:
        k = 1 if _rand(gen) < 0.5 else -1  # +90° or -90°, both really happen
        x = torch.rot90(x, k, dims=(-2, -1))
    if _rand(gen) < aug.p_grayscale:
        grey = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]  # ITU-R 601 luma
        x = grey.expand(3, -1, -1)
    return x.clamp(-1.0, 1.0).contiguous()
