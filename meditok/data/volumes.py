"""3D volumes → 2D training slices, following the paper's App. A.2.1.

CT: HU clipped to ``[-1000, 2000]``; every ``step``-th slice along the axial, coronal and
sagittal planes; a slice is kept when background ratio (HU ≤ -1000) ≤ 0.6, body ratio
(HU ≥ -300) ≥ 0.1 and its HU standard deviation passes the std rule (see ``ct_min_std``).
Kept CT slices are stored as 16-bit PNG holding ``HU + 1024`` (exact integer round trip), so
training can apply random CT windows later.

MRI: the volume is clipped to its [0.5, 99.5] percentiles and min-max scaled to ``[-1, 1]``;
a slice is dropped when its mean ≤ -0.9 or its std ≤ 0.2. Kept MRI slices are 8-bit PNGs.

Non-axial planes of anisotropic volumes are resampled so that both pixel spacings equal the
finer of the two (e.g. 6.5 mm slices with 0.78 mm pixels give a 0.78 mm isotropic coronal).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from meditok.data.modalities import modality_key
from meditok.data.readers import CT_OFFSET_KEY, Volume
from meditok.utils.io import atomic_path
from meditok.utils.lazy import require

PLANES = ("axial", "coronal", "sagittal")


@dataclass
class SliceConfig:
    """Thresholds of App. A.2.1 (defaults are the paper's)."""

    step: int = 5
    planes: tuple[str, ...] = PLANES
    ct_clip: tuple[float, float] = (-1000.0, 2000.0)
    ct_background_hu: float = -1000.0
    ct_max_background_ratio: float = 0.6
    ct_body_hu: float = -300.0
    ct_min_body_ratio: float = 0.1
    #: The paper lists "pixel intensity standard deviation < 100" among the criteria a slice
    #: must *meet to be retained*. Read literally on HU values this rejects practically every
    #: slice with anatomy: a body slice mixes air (-1000) and tissue (~0), so its std is
    #: ~400-500 HU (measured on the TotalSegmentator example CT: 428-497 on every slice).
    #: The criteria exist to drop "largely empty slices with minimal anatomical content",
    #: and A.2.2 treats low std as low information, so we read rule (3) as a rejection rule:
    #: a slice is dropped when its HU std is below 100 (flat slices: all air, all table,
    #: all uniform tissue). Set to 0 to disable.
    ct_min_std: float = 100.0
    ct_offset: int = 1024
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    mri_min_mean: float = -0.9
    mri_min_std: float = 0.2
    isotropic: bool = True
    #: Slices smaller than this (after resampling) on either side are dropped.
    min_side: int = 8


@dataclass
class VolumeSlice:
    """One candidate slice; ``array`` is HU (CT) or ``[-1, 1]`` (MRI); ``kept`` + ``reason``."""

    plane: str
    index: int
    array: np.ndarray
    kept: bool
    reason: str | None = None
    stats: dict[str, float] = field(default_factory=dict)


def _plane_view(arr: np.ndarray, spacing: tuple[float, float, float], plane: str, idx: int):
    sz, sy, sx = spacing
    if plane == "axial":
        return arr[idx], (sy, sx)
    # z increases towards the head: flip so the head is at the top of coronal/sagittal views
    if plane == "coronal":
        return arr[::-1, idx, :], (sz, sx)
    if plane == "sagittal":
        return arr[::-1, :, idx], (sz, sy)
    raise ValueError(f"unknown plane {plane!r}; choose from {PLANES}")


def iter_planes(array: np.ndarray, spacing: tuple[float, float, float],
                planes: tuple[str, ...] = ("axial",), step: int = 1
                ) -> Iterator[tuple[str, int, np.ndarray, tuple[float, float]]]:
    """The one slice iterator: ``(plane, index, 2D view in display orientation, pixel spacing)``
    for every ``step``-th slice of ``array[z, y, x]`` along each plane."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    axis_of = {"axial": 0, "coronal": 1, "sagittal": 2}
    for plane in planes:
        if plane not in axis_of:
            raise ValueError(f"unknown plane {plane!r}; choose from {PLANES}")
        for idx in range(0, array.shape[axis_of[plane]], step):
            view, sp = _plane_view(array, spacing, plane, idx)
            yield plane, idx, view, sp


def resample_isotropic(img: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Bilinear resample so that both pixel spacings equal the finer one."""
    target = min(spacing)
    if target <= 0 or abs(spacing[0] - spacing[1]) < 1e-3 * target:
        return img
    h = max(1, int(round(img.shape[0] * spacing[0] / target)))
    w = max(1, int(round(img.shape[1] * spacing[1] / target)))
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False,
                        antialias=(h < img.shape[0] or w < img.shape[1]))
    return out[0, 0].numpy()


