"""Read any supported medical image file into one in-memory form.

:func:`read_image` returns a 2D :class:`MedicalImage` (PNG/JPEG/TIFF/BMP/GIF 8/16-bit, DICOM,
one slice of a NIfTI/NRRD volume); :func:`read_volume` returns a 3D :class:`Volume` (DICOM
series, NIfTI, NRRD, MHA). :func:`iter_image_files` finds image files in folders. Every failure is an
:class:`~meditok.errors.ImageReadError` naming the file, never a decoder traceback.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from meditok.data.dicom import is_dicom, read_dicom_image, read_dicom_series
from meditok.errors import ImageReadError, MissingDependencyError
from meditok.utils.lazy import require

RASTER_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TIFF_EXTS = (".tif", ".tiff")
DICOM_EXTS = (".dcm", ".dicom", ".ima")
NIFTI_EXTS = (".nii", ".nii.gz")
NRRD_EXTS = (".nrrd", ".nhdr")
ITK_EXTS = (".mha", ".mhd")
IMAGE_EXTS = RASTER_EXTS + TIFF_EXTS + DICOM_EXTS + NIFTI_EXTS + NRRD_EXTS + ITK_EXTS
#: Extensions never sniffed for a DICOM preamble by :func:`iter_image_files`.
NON_IMAGE_EXTS = (".json", ".txt", ".csv", ".md", ".py", ".npz", ".npy", ".yaml", ".yml",
                  ".parquet", ".tar", ".gz", ".zip", ".html", ".pdf", ".xml", ".log")
KINDS = ("uint8", "uint16", "hu", "float")


@dataclass
class MedicalImage:
    """A 2D image in native units.

    Attributes:
        array: float32 ``H x W`` or ``H x W x C`` holding the native values (0..255 for
            ``uint8``, 0..65535 for ``uint16``, Hounsfield units for ``hu``, anything for ``float``).
        kind: one of ``uint8``, ``uint16``, ``hu``, ``float``; decides how
            :func:`meditok.data.preprocess.to_input` scales it.
        modality: hint such as ``ct``, ``mri``, ``xray`` or ``None`` when unknown.
        meta: spacing / orientation / source format; never patient identifiers.
        path: file it came from (for error messages).
    """

    array: np.ndarray
    kind: str
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def channels(self) -> int:
        return 1 if self.array.ndim == 2 else int(self.array.shape[2])


@dataclass
class Volume:
    """A 3D image ``array[z, y, x]`` (float32) with voxel ``spacing`` (z, y, x) in mm.

    ``affine`` is the 4x4 voxel-index (x, y, z) → world matrix, in the ``world`` convention
    (``'RAS'`` for NIfTI, whose axes are reoriented so x→L, y→P, z→S and axial slices
    display anterior-up; ``'LPS'`` for DICOM series, NRRD in LPS space and ITK images).
    ``source`` keeps what is needed to write results back in the file's own voxel order
    (NIfTI: its affine, header and orientation; see :func:`meditok.data.volumes.to_nifti`).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    world: str = "LPS"
    source: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "hu" if self.modality == "ct" else "float"

    def slice(self, index: int | None = None, axis: int = 0) -> MedicalImage:
        """One 2D plane (default: the middle axial slice)."""
        n = self.array.shape[axis]
        idx = n // 2 if index is None else index
        if not -n <= idx < n:
            raise ImageReadError(self.path or "<volume>", f"slice {idx} out of range for {n} slices")
        arr = np.ascontiguousarray(np.take(self.array, idx, axis=axis))
        sp = [s for i, s in enumerate(self.spacing) if i != axis]
        meta = {**self.meta, "spacing": sp, "slice_index": idx % n, "slice_axis": axis}
        return _checked(MedicalImage(arr.astype(np.float32), self.kind, self.modality, meta, self.path))


def _ext(path: Path) -> str:
    name = path.name.lower()
    for double in (".nii.gz",):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def _checked(img: MedicalImage) -> MedicalImage:
    """Shared sanity checks: non-empty, at least 2x2, finite."""
    a = img.array
    path = img.path or "<array>"
    if a.ndim not in (2, 3) or a.size == 0:
        raise ImageReadError(path, f"expected a 2D image, got array of shape {a.shape}")
    if min(a.shape[:2]) < 2:
        raise ImageReadError(path, f"image is {a.shape[1]}x{a.shape[0]} pixels; too small to be an image")
    if not np.isfinite(a).all():
        raise ImageReadError(path, "image contains NaN or infinite values")
    if img.kind not in KINDS:
        raise ImageReadError(path, f"unknown image kind {img.kind!r}")
    return img


