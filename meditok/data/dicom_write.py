"""Write a volume as a DICOM series with fresh UIDs and no identifiers (pydicom).

Results of a tokenizer (decoded token volumes) are new images: they get new Study, Series,
SOP Instance and Frame of Reference UIDs, and the patient module is present but empty (type 2
attributes, zero length) — nothing of the source's header is copied. The geometry (position,
orientation, pixel spacing, slice spacing) comes from the volume's LPS affine, so the series
reads back (:func:`meditok.data.readers.read_volume`) on the same voxel grid.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from meditok.utils.io import atomic_path
from meditok.utils.lazy import require

_SOP = {"ct": "1.2.840.10008.5.1.4.1.1.2", "mri": "1.2.840.10008.5.1.4.1.1.4"}
_SECONDARY = "1.2.840.10008.5.1.4.1.1.7"
_MODALITY = {"ct": "CT", "mri": "MR"}


def lps_affine(affine: np.ndarray, world: str) -> np.ndarray:
    """Voxel (x, y, z) → LPS matrix of an affine in ``world`` (``'RAS'`` or ``'LPS'``)."""
    a = np.asarray(affine, float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a if world == "RAS" else a


def write_dicom_series(out_dir: str | Path, array_zyx: np.ndarray, affine: np.ndarray,
                       world: str = "LPS", modality: str | None = None,
                       description: str = "meditok reconstruction") -> list[Path]:
    """Write ``array_zyx`` (native units; CT in HU) as ``out_dir/slice0000.dcm`` …, atomically
    per file. CT is stored as signed 16-bit HU; other modalities are mapped linearly onto
    0…4095 with RescaleSlope/Intercept giving back their native values."""
    pydicom = require("pydicom", "io")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(array_zyx, np.float64)
    if arr.ndim != 3:
        raise ValueError(f"expected a [z, y, x] volume, got shape {arr.shape}")
    lps = lps_affine(affine, world)
    col_vec, row_vec, slice_vec = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    col_sp, row_sp = float(np.linalg.norm(col_vec)), float(np.linalg.norm(row_vec))
    z_sp = float(np.linalg.norm(slice_vec))
    iop = [*(col_vec / col_sp), *(row_vec / row_sp)]
    if modality == "ct":
        stored, slope, intercept, signed = np.clip(np.rint(arr), -32768, 32767), 1.0, 0.0, True
    else:
        lo, hi = float(arr.min()), float(arr.max())
        slope = (hi - lo) / 4095.0 if hi > lo else 1.0
        intercept, signed = lo, False
        stored = np.clip(np.rint((arr - lo) / slope), 0, 4095)
    stored = stored.astype(np.int16 if signed else np.uint16)
    sop_class = _SOP.get(modality or "", _SECONDARY)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    now = datetime.datetime.now()
    out_dir = Path(out_dir)
    written = []
    for k in range(arr.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        # patient / study identification: present (type 2) but empty
        for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            setattr(ds, key, "")
        ds.Modality = _MODALITY.get(modality or "", "OT")
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
        ds.SeriesDescription = description
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [row_sp, col_sp]
        ds.SliceThickness = z_sp
        ds.SpacingBetweenSlices = z_sp
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        if ds.Modality == "MR":
            ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "RM", "NONE", "2D"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = out_dir / f"slice{k:04d}.dcm"
        with atomic_path(path) as tmp:
            pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
        written.append(path)
    return written
