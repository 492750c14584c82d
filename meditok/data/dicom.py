"""DICOM reading with pydicom: pixel values in physical units, de-identified metadata.

Only a whitelist of acquisition attributes ever leaves this module (:data:`SAFE_TAGS`), so a
patient's name, ID, birth date, accession number or any UID can never reach a manifest, a
file name or a log line by accident.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from meditok.errors import ImageReadError
from meditok.utils.lazy import require

#: DICOM Modality (0008,0060) → meditok modality hint (the paper's 8 modalities where possible).
DICOM_MODALITY = {
    "CT": "ct", "MR": "mri", "CR": "xray", "DX": "xray", "DR": "xray", "RF": "xray", "XA": "xray",
    "MG": "xray", "PX": "xray", "IO": "xray", "US": "ultrasound", "ES": "endoscopy",
    "OP": "fundus", "SM": "pathology", "GM": "pathology", "PT": "pet", "NM": "nm",
}

#: Acquisition attributes copied into ``meta`` (never identifiers, dates or UIDs).
SAFE_TAGS = ("Modality", "BodyPartExamined", "PhotometricInterpretation", "PixelSpacing",
             "SliceThickness", "ImageOrientationPatient", "ImagePositionPatient",
             "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "BitsStored",
             "Rows", "Columns", "NumberOfFrames")


def is_dicom(path: str | Path) -> bool:
    """True when the file carries the ``DICM`` magic after the 128-byte preamble."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _plain(value: Any) -> Any:
    """pydicom value (DS, IS, MultiValue, PersonName...) → JSON-friendly Python value."""
    from collections.abc import Sequence
    from decimal import Decimal

    if isinstance(value, (str, bytes)):
        return str(value)
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (float, Decimal)):
        return float(value)
    return str(value)


def safe_meta(ds: Any) -> dict[str, Any]:
    """Whitelisted, identifier-free metadata of a dataset."""
    meta: dict[str, Any] = {}
    for key in SAFE_TAGS:
        if key in ds and ds.get(key) not in (None, ""):
            meta[key] = _plain(ds.get(key))
    if "PixelSpacing" in meta:
        try:
            meta["spacing"] = [float(v) for v in meta["PixelSpacing"]]
        except (TypeError, ValueError):
            del meta["PixelSpacing"]  # unusable: no spacing rather than a crash
    return meta


def _read_dataset(path: Path, stop_before_pixels: bool = False) -> Any:
    pydicom = require("pydicom", "io")
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ImageReadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None


def header_number(ds: Any, key: str, default: float, path: str | Path | None = None,
                  cast: type = float) -> Any:
    """A numeric header value (``RescaleSlope``, ``NumberOfFrames`` ...) or ``default`` when
    absent/empty; a value that is not a number is an :class:`ImageReadError` naming the tag
    (a damaged or hand-edited header), never a bare ``ValueError``."""
    raw = ds.get(key, None)
    if raw is None or raw == "":
        return default
    try:
        value = cast(float(raw)) if cast is int else cast(raw)
    except (TypeError, ValueError):
        raise ImageReadError(path or getattr(ds, "filename", None) or "<dicom>",
                             f"DICOM {key} {str(raw)[:40]!r} is not a number") from None
    if cast is float and not np.isfinite(value):
        raise ImageReadError(path or getattr(ds, "filename", None) or "<dicom>",
                             f"DICOM {key} {str(raw)[:40]!r} is not finite")
    return value


def _pixels(ds: Any, path: Path) -> np.ndarray:
    from meditok.data.readers import check_size, max_image_pixels

    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data")
    shape = (header_number(ds, "NumberOfFrames", 1, path, int), header_number(ds, "Rows", 0, path, int),
             header_number(ds, "Columns", 0, path, int))
    check_size(path, shape, max_image_pixels())
    try:
        arr = ds.pixel_array
    except Exception as exc:  # undecodable / truncated pixel data, missing codec
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    return np.asarray(arr)


