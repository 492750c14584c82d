"""Periodic validation during training: PSNR / SSIM, codebook usage and perplexity, and a
reconstruction grid image.

The metrics are the evaluation suite's own (:mod:`meditok.metrics`: PSNR/SSIM on ``[0, 1]``
images, code usage over the whole validation set), so a validation number and an
``meditok eval`` number of the same checkpoint and images are the same number.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from meditok.data.preprocess import to_unit, uint8_hwc
from meditok.metrics.codebook import CodeUsage
from meditok.metrics.image import psnr, ssim
from meditok.utils.io import atomic_path


def save_grid(inputs: torch.Tensor, recons: torch.Tensor, path: str | Path, max_images: int = 8) -> Path:
    """PNG with the inputs on the top row and their reconstructions below."""
    n = min(max_images, inputs.shape[0])
    tiles = [torch.cat(list(r[:n].float()), dim=-1) for r in (inputs, recons)]  # [3, H, n*W]
    arr = uint8_hwc(torch.cat(tiles, dim=-2))
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
    return path


@torch.no_grad()
def run_validation(model: torch.nn.Module, batches: list[dict[str, Any]], device: torch.device,
                   autocast: Any, grid_path: str | Path | None = None) -> dict[str, Any]:
    """Reconstruct every validation batch; return mean PSNR/SSIM and code statistics."""
    cfg = model.config.model
    stats = CodeUsage(cfg.num_codebooks, cfg.codebook_size)
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
            psnrs.append(psnr(to_unit(rec), to_unit(x)).cpu())
            ssims.append(ssim(to_unit(rec), to_unit(x)).cpu())
            if first is None:
                first = (x.cpu(), rec.float().cpu())
    finally:
        model.train(was_training)
    if first is not None and grid_path is not None:
        save_grid(first[0], first[1], grid_path)
    summary = stats.summary()
    p, s = torch.cat(psnrs), torch.cat(ssims)
    return {"val_psnr": float(p.mean()), "val_ssim": float(s.mean()), "val_images": int(p.numel()),
            "val_usage": summary["usage_percent"], "val_usage_mean": summary["mean_usage_percent"],
            "val_perplexity": summary["perplexity"],
            "val_perplexity_mean": summary["mean_perplexity"],
            "val_perplexity_max": float(cfg.codebook_size),
            "val_bits_per_code": summary["bits_per_code"]}
