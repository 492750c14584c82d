"""3D readers: NIfTI, NRRD, MHA/MHD and DICOM series folders → :class:`~meditok.data.readers.Volume`.

Every reader checks the voxel count from the header *before* loading the data
(:func:`meditok.data.readers.check_size`), so a file that claims billions of voxels is refused
with a clear error instead of exhausting memory. Re-exported as
:func:`meditok.data.readers.read_volume`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from meditok.data.dicom import read_dicom_series
from meditok.data.readers import (ITK_EXTS, NIFTI_EXTS, NRRD_EXTS, Volume, check_file, check_size,
                                  file_ext, max_volume_voxels)
from meditok.errors import ImageReadError
from meditok.utils.lazy import require


def _nifti_volume(path: Path) -> Volume:
    nib = require("nibabel", "io")
    try:
        src = nib.load(str(path))
    except Exception as exc:
        raise ImageReadError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    shape = tuple(int(s) for s in src.shape)
    check_size(path, shape, max_volume_voxels(), "voxels")
    try:
        img = nib.as_closest_canonical(src)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise ImageReadError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:  # a single slice stored as NIfTI: a volume of depth 1
        data = data[..., None]
    if data.ndim != 3:
        raise ImageReadError(path, f"expected a 3D NIfTI volume, got shape {data.shape}")
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))  # 2-D files record two zooms only
    # Canonical RAS (i→R, j→A, k→S), then flip i and j so that index axes run x→L, y→P,
    # z→S like an axial DICOM series: slices then display anterior-up, patient-right-left.
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    affine = np.asarray(img.affine, float) @ flip
    arr = np.ascontiguousarray(data[::-1, ::-1, :].transpose(2, 1, 0))  # array[z, y, x]
    orient = nib.orientations
    # canonical RAS voxel order → the file's own voxel order (for writing results back)
    back = orient.ornt_transform(orient.axcodes2ornt(("R", "A", "S")),
                                 orient.axcodes2ornt(orient.aff2axcodes(src.affine)))
    source = {"affine": np.asarray(src.affine, float), "header": src.header.copy(),
              "to_source_ornt": back, "canonical_shape": tuple(int(s) for s in data.shape)}
    return Volume(arr, (zooms[2], zooms[1], zooms[0]), affine, None,
                  {"format": "nifti", "orientation": "LPS"}, str(path), "RAS", source)


def _nrrd_volume(path: Path) -> Volume:
    nrrd = require("nrrd", "io", package="pynrrd")
    try:
        header = nrrd.read_header(str(path))
        sizes = tuple(int(s) for s in header.get("sizes", ()))
    except Exception as exc:
        raise ImageReadError(path, f"cannot read NRRD ({type(exc).__name__}: {exc})") from None
    check_size(path, sizes, max_volume_voxels(), "voxels")
    try:
        data, header = nrrd.read(str(path))
    except Exception as exc:
        raise ImageReadError(path, f"cannot read NRRD ({type(exc).__name__}: {exc})") from None
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise ImageReadError(path, f"expected a 3D NRRD volume, got shape {data.shape}")
    dirs = header.get("space directions")
    affine = np.eye(4)
    if dirs is not None and np.asarray(dirs, dtype=float).shape == (3, 3):
        d = np.asarray(dirs, dtype=float)
        affine[:3, :3] = d.T
        spacing_xyz = np.linalg.norm(d, axis=1)
    else:
        spacing_xyz = np.asarray(header.get("spacings", [1.0, 1.0, 1.0]), dtype=float)
    if header.get("space origin") is not None:
        affine[:3, 3] = np.asarray(header["space origin"], dtype=float)
    arr = np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0))
    space = str(header.get("space", ""))
    meta = {"format": "nrrd", "space": space}
    world = "RAS" if space.lower() in ("right-anterior-superior", "ras", "scanner-xyz") else "LPS"
    return Volume(arr, tuple(float(s) for s in spacing_xyz[::-1]), affine, None, meta, str(path),
                  world)


def _itk_volume(path: Path) -> Volume:
    sitk = require("SimpleITK", "io", package="simpleitk")
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = tuple(int(s) for s in reader.GetSize()) + (int(reader.GetNumberOfComponents()),)
    except Exception as exc:
        raise ImageReadError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None
    check_size(path, size, max_volume_voxels(), "voxels")
    try:
        img = reader.Execute()
        arr = sitk.GetArrayFromImage(img).astype(np.float32)
    except Exception as exc:
        raise ImageReadError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ImageReadError(path, f"expected a 3D grey volume, got shape {arr.shape}")
    sx, sy, sz = (list(img.GetSpacing()) + [1.0])[:3]
    affine = np.eye(4)
    direction = np.asarray(img.GetDirection(), float)
    if direction.size == 9:
        affine[:3, :3] = direction.reshape(3, 3) * np.array([sx, sy, sz])
        affine[:3, 3] = img.GetOrigin()[:3]
    return Volume(arr, (sz, sy, sx), affine, None, {"format": "itk"}, str(path))


def read_volume(path: str | Path, modality: str | None = None,
                files: list[Path] | None = None) -> Volume:
    """Read a 3D volume: a DICOM series folder, NIfTI, NRRD or MHA/MHD file.

    Args:
        path: file, or folder of DICOM slices (sorted by ImagePositionPatient).
        modality: override the modality hint (``ct`` makes values be treated as HU).
        files: for a folder, the DICOM files of one series (default: the largest series).
    """
    path = Path(path)
    if path.is_dir():
        arr, spacing, affine, mod, meta = read_dicom_series(path, files)
        vol = Volume(arr, spacing, affine, mod, {"format": "dicom", **meta}, str(path))
    else:
        check_file(path)
        ext = file_ext(path)
        if ext in NIFTI_EXTS:
            vol = _nifti_volume(path)
        elif ext in NRRD_EXTS:
            vol = _nrrd_volume(path)
        elif ext in ITK_EXTS:
            vol = _itk_volume(path)
        else:
            raise ImageReadError(path, f"unsupported volume format {ext or '(no extension)'}; "
                                       "expected a DICOM folder, .nii(.gz), .nrrd or .mha")
    if modality is not None:
        vol.modality = modality
    if vol.array.size == 0 or not np.isfinite(vol.array).all():
        raise ImageReadError(path, "volume is empty or contains NaN/infinite values")
    return vol
