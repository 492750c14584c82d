"""Discriminators: a weight-free PatchGAN and a frozen-backbone multi-layer discriminator.

Every discriminator maps images in ``[-1, 1]`` ``[B, 3, H, W]`` to logits ``[B, N]`` (any
``N``), which is what :mod:`meditok.losses.adversarial` consumes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from meditok.errors import CheckpointError


def _maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    return _sn(module) if enabled else module


def _norm2d(kind: str, ch: int) -> nn.Module:
    # GroupNorm is the default: BatchNorm statistics differ between the real and fake passes
    # and across DDP ranks, which destabilises GAN training.
    if kind == "gn":
        return nn.GroupNorm(min(32, ch), ch, eps=1e-6)
    if kind == "bn":
        return nn.BatchNorm2d(ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'gn', 'bn' or 'none', got {kind!r}")


class PatchGANDiscriminator(nn.Module):
    """Convolutional PatchGAN: 4×4 convs, ``n_layers`` stride-2 stages, one logit per patch."""

    def __init__(self, in_ch: int = 3, base: int = 64, n_layers: int = 3,
                 norm: str = "gn", spectral_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = [_maybe_sn(nn.Conv2d(in_ch, base, 4, 2, 1), spectral_norm),
                                   nn.LeakyReLU(0.2)]
        ch = base
        for i in range(1, n_layers + 1):
            out = base * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [_maybe_sn(nn.Conv2d(ch, out, 4, stride, 1, bias=norm == "none"), spectral_norm),
                       _norm2d(norm, out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(_maybe_sn(nn.Conv2d(ch, 1, 4, 1, 1), spectral_norm))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not spectral_norm:
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits flattened to ``[B, h*w]``."""
        return self.net(x).flatten(1)


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Divide by √2 so the residual sum keeps unit variance.
        return (self.fn(x) + x) / math.sqrt(2)


