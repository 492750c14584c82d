"""Decoder: ViT blocks on the token grid, then nearest-upsampling conv stages back to pixels.

It mirrors the encoder: ``up_conv1`` undoes the strided conv, one inverted-MbConv stage per
encoder stage (in reverse), and ``InvStem`` undoes the stem. Output is unbounded (no tanh);
inference clamps to [-1, 1], training losses see the raw output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meditok.tokenizer.config import ModelConfig
from meditok.tokenizer.layers import Block, LayerNorm2d, run_blocks


class Upsample2d(nn.Module):
    """Nearest-neighbour ×2 followed by conv3x3 (avoids the checkerboard of transposed convs)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Conv1x1(nn.Module):
    """1x1 conv shortcut for width changes at stride 1 (stored as ``shortcut.conv``)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class InvMbConvLNBlock(nn.Module):
    """Inverted bottleneck that upsamples inside the expanded width when ``stride`` is 2."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, expand: int = 4):
        super().__init__()
        mid = out_ch * expand
        if stride == 2:
            self.shortcut: nn.Module = Upsample2d(in_ch, out_ch)
        elif in_ch != out_ch:
            self.shortcut = Conv1x1(in_ch, out_ch)
        else:
            self.shortcut = nn.Identity()
        self.pre_norm = LayerNorm2d(in_ch)
        self.conv1_1x1 = nn.Conv2d(in_ch, mid, 1)
        self.up = Upsample2d(mid, mid) if stride == 2 else nn.Identity()
        self.conv2_kxk = nn.Conv2d(mid, mid, 3, padding=1, groups=mid)
        self.conv3_1x1 = nn.Conv2d(mid, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(F.gelu(self.conv1_1x1(self.pre_norm(x))))
        y = self.conv3_1x1(F.gelu(self.conv2_kxk(y)))
        return y + self.shortcut(x)


class InvStem(nn.Module):
    """Upsample2d → LN2d + exact GELU → conv3x3 to RGB."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = Upsample2d(in_ch, in_ch)
        self.norm1 = LayerNorm2d(in_ch)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.gelu(self.norm1(self.conv1(x))))


class Decoder(nn.Module):
    """Tokens ``[B, h*w, width]`` + grid ``(h, w)`` → image ``[B, 3, h*d, w*d]`` (unclamped)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.num_heads, cfg.mlp_ratio, cfg.drop_path)
            for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        widths = list(reversed(cfg.stage_widths))
        self.up_conv1 = Upsample2d(cfg.width, widths[0])
        in_ch = widths[0]
        # Stage names up_conv2, up_conv3, ... and InvStem last: the release has two stages,
        # giving exactly up_conv1..up_conv4.
        stages = zip(widths, reversed(cfg.stage_depths), reversed(cfg.stage_strides))
        self.num_stages = len(widths)
        for s, (width, depth, stride) in enumerate(stages):
            blocks = [InvMbConvLNBlock(in_ch if i == 0 else width, width,
                                       stride if i == 0 else 1, cfg.mbconv_expand)
                      for i in range(depth)]
            self.add_module(f"up_conv{s + 2}", nn.Sequential(*blocks))
            in_ch = width
        self.add_module(f"up_conv{self.num_stages + 2}", InvStem(in_ch, cfg.in_channels))
        self.grad_checkpointing = False

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.norm(run_blocks(self.blocks, tokens, self.grad_checkpointing))
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, grid[0], grid[1])
        for i in range(1, self.num_stages + 3):
            x = getattr(self, f"up_conv{i}")(x)
        return x

    def last_layer(self) -> nn.Parameter:
        """Weight of the final RGB conv (VQGAN adaptive GAN weight is computed against it)."""
        return getattr(self, f"up_conv{self.num_stages + 2}").conv2.weight
