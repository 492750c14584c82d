"""Volumes as volumes in the batch verbs: every slice tokenized, results back in the source
geometry.

A NIfTI / NRRD / MHA file, a DICOM series folder or a grey multi-frame DICOM is read as one
volume (:func:`load_volume`), windowed once for the whole volume (CT: the checkpoint's HU
window; others: the volume's percentiles, so slices stay comparable), and cut into the 2D
planes asked for (``planes``, every ``step``-th slice, display orientation, the one slice
iterator :func:`meditok.data.volumes.iter_planes`). Each slice goes through the resize policy
(:mod:`meditok.tokenizer.resolution`, on its physical aspect) and the model. A token volume is
``[D, K, h, w]`` stored with its geometry (voxel grid, affine, world convention, spacing,
plane, slice indices, window, modality): :func:`decode_volume` turns it back into a NIfTI in the
source geometry (voxel for voxel when every slice was kept) or a DICOM series with fresh UIDs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from meditok.data.inputs import InputItem
from meditok.data.modalities import modality_key
from meditok.data.readers import Volume, read_volume
from meditok.data.volumes import PLANES, guess_modality, iter_planes, to_nifti, volume_window
from meditok.errors import ImageReadError, InvalidInputError
from meditok.metrics.image import ssim
from meditok.tokenizer import resolution as R
from meditok.tokenizer.model import MedITok
from meditok.tokenizer.panels import unit_panel

_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}


def load_volume(item: InputItem, modality: str | None = None) -> Volume:
    """The volume of a ``volume`` / ``series`` / grey ``multiframe`` item."""
    mod = modality_key(modality) if modality else None
    if item.kind == "series":
        return read_volume(item.path, mod, files=list(item.files))
    if item.kind == "multiframe":
        from meditok.data.dicom_frames import read_dicom_frames

        fr = read_dicom_frames(item.path)
        if fr.layout != "volume":
            raise InvalidInputError(f"{item.path}: {fr.layout} are not a volume")
        return Volume(fr.array, fr.spacing, fr.affine, mod or fr.modality, fr.meta, str(item.path), "LPS")
    return read_volume(item.path, mod)


def _display_spacing(vol: Volume, plane: str) -> tuple[float, float]:
    sz, sy, sx = (float(s) if s and s > 0 else 1.0 for s in vol.spacing)
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]


def _place(out: np.ndarray, plane: str, j: int, view: np.ndarray) -> None:
    """Inverse of the display view of :func:`meditok.data.volumes.iter_planes`."""
    if plane == "axial":
        out[j] = view
    elif plane == "coronal":
        out[:, j, :] = view[::-1]
    else:
        out[:, :, j] = view[::-1]


@dataclass
class PlaneSlices:
    """The slices of one plane of a windowed volume, ready for the model."""

    plane: str
    indices: list[int]
    views: list[np.ndarray]          #: [0, 1] display-orientation slices at the source grid
    input_hw: tuple[int, int]        #: model input size of every slice

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, len(self.views), batch_size):
            unit = torch.from_numpy(np.stack(self.views[start:start + batch_size]))[:, None]
            x = (unit * 2.0 - 1.0).expand(-1, 3, -1, -1).contiguous()
            yield start, R.resize_to(x, self.input_hw)


def windowed(vol: Volume, model: MedITok, modality: str | None) -> tuple[np.ndarray, str, tuple[float, float]]:
    """``[0, 1]`` volume, its modality and the native window mapped to 0 and 1."""
    mod = modality_key(modality) or guess_modality(vol)
    lo, hi = volume_window(vol, mod, model.config.preprocess)
    unit = ((np.clip(vol.array, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    return unit, mod, (lo, hi)


def plane_slices(unit: np.ndarray, vol: Volume, plane: str, step: int,
                 policy: R.Resolution) -> PlaneSlices:
    if plane not in PLANES:
        raise InvalidInputError(f"unknown plane {plane!r}; choose from {PLANES}")
    views, indices = [], []
    for _, idx, view, _ in iter_planes(unit, vol.spacing, (plane,), step):
        views.append(np.ascontiguousarray(view))
        indices.append(int(idx))
    if not views:
        raise ImageReadError(vol.path or "<volume>", f"no {plane} slice")
    h, w = views[0].shape
    sh, sw = _display_spacing(vol, plane)
    # the policy sees the physical aspect (6.5 mm slices of 0.78 mm pixels are not squashed)
    fine = min(sh, sw)
    target = policy.target(int(round(h * sh / fine)), int(round(w * sw / fine)))
    policy.check(vol.path or "<volume>", target, (h, w))
    return PlaneSlices(plane, indices, views, target)


def geometry(vol: Volume, mod: str, window: tuple[float, float], ps: PlaneSlices, step: int) -> dict[str, Any]:
    """What :func:`decode_volume` needs to put slices back: JSON-safe, no identifiers."""
    info: dict[str, Any] = {
        "kind": "volume", "plane": ps.plane, "step": int(step), "indices": ps.indices,
        "volume_shape": [int(s) for s in vol.array.shape], "slice_shape": list(ps.views[0].shape),
        "input_size": list(ps.input_hw), "affine": np.asarray(vol.affine, float).tolist(),
        "world": vol.world, "spacing": [float(s) for s in vol.spacing], "modality": mod,
        "window": [float(window[0]), float(window[1])], "format": vol.meta.get("format")}
    src = vol.source or {}
    if "to_source_ornt" in src:
        info["nifti"] = {"affine": np.asarray(src["affine"], float).tolist(),
                         "to_source_ornt": np.asarray(src["to_source_ornt"], float).tolist()}
    return info


@torch.no_grad()
def tokenize_planes(model: MedITok, vol: Volume, modality: str | None, policy: R.Resolution,
                    planes: tuple[str, ...], step: int, batch_size: int,
                    windowed_volume: tuple[np.ndarray, str, tuple[float, float]] | None = None
                    ) -> list[tuple[torch.Tensor, dict, list[np.ndarray]]]:
    """``[(tokens [D, K, h, w], geometry, the [0, 1] input slices)]``, one per plane."""
    unit, mod, window = windowed_volume or windowed(vol, model, modality)
    device = model.logit_scale.device
    out = []
    for plane in planes:
        ps = plane_slices(unit, vol, plane, step, policy)
        chunks = [model.tokenize(x.to(device)).cpu() for _, x in ps.batches(batch_size)]
        out.append((torch.cat(chunks), geometry(vol, mod, window, ps, step), ps.views))
    return out


def _to_slice(y: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Decoder output ``[B, 3, H, W]`` in [-1, 1] → grey ``[B, h, w]`` in [0, 1] at the source grid."""
    g = (y.float().mean(dim=1, keepdim=True) + 1.0) / 2.0
    if tuple(g.shape[-2:]) != tuple(hw):
        g = F.interpolate(g, size=tuple(hw), mode="bilinear", align_corners=False,
                          antialias=g.shape[-2] > hw[0] or g.shape[-1] > hw[1])
    return g.clamp(0.0, 1.0)[:, 0]