def hu_or_physical(ds: Any, arr: np.ndarray) -> np.ndarray:
    """Apply RescaleSlope / RescaleIntercept (CT: stored values → Hounsfield units)."""
    slope = header_number(ds, "RescaleSlope", 1.0) or 1.0
    intercept = header_number(ds, "RescaleIntercept", 0.0)
    out = arr.astype(np.float32)
    if slope != 1.0 or intercept != 0.0:
        out = out * np.float32(slope) + np.float32(intercept)
    return out


def read_dicom_image(path: Path, frame_index: int | None = None) -> tuple[np.ndarray, str, str | None, dict]:
    """Read one DICOM file → ``(array, kind, modality, meta)``.

    CT is returned in HU (kind ``hu``). MONOCHROME1 images (bright = low value) are inverted
    so that every grey image follows the MONOCHROME2 convention. Multi-frame files give the
    middle frame unless ``frame_index`` is given.
    """
    ds = _read_dataset(path)
    arr = _pixels(ds, path)
    meta = safe_meta(ds)
    modality = DICOM_MODALITY.get(str(ds.get("Modality", "")).upper())
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = header_number(ds, "SamplesPerPixel", 1, path, int) or 1
    frames = header_number(ds, "NumberOfFrames", 1, path, int) or 1
    if frames > 1:
        idx = frames // 2 if frame_index is None else frame_index
        if not 0 <= idx < arr.shape[0]:
            raise ImageReadError(path, f"frame {idx} out of range (0..{arr.shape[0] - 1})")
        arr = arr[idx]
        meta["frame_index"] = idx
    if photometric == "PALETTE COLOR":
        try:
            from pydicom.pixels import apply_color_lut
            arr = np.asarray(apply_color_lut(arr, ds))
        except Exception as exc:
            raise ImageReadError(path, f"cannot apply DICOM palette ({type(exc).__name__}: {exc})") from None
        if arr.dtype != np.uint8 and arr.max() <= 255:
            arr = arr.astype(np.uint8)
        samples = 3
    if samples > 1:  # colour (pydicom already converts YBR to RGB)
        kind = "uint8" if arr.dtype == np.uint8 else "uint16"
        return arr.astype(np.float32), kind, modality, meta
    out = hu_or_physical(ds, arr)
    if photometric == "MONOCHROME1":
        # Display convention: MONOCHROME1 shows low values bright; flip within the image's range.
        out = out.max() + out.min() - out
        meta["inverted_monochrome1"] = True
    if modality == "ct":
        kind = "hu"
    elif modality == "mri" or modality in ("pet", "nm"):
        kind = "float"
    elif arr.dtype == np.uint8 and out.min() >= 0 and out.max() <= 255:
        kind = "uint8"
    else:
        kind = "uint16" if out.min() >= 0 else "float"
    return out, kind, modality, meta


def _slice_normal(ds: Any) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    return np.cross(row, col)


def _spacing_pair(ds: Any, path: Path) -> tuple[float, float]:
    raw = ds.get("PixelSpacing") or [1.0, 1.0]
    try:
        row_sp, col_sp = (float(v) for v in raw)
    except (TypeError, ValueError):
        raise ImageReadError(path, f"DICOM PixelSpacing {str(raw)[:40]!r} is not two numbers") from None
    if not (row_sp > 0 and col_sp > 0 and np.isfinite(row_sp) and np.isfinite(col_sp)):
        raise ImageReadError(path, f"DICOM PixelSpacing {list(raw)} must be positive")
    return row_sp, col_sp


