"""Periodic validation during training: PSNR / SSIM, codebook usage and perplexity, and a
reconstruction grid image.

The metrics are small torch implementations on images mapped to ``[0, 1]``; the full
evaluation suite (rFID, probes) lives in ``meditok.eval`` and is not run inside training.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from meditok.utils.io import atomic_path


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of ``[B,C,H,W]`` images in ``[-1, 1]`` (data range 1 after mapping)."""
    a, b = (x.float().clamp(-1, 1) + 1) / 2, (y.float().clamp(-1, 1) + 1) / 2
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Gaussian window, valid region, channel mean) in ``[0, 1]`` space."""
    a, b = (x.float().clamp(-1, 1) + 1) / 2, (y.float().clamp(-1, 1) + 1) / 2
    c = a.shape[1]
    size = min(window, a.shape[-1], a.shape[-2])
    g = _gaussian_window(size, sigma).to(a.device)
    kh = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    kv = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=c), kv, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


class CodeStats:
    """Code counts per sub-codebook accumulated over a whole validation set."""

    def __init__(self, num_codebooks: int, codebook_size: int):
        self.counts = torch.zeros(num_codebooks, codebook_size, dtype=torch.float64)

    def update(self, indices: torch.Tensor) -> None:
        """``indices`` ``[B, K, h, w]``."""
        k = indices.shape[1]
        flat = indices.detach().cpu().transpose(0, 1).reshape(k, -1)
        for i in range(k):
            self.counts[i] += torch.bincount(flat[i], minlength=self.counts.shape[1]).double()

    def usage(self) -> list[float]:
        """Percent of codes used at least once, per sub-codebook."""
        return [float(v) for v in ((self.counts > 0).double().mean(1) * 100)]

    def perplexity(self) -> list[float]:
        """``exp(entropy)`` of the code distribution, per sub-codebook."""
        p = self.counts / self.counts.sum(1, keepdim=True).clamp_min(1)
        ent = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1)
        return [float(v) for v in ent.exp()]


def save_grid(inputs: torch.Tensor, recons: torch.Tensor, path: str | Path, max_images: int = 8) -> Path:
    """PNG with the inputs on the top row and their reconstructions below."""
    from PIL import Image

    n = min(max_images, inputs.shape[0])
    rows = [inputs[:n], recons[:n]]
    tiles = [torch.cat(list(r.float().clamp(-1, 1)), dim=-1) for r in rows]  # [3, H, n*W]
    grid = torch.cat(tiles, dim=-2)
    arr = ((grid + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
    return path


@torch.no_grad()
def run_validation(model: torch.nn.Module, batches: list[dict[str, Any]], device: torch.device,
                   autocast: Any, grid_path: str | Path | None = None) -> dict[str, Any]:
    """Reconstruct every validation batch; return mean PSNR/SSIM and code statistics."""
    cfg = model.config.model
    stats = CodeStats(cfg.num_codebooks, cfg.codebook_size)
    psnrs, ssims = [], []
    first = None
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            x = batch["image"].to(device)
            with autocast():
                tokens = model.tokenize(x)
                rec = model.detokenize(tokens)
            stats.update(tokens)
            psnrs.append(psnr(rec, x).cpu())
            ssims.append(ssim(rec, x).cpu())
            if first is None:
                first = (x.cpu(), rec.float().cpu())
    finally:
        model.train(was_training)
    if first is not None and grid_path is not None:
        save_grid(first[0], first[1], grid_path)
    usage, ppl = stats.usage(), stats.perplexity()
    p, s = torch.cat(psnrs), torch.cat(ssims)
    return {"val_psnr": float(p.mean()), "val_ssim": float(s.mean()), "val_images": int(p.numel()),
            "val_usage": usage, "val_usage_mean": float(np.mean(usage)),
            "val_perplexity": ppl, "val_perplexity_mean": float(np.mean(ppl)),
            "val_perplexity_max": float(cfg.codebook_size),
            "val_bits_per_code": float(np.mean([math.log2(max(v, 1.0)) for v in ppl]))}
