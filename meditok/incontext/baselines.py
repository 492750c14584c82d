"""Baselines trained on the same episodes: a small U-Net specialist per task (X → Y, the prompt
ignored) and the trivial in-context baseline "copy the prompt label" (Ŷ = P_y)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from meditok.data.preprocess import PreprocessConfig
from meditok.incontext.layers import conv_block
from meditok.incontext.model import (
    PROMPT_LABEL,
    QUERY_IMAGE,
    QUERY_LABEL,
    _mvg_preprocess,
)
from meditok.utils.config import Config, choose_preset
from meditok.utils.hub import PretrainedMixin


@dataclass
class UNetConfig(Config):
    """A plain U-Net: ``levels`` resolutions, ``base · 2^i`` channels."""

    cell: int = 64
    base: int = 16
    levels: int = 4
    in_channels: int = 3
    task: str = "segmentation"
    preprocess: PreprocessConfig = field(default_factory=_mvg_preprocess)
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.base < 1 or not 1 <= self.levels <= 6 or self.cell % (2 ** (self.levels - 1)):
            raise ValueError("unet: base >= 1, 1 <= levels <= 6, cell divisible by 2^(levels-1)")

    def estimated_parameters(self) -> int:
        return int(sum(18 * (self.base * 2 ** i) ** 2 * 2 for i in range(self.levels)))


def unet_preset(name: str, **overrides: Any) -> UNetConfig:
    presets = {"tiny": UNetConfig(cell=32, base=8, levels=3), "small": UNetConfig(base=16, levels=4),
               "base": UNetConfig(base=32, levels=4)}
    return choose_preset(presets, name, "U-Net", **overrides)


class UNet(PretrainedMixin, nn.Module):
    """Specialist: task image ``[B, 3, c, c]`` → task label ``[B, 3, c, c]`` in [-1, 1]."""

    config_class = UNetConfig
    model_type = "meditok-incontext-unet"

    def __init__(self, config: UNetConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        ch = [cfg.base * 2 ** i for i in range(cfg.levels)]
        # GroupNorm blocks as the generalist's stem; the input pixels also reach the last decoder
        # block (GroupNorm drops absolute intensity, which a denoised image must keep)
        self.down = nn.ModuleList([conv_block(cfg.in_channels, ch[0], True)] +
                                  [conv_block(ch[i - 1], ch[i], True) for i in range(1, cfg.levels)])
        self.up = nn.ModuleList(nn.ConvTranspose2d(ch[i], ch[i - 1], 2, 2) for i in range(cfg.levels - 1, 0, -1))
        self.dec = nn.ModuleList(conv_block(2 * ch[i - 1] + (cfg.in_channels if i == 1 else 0), ch[i - 1], True)
                                 for i in range(cfg.levels - 1, 0, -1))
        self.out = nn.Conv2d(ch[0], cfg.in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw, skips = x, []
        for i, d in enumerate(self.down):
            x = d(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(torch.cat([x, raw], 1) if i == 0 else x)
        for up, dec, s in zip(self.up, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), s], 1))
        return self.out(x)

    def loss(self, canvas: torch.Tensor, beta: float = 0.01) -> torch.Tensor:
        """Smooth-L1 (the generalist's loss, same ``beta``) of Y predicted from X on an episode canvas."""
        cells = _cells(canvas, self.config.cell)
        return F.smooth_l1_loss(self(cells[:, QUERY_IMAGE]), cells[:, QUERY_LABEL], beta=beta)

    @torch.no_grad()
    def predict(self, canvas: torch.Tensor, mode: str = "ar", task: str | None = None) -> torch.Tensor:
        """Y from X of an episode canvas (the prompt cells are ignored)."""
        return self(_cells(canvas, self.config.cell)[:, QUERY_IMAGE]).clamp(-1, 1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class CopyPrompt(nn.Module):
    """The trivial in-context baseline: the prediction is the prompt label."""

    def __init__(self, cell: int):
        super().__init__()
        self.cell = cell

    @torch.no_grad()
    def predict(self, canvas: torch.Tensor, mode: str = "ar", task: str | None = None) -> torch.Tensor:
        return _cells(canvas, self.cell)[:, PROMPT_LABEL].clone()


class Identity(nn.Module):
    """For image tasks: the corrupted input itself (the bar a restoration must clear)."""

    def __init__(self, cell: int):
        super().__init__()
        self.cell = cell

    @torch.no_grad()
    def predict(self, canvas: torch.Tensor, mode: str = "ar", task: str | None = None) -> torch.Tensor:
        return _cells(canvas, self.cell)[:, QUERY_IMAGE].clone()


def _cells(canvas: torch.Tensor, c: int) -> torch.Tensor:
    b, ch, h, w = canvas.shape
    if h != 2 * c or w != 2 * c or math.prod(canvas.shape) == 0:
        raise ValueError(f"canvas must be [B, 3, {2 * c}, {2 * c}], got {list(canvas.shape)}")
    return canvas.view(b, ch, 2, c, 2, c).permute(0, 2, 4, 1, 3, 5).reshape(b, 4, ch, c, c)
