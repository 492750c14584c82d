"""At which resolution the batch verbs run the tokenizer: the resize policy, written once.

MedITok is fully convolutional/attentional over a grid of ``H/d x W/d`` positions (``d`` the
downsampling factor, 8 for ``meditok-small``), so it takes any size that is a multiple of
``d``, square or not. The verbs therefore do not squash every file to the checkpoint's training
size (64 px for ``meditok-small``, where a 1024² radiograph became an 8x8 grid). Instead:

* ``keep-aspect`` (default): the longer side becomes ``size`` (default :data:`DEFAULT_SIZE`),
  the shorter side follows the aspect ratio; both are rounded to the nearest multiple of ``d``
  (at least ``d``), so the aspect changes by at most ``d/2`` pixels per side.
* ``size = native``: the file's own resolution, rounded to multiples of ``d``.
* ``squash``: ``size x size``, aspect ignored (the official batch script; with the
  checkpoint's ``image_size`` it is exactly :func:`meditok.data.preprocess.to_input`).

Model inputs with a side above :data:`MAX_SIDE` are refused per file unless ``allow_large``
(a 2048² input takes ~16x the work of 512²). :data:`DEFAULT_SIZE` was chosen from
measurements of the shipped model on held-out images of five modalities
(``benchmarks/resolution.py``, results in ``benchmarks/results/resolution.md``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from meditok.data.preprocess import (PreprocessConfig, interpret, resize_to_square, scale_intensity,
                                     to_channels_first)
from meditok.data.readers import MedicalImage
from meditok.errors import ImageReadError

#: Longer side of the model input used by ``tokenize`` / ``reconstruct`` when ``--size`` is
#: not given (see ``benchmarks/results/resolution.md`` for the measurements behind it).
DEFAULT_SIZE = 256
#: Model inputs larger than this (pixels per side) need ``allow_large`` / ``--allow-large``.
MAX_SIDE = 1024
RESIZE = ("keep-aspect", "squash")
#: Panels narrower than this are enlarged (nearest neighbour, display only; metrics are
#: computed at the model resolution).
PANEL_MIN_HEIGHT = 256


@dataclass(frozen=True)
class Resolution:
    """A resize policy: ``size`` (longer side; ``None`` = native), ``resize`` mode, limit."""

    size: int | None = DEFAULT_SIZE
    resize: str = "keep-aspect"
    multiple: int = 8
    max_side: int | None = MAX_SIDE

    @classmethod
    def parse(cls, size: int | str | None, resize: str, multiple: int,
              allow_large: bool = False) -> "Resolution":
        """From CLI values: ``size`` an int, ``"native"`` or ``None`` (the default size)."""
        if resize not in RESIZE:
            raise ValueError(f"--resize must be one of {RESIZE}, got {resize!r}")
        if size is None:
            value: int | None = DEFAULT_SIZE
        elif str(size).lower() == "native":
            if resize == "squash":
                raise ValueError("--size native keeps each file's own size; it cannot be squashed")
            value = None
        else:
            try:
                value = int(size)
            except ValueError:
                raise ValueError(f"--size must be a number of pixels or 'native', got {size!r}") from None
            if value < multiple:
                raise ValueError(f"--size {value} is below the model's downsampling factor {multiple}")
        limit = None if allow_large else MAX_SIDE
        if value is not None and limit is not None and value > limit:
            raise ValueError(f"--size {value} is above the {limit}-px limit; pass --allow-large "
                             "to run the model at that size")
        return cls(value, resize, multiple, limit)

    def target(self, h: int, w: int) -> tuple[int, int]:
        """Model input size ``(H, W)`` for a source of ``h x w`` pixels."""
        m = self.multiple

        def snap(v: float) -> int:
            return max(m, int(round(v / m)) * m)

        if self.resize == "squash":
            s = snap(self.size or max(h, w))
            return s, s
        if self.size is None:
            return snap(h), snap(w)
        scale = self.size / max(h, w)
        return snap(h * scale), snap(w * scale)

    def check(self, path: str, out_hw: tuple[int, int], src_hw: tuple[int, int]) -> None:
        if self.max_side is not None and max(out_hw) > self.max_side:
            raise ImageReadError(path, f"model input would be {out_hw[0]}x{out_hw[1]} px (source "
                                       f"{src_hw[0]}x{src_hw[1]}), above the {self.max_side}-px "
                                       "limit; pass --size N or --allow-large")


def resize_to(t: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """``[C, H, W]`` or ``[B, C, H, W]`` in ``[-1, 1]`` → ``out_hw`` (bilinear; antialiased
    when shrinking, as :func:`meditok.data.preprocess.resize_to_square`)."""
    batched = t.ndim == 4
    x = t if batched else t[None]
    if tuple(x.shape[-2:]) != tuple(out_hw):
        shrink = out_hw[0] < x.shape[-2] or out_hw[1] < x.shape[-1]
        x = F.interpolate(x, size=tuple(out_hw), mode="bilinear", antialias=shrink, align_corners=False)
    x = x.clamp(-1.0, 1.0).contiguous()
    return x if batched else x[0]


def apply(t: torch.Tensor, policy: Resolution, path: str = "<array>") -> torch.Tensor:
    """Resize a ``[C, h, w]`` (or ``[B, C, h, w]``) model-range tensor by the policy."""
    h, w = int(t.shape[-2]), int(t.shape[-1])
    out_hw = policy.target(h, w)
    policy.check(path, out_hw, (h, w))
    if policy.resize == "squash":
        return resize_to_square(t, out_hw[0], "squash")
    return resize_to(t, out_hw)


def model_input(img: MedicalImage, pre: PreprocessConfig, policy: Resolution,
                modality: str | None = None) -> torch.Tensor:
    """A file's image → float32 ``[3, H, W]`` in ``[-1, 1]`` at the policy's resolution, by the
    same intensity contract as :func:`meditok.data.preprocess.to_input`."""
    img = interpret(img, modality, pre)
    t = to_channels_first(scale_intensity(img, pre), img.path, pre.channel_policy)
    return apply(t, policy, img.path or "<array>")


def display(panel, min_height: int = PANEL_MIN_HEIGHT):
    """A ``H x W (x 3)`` uint8 panel enlarged by an integer factor (nearest neighbour) so it is
    at least ``min_height`` tall — for viewing only."""
    import numpy as np

    factor = max(1, -(-min_height // max(1, panel.shape[0])))
    if factor == 1:
        return panel
    return np.repeat(np.repeat(panel, factor, axis=0), factor, axis=1)


def describe(counts: Counter, downsample: int) -> str:
    """``"3 at 256x192 px (grid 32x24), 1 at 256x256 px (grid 32x32)"``."""
    parts = [f"{n} at {h}x{w} px (grid {h // downsample}x{w // downsample})"
             for (h, w), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return ", ".join(parts)
