"""Differentiable augmentation of discriminator inputs (spec §2.3).

Every op is a plain torch op, so gradients reach the generator through the augmented fake
images. Random parameters are drawn per sample from an optional ``torch.Generator`` (on the
tensor's device), which makes tests and resumed runs reproducible.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(shape: tuple[int, ...], low: float, high: float, like: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)
    return (low + (high - low) * u).to(like.dtype)


def _apply_mask(x: torch.Tensor, y: torch.Tensor, prob: float,
                generator: torch.Generator | None) -> torch.Tensor:
    # Per-sample Bernoulli choice between the augmented and the original image.
    if prob >= 1.0:
        return y
    keep = torch.rand((x.shape[0], 1, 1, 1), generator=generator, device=x.device) < prob
    return torch.where(keep, y, x)


def translate(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer shift of each sample by up to ``±ratio`` of its size, zero-filled border."""
    b, _, h, w = x.shape
    ph, pw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if ph == 0 and pw == 0:
        return x
    dy = torch.randint(-ph, ph + 1, (b,), generator=generator, device=x.device)
    dx = torch.randint(-pw, pw + 1, (b,), generator=generator, device=x.device)
    padded = F.pad(x, [pw, pw, ph, ph])
    # Output pixel (i, j) reads input pixel (i - dy, j - dx), i.e. padded (i - dy + ph, ...).
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None] + ph      # [B, H]
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None] + pw      # [B, W]
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def adjust_color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness ``+U(-.5,.5)``, saturation ``×U(0,2)``, contrast ``×U(.5,1.5)`` per sample."""
    b = x.shape[0]
    x = x + _uniform((b, 1, 1, 1), -0.5, 0.5, x, generator)
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * _uniform((b, 1, 1, 1), 0.0, 2.0, x, generator) + mean_c
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean_all) * _uniform((b, 1, 1, 1), 0.5, 1.5, x, generator) + mean_all


def cutout(x: torch.Tensor, ratio: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a random ``ratio×ratio`` square per sample (it may extend past the border)."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if sh == 0 or sw == 0:
        return x
    # Square centres are uniform over the image, so partially visible squares occur.
    cy = torch.randint(0, h, (b,), generator=generator, device=x.device)
    cx = torch.randint(0, w, (b,), generator=generator, device=x.device)
    top, left = cy - sh // 2, cx - sw // 2
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_r = (rows >= top[:, None]) & (rows < (top + sh)[:, None])
    in_c = (cols >= left[:, None]) & (cols < (left + sw)[:, None])
    mask = ~(in_r[:, :, None] & in_c[:, None, :])
    return x * mask[:, None].to(x.dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur with kernel ``2^(-(t/σ)²)``, radius ``⌊3σ⌋``, reflect padding."""
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    radius = min(int(math.floor(3 * sigma)), h - 1, w - 1)
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp2(-(t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.pad(x, [radius, radius, radius, radius], mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blur_fade(step: int, disc_warmup_steps: int) -> float:
    """Warm-up blur strength: 1 at step 0, linearly to 0 over twice the disc warm-up."""
    span = 2 * disc_warmup_steps
    if span <= 0:
        return 0.0
    return float(max(0.0, 1.0 - step / span))


class DiffAug:
    """DiffAug for discriminator inputs: translation, colour, cutout, plus warm-up blur.

    Args:
        prob: per-sample probability of each augmentation (1.0 in the reference run).
        translation: max shift as a fraction of the image size (0.125).
        cutout: side of the cut-out square as a fraction of the image size (0.2).
        color: whether to apply the brightness/saturation/contrast jitter.
        blur: whether to apply the fading Gaussian blur (off for the BCR "strong" aug).
    """

    def __init__(self, prob: float = 1.0, translation: float = 0.125, cutout: float = 0.2,
                 color: bool = True, blur: bool = True):
        self.prob = prob
        self.translation = translation
        self.cutout = cutout
        self.color = color
        self.blur = blur

    def __call__(self, x: torch.Tensor, fade: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``x`` ``[B,C,H,W]``; ``fade`` in [0,1] scales the blur σ = √(H/2)·fade."""
        if self.blur and fade > 0:
            x = gaussian_blur(x, math.sqrt(x.shape[-2] / 2) * fade)
        if self.color:
            x = _apply_mask(x, adjust_color(x, generator), self.prob, generator)
        if self.translation > 0:
            x = _apply_mask(x, translate(x, self.translation, generator), self.prob, generator)
        if self.cutout > 0:
            x = _apply_mask(x, cutout(x, self.cutout, generator), self.prob, generator)
        return x

    def __repr__(self) -> str:
        return (f"DiffAug(prob={self.prob}, translation={self.translation}, cutout={self.cutout}, "
                f"color={self.color}, blur={self.blur})")
