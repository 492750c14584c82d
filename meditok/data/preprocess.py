"""The intensity contract: how a raw medical image becomes the model's input, written once.

:class:`PreprocessConfig` travels inside every checkpoint. The model input is float32
``[3, S, S]`` in ``[-1, 1]``, RGB, no mean/std normalisation. Every entry point — the CLI
verbs, training, evaluation, the task families — goes through :func:`to_input` (or, for
training with augmentation, :func:`interpret` + :func:`scale_intensity`), so the same file and
modality give the same tensor everywhere. Intensity scaling depends on the image kind:

* ``uint8``: ``x / 255 * 2 - 1`` (exactly the released model's convention);
* ``uint16``: min-max of the image's own range (16-bit PNG/TIFF, X-ray DICOM) — except a
  16-bit grey image of a CT, which holds ``HU + ct_offset`` (the corpus format, see
  :func:`interpret`);
* ``hu``: clip to ``ct_window`` and map it linearly onto ``[-1, 1]``;
* ``float`` (MRI, NIfTI, NRRD): clip to the ``mri_percentiles`` then min-max.

The way back: :func:`to_unit` (``[-1, 1]`` → ``[0, 1]``, what metrics take) and
:func:`to_uint8` (what image files store, the official ``127.5·x + 128`` convention).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from meditok.data.modalities import modality_key
from meditok.data.readers import MedicalImage, read_image
from meditok.errors import ImageReadError
from meditok.utils.config import Config

RESIZE_POLICIES = ("squash", "center_crop", "pad")
CHANNEL_POLICIES = ("rgb",)


@dataclass
class PreprocessConfig(Config):
    """How a raw medical image becomes the model's input tensor.

    The released model takes RGB float images in ``[-1, 1]`` (``x / 255 * 2 - 1``) with no
    mean/std normalisation, resized to ``image_size`` (the official batch script squashes
    to a square, aspect ignored).
    """

    image_size: int = 256
    input_range: tuple[float, float] = (-1.0, 1.0)
    #: ``rgb``: grey is replicated to 3 channels, alpha is dropped, >3 channels rejected.
    channel_policy: str = "rgb"
    #: ``squash`` (resize to a square, aspect ignored, as the official code),
    #: ``center_crop`` (shorter side to size then centre crop) or ``pad`` (letterbox).
    resize: str = "squash"
    #: HU window mapped to the input range for CT inputs (DICOM CT, HU PNGs, CT NIfTI).
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    #: Integer offset stored in 16-bit CT PNGs (PNG value = HU + ct_offset).
    ct_offset: int = 1024
    #: Percentiles clipped before min-max scaling of MRI / other float volumes.
    mri_percentiles: tuple[float, float] = (0.5, 99.5)

    def validate(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"preprocess.resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.channel_policy not in CHANNEL_POLICIES:
            raise ValueError(f"preprocess.channel_policy must be one of {CHANNEL_POLICIES}")
        if self.ct_window[1] <= self.ct_window[0]:
            raise ValueError(f"preprocess.ct_window {self.ct_window} must have low < high")
        if not 0 <= self.mri_percentiles[0] < self.mri_percentiles[1] <= 100:
            raise ValueError(f"preprocess.mri_percentiles {self.mri_percentiles} must satisfy "
                             "0 <= low < high <= 100")
        if self.image_size < 1:
            raise ValueError("preprocess.image_size must be positive")


# ----------------------------------------------------------------------------- intensities
def window(values: torch.Tensor | np.ndarray, low: float, high: float) -> torch.Tensor:
    """Clip to ``[low, high]`` and map linearly to ``[-1, 1]`` (CT windows, volume windows)."""
    t = torch.as_tensor(values, dtype=torch.float32)
    if high <= low:
        raise ValueError(f"window ({low}, {high}) must have low < high")
    return (t.clamp(low, high) - low) / (high - low) * 2.0 - 1.0


def percentile_window(values: torch.Tensor | np.ndarray,
                      percentiles: tuple[float, float]) -> tuple[float, float]:
    """``(low, high)`` intensity at the given percentiles (large inputs are subsampled)."""
    flat = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if flat.numel() > 1_000_000:  # quantile has an input size limit; a subsample is enough
        flat = flat[torch.linspace(0, flat.numel() - 1, 1_000_000).long()]
    q = torch.quantile(flat.double(), torch.tensor([percentiles[0] / 100.0, percentiles[1] / 100.0],
                                                   dtype=torch.float64))
    return float(q[0]), float(q[1])


def _minmax(t: torch.Tensor) -> torch.Tensor:
    lo, hi = t.min(), t.max()
    if float(hi - lo) <= 0:  # constant image: nothing to stretch, show it black
        return torch.full_like(t, -1.0)
    return (t - lo) / (hi - lo) * 2.0 - 1.0


def interpret(img: MedicalImage, modality: str | None, pre: PreprocessConfig) -> MedicalImage:
    """Apply the one HU-offset rule: a 16-bit grey CT image holds ``HU + offset``.

    The offset is the one the file itself records (``meta['ct_offset']``, written into the
    PNGs the corpus builder stores) or, for a 16-bit grey image whose modality is CT,
    ``pre.ct_offset``. Anything else is returned unchanged.
    """
    if img.kind != "uint16" or img.array.ndim != 2:
        return img
    offset = img.meta.get("ct_offset")
    if offset is None and modality_key(modality or img.modality) == "ct":
        offset = pre.ct_offset
    if offset is None:
        return img
    return MedicalImage(img.array - np.float32(offset), "hu", "ct",
                        {**img.meta, "ct_offset": int(offset)}, img.path)


def scale_intensity(img: MedicalImage, pre: PreprocessConfig) -> torch.Tensor:
    """Native values → ``[-1, 1]`` following the image kind (shape unchanged)."""
    t = torch.from_numpy(np.ascontiguousarray(img.array, dtype=np.float32))
    if img.kind == "uint8":
        return t / 255.0 * 2.0 - 1.0
    if img.kind == "hu":
        return window(t, *pre.ct_window)
    if img.kind == "uint16":
        return _minmax(t)
    if img.kind == "float":
        lo, hi = percentile_window(t, pre.mri_percentiles)
        return _minmax(t.clamp(lo, hi))
    raise ImageReadError(img.path or "<array>", f"unknown image kind {img.kind!r}")


def to_channels_first(t: torch.Tensor, path: str | None, policy: str = "rgb") -> torch.Tensor:
    """``H x W (x C)`` → ``[3, H, W]``: grey replicated, RGBA loses alpha, else error."""
    if policy != "rgb":
        raise ValueError(f"unknown channel_policy {policy!r} (only 'rgb' is supported)")
    if t.ndim == 2:
        t = t[None]
    else:
        c = t.shape[2]
        if c == 1:
            t = t[..., 0][None]
        elif c in (3, 4):
            t = t[..., :3].permute(2, 0, 1)
        else:
            raise ImageReadError(path or "<array>", f"image has {c} channels; expected 1 (grey), "
                                                    "3 (RGB) or 4 (RGBA)")
    return t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t.contiguous()


def resize_to_square(t: torch.Tensor, size: int, policy: str = "squash", fill: float = -1.0) -> torch.Tensor:
    """Resize ``[C, H, W]`` (or a batch ``[B, C, H, W]``) to ``size x size``.

    ``squash``: bilinear with antialias straight to ``size x size`` (aspect ignored, as the
    official batch script); ``center_crop``: shorter side to ``size`` then centre crop;
    ``pad``: longer side to ``size`` then letterbox with ``fill`` (black).
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; choose one of {RESIZE_POLICIES}")
    batched = t.ndim == 4
    x = t if batched else t[None]
    h, w = x.shape[-2:]
    if policy == "squash":
        out_hw = (size, size)
    elif policy == "center_crop":
        s = size / min(h, w)
        out_hw = (max(size, round(h * s)), max(size, round(w * s)))
    else:
        s = size / max(h, w)
        out_hw = (max(1, min(size, round(h * s))), max(1, min(size, round(w * s))))
    if out_hw != (h, w):
        # Antialiasing is a low-pass for shrinking; enlarging (28 px MedMNIST → 64) is plain bilinear.
        shrink = out_hw[0] < h or out_hw[1] < w
        x = F.interpolate(x, size=out_hw, mode="bilinear", antialias=shrink, align_corners=False)
    if policy == "center_crop":
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top:top + size, left:left + size]
    elif policy == "pad":
        ph, pw = size - x.shape[-2], size - x.shape[-1]
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)
    x = x.clamp(-1.0, 1.0).contiguous()
    return x if batched else x[0]