def normalize_mri(arr: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Clip a volume to its percentiles and min-max scale to ``[-1, 1]``."""
    lo, hi = np.percentile(arr, percentiles)
    if hi <= lo:
        return np.full(arr.shape, -1.0, np.float32)
    return ((np.clip(arr, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)


def ct_slice_verdict(hu: np.ndarray, cfg: SliceConfig) -> tuple[str | None, dict[str, float]]:
    """``(None, stats)`` if the HU slice passes the three CT rules, else ``(reason, stats)``."""
    bg = float((hu <= cfg.ct_background_hu).mean())
    body = float((hu >= cfg.ct_body_hu).mean())
    std = float(hu.std())
    stats = {"background_ratio": bg, "body_ratio": body, "std": std}
    if bg > cfg.ct_max_background_ratio:
        return "ct_background", stats
    if body < cfg.ct_min_body_ratio:
        return "ct_no_body", stats
    if std < cfg.ct_min_std:
        return "ct_low_std", stats
    return None, stats


def mri_slice_verdict(x: np.ndarray, cfg: SliceConfig) -> tuple[str | None, dict[str, float]]:
    """Same for an MRI slice already scaled to ``[-1, 1]``."""
    mean, std = float(x.mean()), float(x.std())
    stats = {"mean": mean, "std": std}
    if mean <= cfg.mri_min_mean:
        return "mri_dark", stats
    if std <= cfg.mri_min_std:
        return "mri_low_std", stats
    return None, stats


def iter_volume_slices(vol: Volume, cfg: SliceConfig | None = None,
                       modality: str | None = None) -> Iterator[VolumeSlice]:
    """Yield every candidate slice (kept or not) of a CT or MRI volume.

    ``modality`` overrides ``vol.modality``; anything that is not ``ct`` is treated as MRI
    (percentile normalisation), which is what the paper does for its MRI volumes.
    """
    cfg = cfg or SliceConfig()
    is_ct = modality_key(modality or vol.modality) == "ct"
    if is_ct:
        data = np.clip(vol.array, *cfg.ct_clip).astype(np.float32)
    else:
        data = normalize_mri(vol.array, cfg.mri_percentiles)
    for plane, idx, raw, sp in iter_planes(data, vol.spacing, cfg.planes, cfg.step):
        reason, stats = (ct_slice_verdict if is_ct else mri_slice_verdict)(raw, cfg)
        img = raw
        if reason is None:
            img = resample_isotropic(raw, sp) if cfg.isotropic else np.ascontiguousarray(raw)
            if is_ct:
                img = np.rint(img)  # HU are integers: keeps the 16-bit PNG round trip exact
            if min(img.shape) < cfg.min_side:
                reason = "too_small"
        yield VolumeSlice(plane, idx, img, reason is None, reason, stats)


# ------------------------------------------------------------------ CT PNG storage
def save_ct_png(path: str | Path, hu: np.ndarray, offset: int = 1024) -> None:
    """Write HU as a 16-bit grey PNG holding ``HU + offset`` (atomic; exact for integer HU).

    The offset is recorded in the PNG itself (text chunk ``meditok:ct_offset``), so every
    reader — CLI, training, evaluation — knows the file holds HU without being told.
    """
    from PIL import Image, PngImagePlugin

    stored = np.rint(np.asarray(hu, dtype=np.float64)) + offset
    if stored.min() < 0 or stored.max() > 32767:
        raise ValueError(f"HU range {hu.min()}..{hu.max()} does not fit a 16-bit PNG with offset {offset}")
    info = PngImagePlugin.PngInfo()
    info.add_text(CT_OFFSET_KEY, str(int(offset)))
    with atomic_path(path) as tmp:
        Image.fromarray(stored.astype(np.uint16)).save(tmp, format="PNG", pnginfo=info)


def read_ct_png(path: str | Path, offset: int = 1024) -> np.ndarray:
    """Inverse of :func:`save_ct_png`: float32 HU array (the offset recorded in the file wins)."""
    from meditok.data.preprocess import PreprocessConfig, interpret
    from meditok.data.readers import read_image

    img = interpret(read_image(path), "ct", PreprocessConfig(ct_offset=offset))
    if img.kind != "hu":
        raise ValueError(f"{path}: not a 16-bit grey CT PNG (kind {img.kind})")
    return img.array


def save_unit_png(path: str | Path, x: np.ndarray) -> None:
    """Write a ``[-1, 1]`` slice as an 8-bit grey PNG (atomic)."""
    from PIL import Image

    u8 = np.clip(np.rint((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(u8).save(tmp, format="PNG")


def slice_volume(vol: Volume, out_dir: str | Path, stem: str, cfg: SliceConfig | None = None,
                 modality: str | None = None) -> tuple[list[dict], list[dict]]:
    """Slice a volume and write kept slices as PNGs under ``out_dir``.

    File names are ``{stem}_{plane}{index:04d}.png`` (``stem`` must not carry identifiers).
    Returns ``(kept, rejected)`` lists of dicts with ``path``/``plane``/``index``/``reason``.
    Existing files are not rewritten (re-running is cheap and idempotent).
    """
    cfg = cfg or SliceConfig()
    out_dir = Path(out_dir)
    is_ct = modality_key(modality or vol.modality) == "ct"
    kept, rejected = [], []
    for s in iter_volume_slices(vol, cfg, modality):
        row = {"plane": s.plane, "index": s.index, **{k: round(v, 4) for k, v in s.stats.items()}}
        if not s.kept:
            rejected.append({**row, "reason": s.reason})
            continue
        path = out_dir / f"{stem}_{s.plane}{s.index:04d}.png"
        if not path.exists():
            (save_ct_png(path, s.array, cfg.ct_offset) if is_ct else save_unit_png(path, s.array))
        kept.append({**row, "path": str(path), "height": int(s.array.shape[0]),
                     "width": int(s.array.shape[1])})
    return kept, rejected


# ------------------------------------------------------------------ volumes as volumes
def guess_modality(vol: Volume) -> str:
    """``ct`` when the volume holds HU (air near -1000), else ``mri``; the header wins when known."""
    known = modality_key(vol.modality)
    if known:
        return known
    return "ct" if float(vol.array.min()) < -500.0 else "mri"


def volume_window(vol: Volume, modality: str, pre) -> tuple[float, float]:
    """Native intensity window of a whole volume: CT → ``pre.ct_window`` (HU), otherwise the
    ``pre.mri_percentiles`` of all voxels (one window for every slice, so slices stay
    comparable)."""
    from meditok.data.preprocess import percentile_window

    if modality_key(modality) == "ct":
        return float(pre.ct_window[0]), float(pre.ct_window[1])
    lo, hi = percentile_window(vol.array, pre.mri_percentiles)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def nifti_affine(vol: Volume) -> np.ndarray:
    """The volume's voxel (x, y, z) → RAS world matrix (NIfTI's convention)."""
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    return np.asarray(vol.affine, float) if vol.world == "RAS" else lps_to_ras @ np.asarray(vol.affine, float)


def to_nifti(vol: Volume, array_zyx: np.ndarray, dtype: np.dtype | type | None = None):
    """A nibabel NIfTI image of ``array_zyx`` (same grid as ``vol.array``) in the volume's geometry.

    A volume read from NIfTI is written back in the file's own voxel order, affine and header
    (so the output overlays the input voxel for voxel); others get their RAS affine.
    """
    nib = require("nibabel", "io")
    arr = np.asarray(array_zyx)
    if arr.shape != vol.array.shape:
        raise ValueError(f"array shape {arr.shape} does not match the volume {vol.array.shape}")
    if dtype is not None:
        arr = arr.astype(dtype)
    src = vol.source
    if src is not None and "to_source_ornt" in src:
        canonical = arr.transpose(2, 1, 0)[::-1, ::-1, :]
        data = np.ascontiguousarray(nib.orientations.apply_orientation(canonical, src["to_source_ornt"]))
        header = src["header"].copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(None, None)
        return nib.Nifti1Image(data, src["affine"], header=header)
    affine = nifti_affine(vol)
    img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img