#: PNG text key under which 16-bit CT PNGs record their HU offset (see
#: :func:`meditok.data.volumes.save_ct_png`), so that every reader knows they hold HU.
CT_OFFSET_KEY = "meditok:ct_offset"


def _from_pil(path: Path, source: Any = None) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Decode with Pillow from ``path`` (or the file object ``source``) → (array, kind, meta)."""
    from PIL import Image, UnidentifiedImageError

    meta: dict[str, Any] = {}
    try:
        with Image.open(source if source is not None else path) as im:
            im.load()  # decode now so truncation surfaces here
            mode = im.mode
            if mode in ("1", "L", "RGB", "RGBA"):
                arr = np.asarray(im.convert("L") if mode == "1" else im)
            elif mode == "LA":
                arr = np.asarray(im.convert("L"))
            elif mode == "P":
                arr = np.asarray(im.convert("RGBA" if "transparency" in im.info else "RGB"))
            elif mode.startswith("I;16") or mode == "I":
                arr = np.asarray(im).astype(np.int64)
            elif mode == "F":
                arr = np.asarray(im)
            else:  # CMYK, YCbCr, LAB, HSV ...
                arr = np.asarray(im.convert("RGB"))
            offset = im.info.get(CT_OFFSET_KEY)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(path, f"cannot decode image ({exc})") from None
    arr, kind = _native(arr, path)
    if offset is not None and kind == "uint16" and arr.ndim == 2:
        try:
            meta["ct_offset"] = int(offset)
        except ValueError:
            pass  # a foreign text chunk under our key: ignore it
    return arr, kind, meta


def decode_image_bytes(data: bytes, name: str) -> MedicalImage:
    """A PNG/JPEG/TIFF held in memory (a WebDataset shard member) → :class:`MedicalImage`."""
    import io

    arr, kind, meta = _from_pil(Path(name), io.BytesIO(data))
    return _checked(MedicalImage(arr, kind, None, meta, name))


def _native(arr: np.ndarray, path: Path) -> tuple[np.ndarray, str]:
    """Integer/float raw array → (float32 array, kind)."""
    if arr.dtype == np.uint8 or arr.dtype == bool:
        return arr.astype(np.float32), "uint8"
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo >= 0 and hi <= 65535:
            return arr.astype(np.float32), "uint16"
        return arr.astype(np.float32), "float"
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32), "float"
    raise ImageReadError(path, f"unsupported pixel type {arr.dtype}")


def _from_tiff(path: Path) -> tuple[np.ndarray, str]:
    try:
        tifffile = require("tifffile", "io")
    except MissingDependencyError:
        return _from_pil(path)[:2]
    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            arr = page.asarray()
            planar_separate = int(getattr(page, "planarconfig", 1)) == 2
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        try:
            return _from_pil(path)[:2]
        except ImageReadError:
            raise ImageReadError(path, f"cannot decode TIFF ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3 and planar_separate:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ImageReadError(path, f"TIFF page has unsupported shape {arr.shape}")
    return _native(arr, path)


def _nifti_volume(path: Path) -> Volume:
    nib = require("nibabel", "io")
    try:
        src = nib.load(str(path))
        img = nib.as_closest_canonical(src)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise ImageReadError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise ImageReadError(path, f"expected a 3D NIfTI volume, got shape {data.shape}")
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
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
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img).astype(np.float32)
    except Exception as exc:
        raise ImageReadError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ImageReadError(path, f"expected a 3D grey volume, got shape {arr.shape}")
    sx, sy, sz = img.GetSpacing()[:3]
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(img.GetDirection(), float).reshape(3, 3) * np.array([sx, sy, sz])
    affine[:3, 3] = img.GetOrigin()[:3]
    return Volume(arr, (sz, sy, sx), affine, None, {"format": "itk"}, str(path))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a directory (use read_volume for a DICOM series)")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")


def read_volume(path: str | Path, modality: str | None = None) -> Volume:
    """Read a 3D volume: a DICOM series folder, NIfTI, NRRD or MHA/MHD file.

    Args:
        path: file, or folder of DICOM slices (sorted by ImagePositionPatient).
        modality: override the modality hint (``ct`` makes values be treated as HU).
    """
    path = Path(path)
    if path.is_dir():
        arr, spacing, affine, mod, meta = read_dicom_series(path)
        vol = Volume(arr, spacing, affine, mod, {"format": "dicom", **meta}, str(path))
    else:
        _check_file(path)
        ext = _ext(path)
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


def read_image(path: str | Path, *, modality: str | None = None,
               slice_index: int | None = None) -> MedicalImage:
    """Read one 2D image in native units (no intensity mapping: see :mod:`meditok.data.preprocess`).

    Args:
        path: PNG/JPEG/TIFF/BMP/GIF/WebP, DICOM (any name; detected by its preamble), or a
            NIfTI/NRRD/MHA volume (its middle axial slice, or ``slice_index``).
        modality: hint to attach (``ct`` turns a NIfTI/NRRD volume into HU values).
        slice_index: axial slice of a volume / frame of a multi-frame DICOM.

    Raises:
        ImageReadError: missing, empty, truncated, undecodable, unsupported, 1x1 or non-finite.
    """
    path = Path(path)
    _check_file(path)
    ext = _ext(path)
    if ext not in IMAGE_EXTS and is_dicom(path):
        ext = ".dcm"
    reader = _READERS.get(ext)
    if reader is None:
        if ext == ".npz":
            raise ImageReadError(path, "a .npz holds many images; use meditok.data.benchmarks.iter_medmnist")
        raise ImageReadError(path, f"unsupported file type {ext or '(no extension, not DICOM)'}")
    return reader(path, modality, slice_index)


# ----------------------------------------------------------------------------- reader registry
#: A reader turns (path, modality hint, slice/frame index) into a checked MedicalImage.
Reader = Callable[[Path, "str | None", "int | None"], MedicalImage]
_READERS: dict[str, Reader] = {}


def register_reader(extensions: Sequence[str], reader: Reader) -> None:
    """Make :func:`read_image` handle files with these (lower-case, dotted) extensions."""
    for ext in extensions:
        _READERS[ext.lower()] = reader


def _read_raster(path: Path, modality: str | None, slice_index: int | None) -> MedicalImage:
    ext = _ext(path)
    if ext in TIFF_EXTS:
        arr, kind = _from_tiff(path)
        meta: dict[str, Any] = {}
    else:
        arr, kind, meta = _from_pil(path)
    meta["format"] = "tiff" if ext in TIFF_EXTS else ext.lstrip(".")
    return _checked(MedicalImage(arr, kind, modality, meta, str(path)))


def _read_dicom(path: Path, modality: str | None, slice_index: int | None) -> MedicalImage:
    arr, kind, mod, meta = read_dicom_image(path, slice_index)
    meta["format"] = "dicom"
    return _checked(MedicalImage(arr, kind, modality or mod, meta, str(path)))


def _read_volume_slice(path: Path, modality: str | None, slice_index: int | None) -> MedicalImage:
    return read_volume(path, modality).slice(slice_index)


register_reader(RASTER_EXTS + TIFF_EXTS, _read_raster)
register_reader(DICOM_EXTS, _read_dicom)
register_reader(NIFTI_EXTS + NRRD_EXTS + ITK_EXTS, _read_volume_slice)


def iter_image_files(inputs: list[str | Path] | str | Path, recursive: bool = True) -> list[Path]:
    """Supported image files among ``inputs`` (files and/or folders), sorted, de-duplicated.

    Extension-less (or oddly named) files are included when they carry the DICOM preamble.
    Hidden files are skipped. A missing input raises :class:`ImageReadError`.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: dict[Path, None] = {}
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise ImageReadError(p, "no such file or directory")
        if p.is_file():
            found[p] = None
            continue
        walker = p.rglob("*") if recursive else p.glob("*")
        for f in sorted(walker):
            if not f.is_file() or f.name.startswith("."):
                continue
            ext = _ext(f)
            if ext in IMAGE_EXTS or (ext not in NON_IMAGE_EXTS and is_dicom(f)):
                found[f] = None
    return list(found)


__all__ = ["MedicalImage", "Volume", "read_image", "read_volume",
           "iter_image_files", "decode_image_bytes", "register_reader", "IMAGE_EXTS", "KINDS"]