def to_input(img: MedicalImage, pre: PreprocessConfig, modality: str | None = None) -> torch.Tensor:
    """``MedicalImage`` → float32 ``[3, S, S]`` in ``[-1, 1]`` (``S = pre.image_size``)."""
    img = interpret(img, modality, pre)
    t = to_channels_first(scale_intensity(img, pre), img.path, pre.channel_policy)
    return resize_to_square(t, pre.image_size, pre.resize)


def uint8_to_input(images: np.ndarray | torch.Tensor, pre: PreprocessConfig) -> torch.Tensor:
    """A batch of raw uint8 pixels ``[N, H, W]`` or ``[N, H, W, C]`` (MedMNIST arrays) → model
    inputs ``[N, 3, S, S]``, by the same contract as :func:`to_input` for 8-bit files."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    x = x[:, None] if x.ndim == 3 else x[..., :3].permute(0, 3, 1, 2)
    x = x / 255.0 * 2.0 - 1.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return resize_to_square(x.contiguous(), pre.image_size, pre.resize)


def load_image(path: str | Path, pre: PreprocessConfig, modality: str | None = None) -> torch.Tensor:
    """Read and preprocess one file (``modality`` as for :func:`interpret`)."""
    return to_input(read_image(path, modality=modality_key(modality)), pre, modality)


def load_images(paths: Sequence[str | Path], pre: PreprocessConfig,
                errors: list[ImageReadError] | None = None,
                modality: str | None = None) -> torch.Tensor:
    """Read and preprocess several files into ``[B, 3, S, S]``.

    Without ``errors`` the first bad file raises :class:`ImageReadError`. With a list, bad
    files are skipped and their errors appended (the batch then holds only the good ones,
    in order); an empty batch has shape ``[0, 3, S, S]``.
    """
    out = []
    for p in paths:
        try:
            out.append(load_image(p, pre, modality))
        except ImageReadError as exc:
            if errors is None:
                raise
            errors.append(exc)
    if not out:
        return torch.empty(0, 3, pre.image_size, pre.image_size)
    return torch.stack(out)


# ----------------------------------------------------------------------------- the way back
def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model range ``[-1, 1]`` → ``[0, 1]`` (clamped), float32: what the metrics take."""
    return ((x.float() + 1.0) / 2.0).clamp_(0.0, 1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model range ``[-1, 1]`` → uint8 (same shape), the official ``127.5·x + 128`` truncated
    convention (= round half up), as an image file stores it."""
    return (x.float().clamp(-1.0, 1.0) * 127.5 + 128.0).clamp_(0.0, 255.0).to(torch.uint8)


def uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` (or ``[H, W]``) in ``[-1, 1]`` → ``H x W x 3`` (or ``H x W``) uint8 array."""
    u8 = to_uint8(x.detach().cpu())
    return (u8.permute(1, 2, 0) if u8.ndim == 3 else u8).contiguous().numpy()