def _gn1d(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(32 if ch % 32 == 0 else 1, ch, eps=1e-6)


def feature_head(in_ch: int, hidden: int = 384, spectral_norm: bool = False) -> nn.Sequential:
    """Per-layer head over a token sequence ``[B, C, N]`` → logits ``[B, 1, N]``.

    Conv1d k1 → GN → LeakyReLU(0.2); residual [Conv1d k9 circular → GN → LeakyReLU];
    Conv1d → 1. Circular padding treats the flattened token sequence as a ring, so every token
    sees the same number of neighbours.
    """
    def conv(i: int, o: int, k: int) -> nn.Module:
        return _maybe_sn(nn.Conv1d(i, o, k, padding=k // 2, padding_mode="circular"), spectral_norm)

    head = nn.Sequential(
        nn.Sequential(conv(in_ch, hidden, 1), _gn1d(hidden), nn.LeakyReLU(0.2)),
        _Residual(nn.Sequential(conv(hidden, hidden, 9), _gn1d(hidden), nn.LeakyReLU(0.2))),
        conv(hidden, 1, 1),
    )
    for m in head.modules():
        if isinstance(m, nn.Conv1d) and not spectral_norm:
            nn.init.xavier_normal_(m.weight, gain=0.5)
            nn.init.zeros_(m.bias)
    return head


class FeatureBackbone(nn.Module):
    """Frozen feature extractor contract: ``forward(x in [-1,1]) -> list of [B, C_i, N_i]``."""

    channels: list[int]


class DinoBackbone(FeatureBackbone):
    """Frozen DINOv2 taps: per tapped block, patch tokens + class token → ``[B, dim, N]``.

    Input is mapped from [-1,1] to ImageNet statistics; sizes not divisible by the patch are
    brought to the largest multiple below (256 → 252): in training with prob. 0.5 by one
    random crop for the whole batch, else (and always in eval) by area resizing.
    """

    def __init__(self, vit: nn.Module, taps: tuple[int, ...] = (0, 2, 5, 8, 11),
                 crop_prob: float = 0.5):
        super().__init__()
        self.vit = vit
        self.taps = taps
        self.crop_prob = crop_prob
        self.channels = [vit.spec.dim] * len(taps)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        # x_norm = (x01 - mean)/std with x01 = (x+1)/2  ⇒  x * scale + shift
        self.register_buffer("x_scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("x_shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)

    def _fit(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        p = self.vit.spec.patch_size
        h, w = x.shape[-2:]
        th, tw = (h // p) * p, (w // p) * p
        if (th, tw) == (h, w):
            return x
        if training and float(torch.rand(())) < self.crop_prob:
            top = int(torch.randint(0, h - th + 1, ()))
            left = int(torch.randint(0, w - tw + 1, ()))
            return x[..., top:top + th, left:left + tw]
        return F.interpolate(x, size=(th, tw), mode="area")

    def forward(self, x: torch.Tensor, training: bool = False) -> list[torch.Tensor]:
        x = self._fit(x * self.x_scale + self.x_shift, training)
        out = []
        for t in self.vit.intermediate(x, self.taps):
            out.append((t[:, 1:] + t[:, :1]).transpose(1, 2))
        return out


class EfficientNetBackbone(FeatureBackbone):
    """Frozen EfficientNet-Lite0 taps (block outputs, ``-1`` = 1280-d head) as ``[B, C, h*w]``."""

    def __init__(self, net: nn.Module, taps: tuple[int, ...] = (4, 10, 15)):
        super().__init__()
        self.net = net
        self.taps = taps
        chans = net.block_channels
        self.channels = [1280 if t == -1 else chans[t] for t in taps]

    def forward(self, x: torch.Tensor, training: bool = False) -> list[torch.Tensor]:
        # The offline Lite0 weights expect inputs in [-1, 1] (TF-Lite mean 127.5/std 127.5).
        return [f.flatten(2) for f in self.net.forward_taps(x, self.taps)]


class FrozenFeatureDiscriminator(nn.Module):
    """Multi-layer heads on a frozen backbone; logits of all heads concatenated ``[B, ΣN_i]``.

    The backbone is held outside the module tree (in a list) so it is not in
    ``parameters()`` / ``state_dict()`` — the optimiser, DDP and checkpoints only see the
    heads — but it still moves with ``.to()`` and always stays in eval mode. Gradients flow
    through it to the input (needed for the generator's adversarial loss).
    """

    def __init__(self, backbone: FeatureBackbone, hidden: int = 384, spectral_norm: bool = False):
        super().__init__()
        self._backbone = [backbone.requires_grad_(False).eval()]
        self.heads = nn.ModuleList(feature_head(c, hidden, spectral_norm) for c in backbone.channels)

    @property
    def backbone(self) -> FeatureBackbone:
        """The frozen backbone (not a registered submodule)."""
        return self._backbone[0]

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        self._backbone[0]._apply(fn)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x, training=self.training)
        return torch.cat([head(f).flatten(1) for head, f in zip(self.heads, feats)], dim=1)


def build_discriminator(name: str, weights: str | Path | None = None, image_size: int = 256,
                        **kwargs) -> nn.Module:
    """Build a discriminator by name.

    ``patchgan`` (no weights); ``dinov2_vits14`` (``weights`` = local
    ``dinov2_vits14_pretrain.pth``, required); ``efficientnet_lite0`` (``weights`` defaults to
    the offline package). Extra keyword arguments go to the discriminator class.
    """
    key = name.lower().replace("-", "_")
    if image_size < 32:
        raise ValueError(f"discriminators need images of at least 32 px, got image_size={image_size}")
    if key == "patchgan":
        return PatchGANDiscriminator(**kwargs)
    if key in ("dinov2_vits14", "dinov2", "dino"):
        if weights is None:
            raise CheckpointError(
                "the DINOv2 discriminator needs a local dinov2_vits14_pretrain.pth "
                "(weights=...); it cannot be downloaded at run time. Use 'patchgan' or "
                "'efficientnet_lite0' to train without it.")
        from meditok.backbones.vit import load_dinov2
        taps = kwargs.pop("taps", (0, 2, 5, 8, 11))
        backbone = DinoBackbone(load_dinov2(weights), taps=taps)
        return FrozenFeatureDiscriminator(backbone, **kwargs)
    if key in ("efficientnet_lite0", "efficientnet"):
        from meditok.backbones.efficientnet import load_efficientnet_lite0
        taps = kwargs.pop("taps", (4, 10, 15))
        kwargs.setdefault("hidden", 256)
        backbone = EfficientNetBackbone(load_efficientnet_lite0(weights, num_classes=0), taps=taps)
        return FrozenFeatureDiscriminator(backbone, **kwargs)
    raise ValueError(f"unknown discriminator {name!r}; choose patchgan, dinov2_vits14 or efficientnet_lite0")


def trainable_parameters(disc: nn.Module) -> Iterator[nn.Parameter]:
    """Parameters the discriminator optimiser should update (frozen backbones excluded)."""
    return (p for p in disc.parameters() if p.requires_grad)
