"""Multi-frame DICOM as what it is: a volume, a sequence of colour frames, or a tiled slide.

:func:`read_image` keeps returning one frame of a multi-frame file (the 2D API); the batch
verbs read the whole file with :func:`read_dicom_frames`, which classifies it:

* ``tiles`` — a whole-slide image (``TotalPixelMatrixRows/Columns``; ``TILED_FULL`` frames in
  row-major tile order, or ``TILED_SPARSE`` with per-frame positions): every frame is a tile
  of one large image, returned with its ``(row, column)`` offset so results can be put back
  together as a mosaic instead of keeping one tile of 49.
* ``volume`` — grey frames (enhanced CT/MR, grey cine): a ``[F, H, W]`` stack with spacing
  and, when the functional groups give it, the LPS affine of the frames.
* ``frames`` — colour frames (ultrasound cine, secondary capture): ``[F, H, W, 3]``.

Only whitelisted, identifier-free metadata leave this module (:func:`safe_meta`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meditok.data.dicom import (DICOM_MODALITY, _pixels, _read_dataset, header_number,
                                hu_or_physical, safe_meta)
from meditok.errors import ImageReadError


@dataclass
class Frames:
    """All frames of one multi-frame DICOM file in native units."""

    array: np.ndarray                  #: float32 [F, H, W] (grey) or [F, H, W, 3] (colour)
    kind: str                          #: uint8 / uint16 / hu / float (as MedicalImage.kind)
    layout: str                        #: 'tiles', 'volume' or 'frames'
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))   #: voxel (x,y,z) → LPS mm
    positions: np.ndarray | None = None   #: tiles: [F, 2] (row, column) offsets in pixels
    total_shape: tuple[int, int] | None = None   #: tiles: (rows, columns) of the whole image


def number_of_frames(path: str | Path) -> int:
    """``NumberOfFrames`` from the header (1 when absent or unreadable)."""
    try:
        ds = _read_dataset(Path(path), stop_before_pixels=True)
        return max(1, int(header_number(ds, "NumberOfFrames", 1, path, int) or 1))
    except ImageReadError:
        return 1


def _item(ds: Any, seq: str) -> Any:
    value = ds.get(seq)
    return value[0] if value else None


def _tile_positions(ds: Any, path: Path, n: int, rows: int, cols: int) -> tuple[np.ndarray, tuple[int, int]]:
    total = (header_number(ds, "TotalPixelMatrixRows", 0, path, int),
             header_number(ds, "TotalPixelMatrixColumns", 0, path, int))
    if total[0] <= 0 or total[1] <= 0:
        raise ImageReadError(path, "whole-slide DICOM without a valid total pixel matrix size")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    organisation = str(ds.get("DimensionOrganizationType", "")).upper()
    if organisation != "TILED_FULL" and per_frame and len(per_frame) == n:
        pos = []
        for i, group in enumerate(per_frame):
            slide = _item(group, "PlanePositionSlideSequence")
            if slide is None:
                raise ImageReadError(path, f"frame {i} has no position in the slide")
            pos.append((header_number(slide, "RowPositionInTotalImagePixelMatrix", 1, path, int) - 1,
                        header_number(slide, "ColumnPositionInTotalImagePixelMatrix", 1, path, int) - 1))
        return np.asarray(pos, np.int64), total
    across = -(-total[1] // cols)
    down = -(-total[0] // rows)
    if n < across * down:
        raise ImageReadError(path, f"{n} frames cannot tile a {total[0]}x{total[1]} image in "
                                   f"{rows}x{cols} tiles ({across * down} needed)")
    # TILED_FULL: row-major tiles; further focal planes / optical paths repeat the pattern
    # and are not used (one plane is one image).
    idx = np.arange(across * down)
    return np.stack([idx // across * rows, idx % across * cols], 1).astype(np.int64), total


def _frame_geometry(ds: Any, path: Path, n: int) -> tuple[tuple[float, float, float], np.ndarray, np.ndarray | None]:
    """(spacing z,y,x; LPS affine; frame order) from the functional groups, when present."""
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    measures = _item(shared, "PixelMeasuresSequence") if shared is not None else None
    src = measures if measures is not None and "PixelSpacing" in measures else ds
    raw = src.get("PixelSpacing") or [1.0, 1.0]
    try:
        row_sp, col_sp = (float(v) for v in raw)
    except (TypeError, ValueError):
        raise ImageReadError(path, f"DICOM PixelSpacing {str(raw)[:40]!r} is not two numbers") from None
    thick_src = measures if measures is not None else ds
    z_sp = (header_number(thick_src, "SpacingBetweenSlices", 0.0, path)
            or header_number(thick_src, "SliceThickness", 1.0, path) or 1.0)
    orient = _item(shared, "PlaneOrientationSequence") if shared is not None else None
    iop = (orient or ds).get("ImageOrientationPatient")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    ipps = []
    if per_frame and len(per_frame) == n:
        for group in per_frame:
            plane = _item(group, "PlanePositionSequence")
            if plane is None or plane.get("ImagePositionPatient") is None:
                ipps = []
                break
            ipps.append(np.asarray(plane.ImagePositionPatient, float))
    affine = np.diag([col_sp, row_sp, z_sp, 1.0])
    order = None
    if iop is not None and len(iop) == 6 and len(ipps) == n:
        r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
        normal = np.cross(r, c)
        dist = np.asarray([float(np.dot(p, normal)) for p in ipps])
        order = np.argsort(dist, kind="stable")
        if n > 1:
            step = float(np.median(np.diff(dist[order])))
            z_sp = abs(step) if abs(step) > 1e-6 else z_sp
        affine = np.eye(4)
        affine[:3, 0], affine[:3, 1], affine[:3, 2] = r * col_sp, c * row_sp, normal * z_sp
        affine[:3, 3] = ipps[int(order[0])]
    return (float(z_sp), float(row_sp), float(col_sp)), affine, order


def read_dicom_frames(path: str | Path) -> Frames:
    """Every frame of a multi-frame DICOM file, classified (see the module docstring)."""
    path = Path(path)
    ds = _read_dataset(path)
    arr = _pixels(ds, path)
    n = header_number(ds, "NumberOfFrames", 1, path, int) or 1
    if n == 1 or arr.shape[0] != n:
        arr = arr[None]
        n = 1
    modality = DICOM_MODALITY.get(str(ds.get("Modality", "")).upper())
    meta = safe_meta(ds)
    meta["format"] = "dicom"
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        try:
            from pydicom.pixels import apply_color_lut
            arr = np.asarray(apply_color_lut(arr, ds))
        except Exception as exc:
            raise ImageReadError(path, f"cannot apply DICOM palette ({type(exc).__name__}: {exc})") from None
    colour = arr.ndim == 4
    if colour:
        kind = "uint8" if arr.dtype == np.uint8 or arr.max() <= 255 else "uint16"
        data = arr.astype(np.float32)
    else:
        data = hu_or_physical(ds, arr)
        if photometric == "MONOCHROME1":
            data = data.max() + data.min() - data
        kind = ("hu" if modality == "ct" else "float" if modality in ("mri", "pet", "nm")
                else "uint8" if arr.dtype == np.uint8 else "uint16" if data.min() >= 0 else "float")
    rows, cols = int(data.shape[1]), int(data.shape[2])
    if "TotalPixelMatrixRows" in ds and "TotalPixelMatrixColumns" in ds:
        positions, total = _tile_positions(ds, path, n, rows, cols)
        return Frames(data[:len(positions)], kind, "tiles", modality or "pathology", meta,
                      positions=positions, total_shape=total)
    if colour:
        return Frames(data, kind, "frames", modality, meta)
    spacing, affine, order = _frame_geometry(ds, path, n)
    if order is not None:
        data = data[order]
    return Frames(np.ascontiguousarray(data), kind, "volume", modality, meta, spacing, affine)


def assemble_tiles(tiles: np.ndarray, positions: np.ndarray, total: tuple[int, int]) -> np.ndarray:
    """Put ``[T, h, w(, C)]`` tiles at their ``(row, col)`` offsets into one image of ``total``
    size (edge tiles cropped; later tiles win where sparse tiles overlap)."""
    out = np.zeros((total[0], total[1], *tiles.shape[3:]), tiles.dtype)
    for tile, (r, c) in zip(tiles, positions):
        r, c = int(r), int(c)
        if r >= total[0] or c >= total[1] or r < 0 or c < 0:
            continue
        h, w = min(tile.shape[0], total[0] - r), min(tile.shape[1], total[1] - c)
        out[r:r + h, c:c + w] = tile[:h, :w]
    return out
