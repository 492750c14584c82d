"""ViTamin-style hybrid encoder: conv stem + MbConv stages + strided conv + ViT blocks.

Module names mirror the released checkpoint (``encoder.patch_embed.backbone.stem.conv1`` …)
so that ``meditok_simple_v1.pth`` loads by identity.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from meditok.tokenizer.config import ModelConfig
from meditok.tokenizer.layers import Block, LayerNorm2d, init_vit_linear, run_blocks


class Stem(nn.Module):
    """conv3x3 s2 → LN2d + exact GELU → conv3x3 s1 (no activation after the second conv)."""

    def __init__(self, in_ch: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride=2, padding=1)
        self.norm1 = LayerNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.gelu(self.norm1(self.conv1(x))))


class Downsample2d(nn.Module):
    """MbConv shortcut: AvgPool(3, s2, pad 1, padding excluded) when strided, 1x1 conv if widths differ."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride = stride
        self.expand = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return self.expand(x)


class MbConvLNBlock(nn.Module):
    """Pre-norm inverted bottleneck; the expansion is computed from the *output* width."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, expand: int = 4):
        super().__init__()
        mid = out_ch * expand
        if stride == 2 or in_ch != out_ch:
            self.shortcut = Downsample2d(in_ch, out_ch, stride)
        else:
            self.shortcut = nn.Identity()
        self.pre_norm = LayerNorm2d(in_ch)
        self.conv1_1x1 = nn.Conv2d(in_ch, mid, 1)
        self.conv2_kxk = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid)
        self.conv3_1x1 = nn.Conv2d(mid, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1_1x1(self.pre_norm(x)))
        y = self.conv3_1x1(F.gelu(self.conv2_kxk(y)))
        return y + self.shortcut(x)

    def init_weights(self) -> None:
        # normal(0, sqrt(2 / fan_out)) as the release's conv blocks (matters only from scratch)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)


class StridedConv(nn.Module):
    """``pool``: LN2d over the input channels then conv3x3 stride 2 to the transformer width."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm = LayerNorm2d(in_ch)
        self.proj = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class ConvBackbone(nn.Module):
    """Stem → MbConv stages → strided conv: pixels to the token grid (NCHW)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.stem = Stem(cfg.in_channels, cfg.stem_width)
        stages, in_ch = [], cfg.stem_width
        for width, depth, stride in zip(cfg.stage_widths, cfg.stage_depths, cfg.stage_strides):
            blocks = [MbConvLNBlock(in_ch if i == 0 else width, width,
                                    stride if i == 0 else 1, cfg.mbconv_expand)
                      for i in range(depth)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = StridedConv(in_ch, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x)))


class HybridEmbed(nn.Module):
    """Wraps the conv backbone (the checkpoint nests it as ``patch_embed.backbone``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backbone = ConvBackbone(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.backbone(x)
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), (h, w)


class Encoder(nn.Module):
    """Image ``[B,3,H,W]`` → tokens ``[B, H/d * W/d, width]`` after the final LayerNorm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patch_embed = HybridEmbed(cfg)
        # All-zero and frozen in the release (kept only so its key loads); a no-op addition.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, cfg.width), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.num_heads, cfg.mlp_ratio, cfg.drop_path)
            for _ in range(cfg.encoder_depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        tokens, grid = self.patch_embed(x)
        tokens = run_blocks(self.blocks, tokens + self.pos_embed, self.grad_checkpointing)
        return self.norm(tokens), grid

    def init_weights(self) -> None:
        init_vit_linear(self.blocks)
        for m in self.modules():
            if isinstance(m, MbConvLNBlock):
                m.init_weights()
