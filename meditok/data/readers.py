"""Read any supported medical image file into one in-memory form.

:func:`read_image` returns a 2D :class:`MedicalImage` (PNG/JPEG/TIFF/BMP/GIF 8/16-bit, DICOM,
one slice of a NIfTI/NRRD volume); :func:`read_volume` returns a 3D :class:`Volume` (DICOM
series, NIfTI, NRRD, MHA; :mod:`meditok.data.volume_readers`). :func:`iter_image_files` finds
image files in folders. Every failure is an :class:`~meditok.errors.ImageReadError` naming the
file, never a decoder traceback.

Size limits are explicit and checked from the header before decoding: :data:`MAX_IMAGE_PIXELS`
(100 M pixels per 2D image or multi-frame file; ``MEDITOK_MAX_IMAGE_PIXELS``) replaces Pillow's
implicit decompression-bomb limit, :data:`MAX_VOLUME_VOXELS` (600 M voxels;
``MEDITOK_MAX_VOLUME_VOXELS``) bounds volumes.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from meditok.data.dicom import is_dicom, read_dicom_image
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

#: Largest 2D image decoded (pixels, width x height; frames x rows x columns for a multi-frame
#: DICOM). Replaces Pillow's implicit decompression-bomb limit with one explicit, documented
#: limit that every reader applies *before* decoding: 100 Mpx (a 10000 x 10000 image, 1.2 GB
#: as float32 RGB) covers radiographs and mammograms (<= 30 Mpx) with room to spare; a file
#: whose header claims more is refused with a clear error. Override with the environment
#: variable ``MEDITOK_MAX_IMAGE_PIXELS``.
MAX_IMAGE_PIXELS = 100_000_000
#: Largest volume read (voxels): 600 M (a 512 x 512 x 2300 CT, 2.4 GB as float32).
#: Override with ``MEDITOK_MAX_VOLUME_VOXELS``.
MAX_VOLUME_VOXELS = 600_000_000


def _limit(env: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(env, default)))
    except ValueError:
        return default


def max_image_pixels() -> int:
    """The pixel limit in force (:data:`MAX_IMAGE_PIXELS` or ``MEDITOK_MAX_IMAGE_PIXELS``)."""
    return _limit("MEDITOK_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS)


def max_volume_voxels() -> int:
    """The voxel limit in force (:data:`MAX_VOLUME_VOXELS` or ``MEDITOK_MAX_VOLUME_VOXELS``)."""
    return _limit("MEDITOK_MAX_VOLUME_VOXELS", MAX_VOLUME_VOXELS)


def check_size(path: str | Path, shape: Sequence[int], limit: int, unit: str = "pixels") -> None:
    """Refuse (``ImageReadError``) a file whose header claims more than ``limit`` elements."""
    n = 1
    for s in shape:
        n *= max(int(s), 1)
    if n > limit:
        dims = " x ".join(str(int(s)) for s in shape)
        env = "MEDITOK_MAX_IMAGE_PIXELS" if unit == "pixels" else "MEDITOK_MAX_VOLUME_VOXELS"
        raise ImageReadError(path, f"header claims {dims} = {n / 1e6:.0f} M {unit}, above the "
                                   f"limit of {limit / 1e6:.0f} M {unit} (a decompression bomb or "
                                   f"a damaged header; set {env} to read larger files)")


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


def file_ext(path: Path) -> str:
    """Lower-case extension, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    for double in (".nii.gz",):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def check_file(path: Path) -> None:
    """Refuse a missing, directory or empty path with a clear :class:`ImageReadError`."""
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a directory (use read_volume for a DICOM series)")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")


_ext = file_ext          # former private names, still imported by older modules
_check_file = check_file


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
        with warnings.catch_warnings():
            # Our own limit (max_image_pixels) is checked below, before decoding; Pillow's
            # warning between its limit and twice it would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source if source is not None else path)
    except Image.DecompressionBombError as exc:
        import re

        found = re.search(r"\((\d+) pixels\)", str(exc))
        claimed = f"{int(found.group(1)) / 1e6:.0f} M" if found else "more"
        raise ImageReadError(path, f"header claims {claimed} pixels, above the limit of "
                                   f"{max_image_pixels() / 1e6:.0f} M pixels (a decompression bomb "
                                   "or a damaged header; Pillow refuses it too)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(path, f"cannot decode image ({exc})") from None
    check_size(path, (im.size[1], im.size[0]), max_image_pixels())
    try:
        with im:
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
            shape = tuple(page.shape)
            if len(shape) >= 2:
                check_size(path, shape[:2] if len(shape) == 3 and shape[2] <= 4 else shape,
                           max_image_pixels())
            arr = page.asarray()
            planar_separate = int(getattr(page, "planarconfig", 1)) == 2
    except ImageReadError:
        raise
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
    check_file(path)
    ext = file_ext(path)
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
    ext = file_ext(path)
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


def read_volume(path: str | Path, modality: str | None = None,
                files: list[Path] | None = None) -> Volume:
    """Read a 3D volume: a DICOM series folder (``files``: one series of it, default the
    largest), NIfTI, NRRD or MHA/MHD file (see :mod:`meditok.data.volume_readers`).

    ``modality`` overrides the modality hint (``ct`` makes values be treated as HU).
    """
    from meditok.data.volume_readers import read_volume as _read

    return _read(path, modality, files)


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
            ext = file_ext(f)
            if ext in IMAGE_EXTS or (ext not in NON_IMAGE_EXTS and is_dicom(f)):
                found[f] = None
    return list(found)


__all__ = ["MedicalImage", "Volume", "read_image", "read_volume",
           "iter_image_files", "decode_image_bytes", "register_reader", "IMAGE_EXTS", "KINDS"]