def series_groups(files: list[Path]) -> list[list[Path]]:
    """Single-frame DICOM files grouped by series (SeriesInstanceUID, then slice size), each
    group in file-name order; multi-frame files and unreadable headers are left out (they are
    read one by one as images). A group whose files repeat an instance (same SOPInstanceUID or
    same slice position — copies of one slice, not a volume) is split into single files."""
    pydicom = require("pydicom", "io")
    groups: dict[tuple, list[tuple[Path, str, str]]] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
            frames = int(float(ds.get("NumberOfFrames", 1) or 1))
        except Exception:  # noqa: BLE001 - damaged header: let the per-file reader report it
            continue
        if frames != 1 or "SeriesInstanceUID" not in ds:
            continue
        key = (str(f.parent), str(ds.SeriesInstanceUID), ds.get("Rows"), ds.get("Columns"))
        where = str(list(ds.get("ImagePositionPatient") or [])) or str(ds.get("InstanceNumber", ""))
        groups.setdefault(key, []).append((f, str(ds.get("SOPInstanceUID", "")), where))
    out = []
    for members in groups.values():
        uids = [m[1] for m in members if m[1]]  # anonymised series may have none
        distinct = len(set(uids)) == len(uids) and len({m[2] for m in members}) == len(members)
        paths = sorted(m[0] for m in members)
        out += [paths] if distinct else [[p] for p in paths]
    return out


def read_dicom_series(folder: Path, files: list[Path] | None = None
                      ) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, str | None, dict]:
    """Read a folder of single-frame DICOM slices → ``(array z,y,x, spacing z,y,x, affine, modality, meta)``.

    Slices are sorted by their position along the slice normal (ImagePositionPatient ·
    normal), falling back to InstanceNumber; ``files`` picks one series of the folder (see
    :func:`series_groups`), by default the largest series is used. The affine maps voxel
    index (x, y, z) to patient LPS millimetres.
    """
    from meditok.data.readers import check_size, max_volume_voxels

    if files is None:
        files = sorted(p for p in folder.iterdir() if p.is_file() and is_dicom(p))
    if not files:
        raise ImageReadError(folder, "folder holds no DICOM files")
    headers = [(f, _read_dataset(f, stop_before_pixels=True)) for f in files]
    series: dict[str, list] = {}
    for f, ds in headers:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    items = max(series.values(), key=len)
    first = items[0][1]
    check_size(folder, (len(items), header_number(first, "Rows", 0, items[0][0], int),
                        header_number(first, "Columns", 0, items[0][0], int)), max_volume_voxels(),
               "voxels")
    normal = _slice_normal(first)

    def position(item: tuple) -> float:
        ds = item[1]
        ipp = ds.get("ImagePositionPatient")
        if normal is not None and ipp is not None:
            try:
                return float(np.dot(np.asarray(ipp, float), normal))
            except (TypeError, ValueError):
                raise ImageReadError(item[0], "DICOM ImagePositionPatient is not three numbers") from None
        return header_number(ds, "InstanceNumber", 0.0, item[0])

    items.sort(key=position)
    first = items[0][1]
    slices = []
    for f, _ in items:
        ds = _read_dataset(f)
        arr = _pixels(ds, f)
        if arr.ndim != 2:
            raise ImageReadError(f, f"expected a single-frame grey slice, got shape {arr.shape}")
        slices.append(hu_or_physical(ds, arr))
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise ImageReadError(folder, f"slices have different sizes {sorted(shapes)}")
    vol = np.stack(slices)
    meta = safe_meta(first)
    row_sp, col_sp = _spacing_pair(first, items[0][0])
    positions = [position(it) for it in items]
    z_sp = float(np.median(np.diff(positions))) if len(items) > 1 and normal is not None else 0.0
    if abs(z_sp) < 1e-6:  # one slice, no positions, or repeated positions: use the thickness
        z_sp = header_number(first, "SliceThickness", 1.0, items[0][0]) or 1.0
    affine = np.eye(4)
    if normal is not None and first.get("ImagePositionPatient") is not None:
        iop = np.asarray(first.ImageOrientationPatient, float)
        affine[:3, 0] = iop[:3] * col_sp
        affine[:3, 1] = iop[3:] * row_sp
        affine[:3, 2] = normal * z_sp
        affine[:3, 3] = np.asarray(first.ImagePositionPatient, float)
    else:
        affine[:3, :3] = np.diag([col_sp, row_sp, z_sp])
    meta["num_slices"] = len(items)
    modality = DICOM_MODALITY.get(str(first.get("Modality", "")).upper())
    return vol, (abs(z_sp), row_sp, col_sp), affine, modality, meta