def _empty_output(info: dict) -> np.ndarray:
    shape = list(info["volume_shape"])
    shape[_AXIS[info["plane"]]] = len(info["indices"])
    return np.zeros(shape, np.float32)


def output_volume(info: dict) -> Volume:
    """A :class:`Volume` with the geometry of a decoded token volume (a subsampled grid when
    ``step > 1``), for :func:`meditok.data.volumes.to_nifti` and the DICOM writer."""
    shape = tuple(info["volume_shape"])
    affine = np.asarray(info["affine"], float)
    spacing = list(info["spacing"])
    axis, step = _AXIS[info["plane"]], int(info.get("step", 1))
    full = len(info["indices"]) == shape[axis]
    source = None
    if full and "nifti" in info:
        import nibabel as nib

        nif = info["nifti"]
        source = {"affine": np.asarray(nif["affine"], float), "header": nib.Nifti1Header(),
                  "to_source_ornt": np.asarray(nif["to_source_ornt"], float)}
    if not full:
        out_shape = list(shape)
        out_shape[axis] = len(info["indices"])
        shape = tuple(out_shape)
        affine = affine.copy()
        affine[:3, 2 - axis] *= step   # array axis a is voxel index column 2 - a
        spacing[axis] *= step
    return Volume(np.broadcast_to(np.float32(0), shape), tuple(spacing), affine,
                  info.get("modality"), {}, None, info.get("world", "LPS"), source)


def native_values(unit: np.ndarray, info: dict) -> np.ndarray:
    lo, hi = info["window"]
    return unit * (hi - lo) + lo


def nifti_bytes(info: dict, unit: np.ndarray) -> bytes:
    """A gzipped NIfTI of a decoded ``[0, 1]`` volume in native units (CT: int16 HU)."""
    import gzip

    native = native_values(unit, info)
    vol = output_volume(info)
    img = (to_nifti(vol, np.rint(native), np.int16) if info.get("modality") == "ct"
           else to_nifti(vol, native, np.float32))
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


@torch.no_grad()
def decode_planes(model: MedITok, tokens: torch.Tensor, info: dict, batch_size: int,
                  reference: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[float]]:
    """Decode a token volume into its ``[0, 1]`` output grid; per-slice SSIM when the
    ``reference`` slices are given."""
    out = _empty_output(info)
    hw = tuple(info["slice_shape"])
    device = model.logit_scale.device
    ssims: list[float] = []
    for start in range(0, len(tokens), batch_size):
        rec = _to_slice(model.detokenize(tokens[start:start + batch_size].to(device)).cpu(), hw)
        for j, view in enumerate(rec.numpy()):
            _place(out, info["plane"], start + j, view)
        if reference is not None:
            ref = torch.from_numpy(np.stack(reference[start:start + len(rec)]))[:, None]
            ssims += ssim(rec[:, None], ref).tolist()
    return out, ssims


def reference_grid(unit: np.ndarray, info: dict) -> np.ndarray:
    """The windowed input on the same (possibly subsampled) grid as :func:`decode_planes`."""
    idx = np.asarray(info["indices"])
    return np.take(unit, idx, axis=_AXIS[info["plane"]])


def middle_panel(ref: np.ndarray, rec: np.ndarray, plane: str) -> np.ndarray:
    """input | reconstruction | |error| of the middle slice of a plane (display orientation)."""
    axis = _AXIS[plane]
    j = ref.shape[axis] // 2
    a, b = np.take(ref, j, axis=axis), np.take(rec, j, axis=axis)
    if plane != "axial":
        a, b = a[::-1], b[::-1]
    return unit_panel(a, b)
