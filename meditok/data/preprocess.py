"""Turn a :class:`~meditok.data.readers.MedicalImage` into the model's input tensor.

The contract (``PreprocessConfig``): float32 ``[3, S, S]`` in ``[-1, 1]``, RGB, no mean/std
normalisation. Intensity scaling depends on the image kind:

* ``uint8``: ``x / 255 * 2 - 1`` (exactly the released model's convention);
* ``uint16``: min-max of the image's own range (16-bit PNG/TIFF, X-ray DICOM);
* ``hu``: clip to ``pre.ct_window`` and map it linearly onto ``[-1, 1]``;
* ``float`` (MRI, NIfTI, NRRD): clip to ``pre.mri_percentiles`` then min-max.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from meditok.config import PreprocessConfig
from meditok.data.readers import MedicalImage, read_image
from meditok.errors import ImageReadError

RESIZE_POLICIES = ("squash", "center_crop", "pad")


def window_to_unit(values: torch.Tensor | np.ndarray, low: float, high: float) -> torch.Tensor:
    """Clip to ``[low, high]`` and map linearly to ``[-1, 1]``."""
    t = torch.as_tensor(values, dtype=torch.float32)
    if high <= low:
        raise ValueError(f"window ({low}, {high}) must have low < high")
    return (t.clamp(low, high) - low) / (high - low) * 2.0 - 1.0


def _minmax(t: torch.Tensor) -> torch.Tensor:
    lo, hi = t.min(), t.max()
    if float(hi - lo) <= 0:  # constant image: nothing to stretch, show it black
        return torch.full_like(t, -1.0)
    return (t - lo) / (hi - lo) * 2.0 - 1.0


def scale_intensity(img: MedicalImage, pre: PreprocessConfig) -> torch.Tensor:
    """Native values → ``[-1, 1]`` following the image kind (shape unchanged)."""
    t = torch.from_numpy(np.ascontiguousarray(img.array, dtype=np.float32))
    if img.kind == "uint8":
        return t / 255.0 * 2.0 - 1.0
    if img.kind == "hu":
        return window_to_unit(t, *pre.ct_window)
    if img.kind == "uint16":
        return _minmax(t)
    if img.kind == "float":
        lo_p, hi_p = pre.mri_percentiles
        flat = t.reshape(-1)
        if flat.numel() > 1_000_000:  # quantile has an input size limit; a subsample is enough
            flat = flat[torch.linspace(0, flat.numel() - 1, 1_000_000).long()]
        q = torch.quantile(flat.double(), torch.tensor([lo_p / 100.0, hi_p / 100.0], dtype=torch.float64))
        return _minmax(t.clamp(float(q[0]), float(q[1])))
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
    """Resize ``[C, H, W]`` to ``[C, size, size]``.

    ``squash``: bilinear with antialias straight to ``size x size`` (aspect ignored, as the
    official batch script); ``center_crop``: shorter side to ``size`` then centre crop;
    ``pad``: longer side to ``size`` then letterbox with ``fill`` (black).
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; choose one of {RESIZE_POLICIES}")
    _, h, w = t.shape
    if policy == "squash":
        out_hw = (size, size)
    elif policy == "center_crop":
        s = size / min(h, w)
        out_hw = (max(size, round(h * s)), max(size, round(w * s)))
    else:
        s = size / max(h, w)
        out_hw = (max(1, min(size, round(h * s))), max(1, min(size, round(w * s))))
    if out_hw != (h, w):
        t = F.interpolate(t[None], size=out_hw, mode="bilinear", antialias=True, align_corners=False)[0]
    if policy == "center_crop":
        top, left = (t.shape[1] - size) // 2, (t.shape[2] - size) // 2
        t = t[:, top:top + size, left:left + size]
    elif policy == "pad":
        ph, pw = size - t.shape[1], size - t.shape[2]
        t = F.pad(t, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)
    return t.clamp(-1.0, 1.0).contiguous()


def to_model_input(img: MedicalImage, pre: PreprocessConfig) -> torch.Tensor:
    """``MedicalImage`` → float32 ``[3, S, S]`` in ``[-1, 1]`` (``S = pre.image_size``)."""
    t = scale_intensity(img, pre)
    t = to_channels_first(t, img.path, pre.channel_policy)
    return resize_to_square(t, pre.image_size, pre.resize)


def load_image(path: str | Path, pre: PreprocessConfig, modality: str | None = None) -> torch.Tensor:
    """Read and preprocess one file.

    With ``modality == 'ct'`` a 16-bit grey PNG/TIFF is taken to hold ``HU + pre.ct_offset``
    (the corpus format) and is windowed with ``pre.ct_window``; 8-bit CT images stay 8-bit.
    """
    img = read_image(path, modality=modality)
    if modality == "ct" and img.kind == "uint16" and img.array.ndim == 2:
        img = MedicalImage(img.array - np.float32(pre.ct_offset), "hu", "ct",
                           {**img.meta, "ct_offset": pre.ct_offset}, img.path)
    return to_model_input(img, pre)


def load_images(paths: Sequence[str | Path], pre: PreprocessConfig,
                errors: list[ImageReadError] | None = None) -> torch.Tensor:
    """Read and preprocess several files into ``[B, 3, S, S]``.

    Without ``errors`` the first bad file raises :class:`ImageReadError`. With a list, bad
    files are skipped and their errors appended (the batch then holds only the good ones,
    in order); an empty batch has shape ``[0, 3, S, S]``.
    """
    out = []
    for p in paths:
        try:
            out.append(load_image(p, pre))
        except ImageReadError as exc:
            if errors is None:
                raise
            errors.append(exc)
    if not out:
        return torch.empty(0, 3, pre.image_size, pre.image_size)
    return torch.stack(out)
