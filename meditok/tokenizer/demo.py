"""The README's main job: reconstruct real medical sample images that ship inside registry
packages (pydicom-data, nilearn, nibabel, scikit-image) with the bundled checkpoint."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from meditok.tokenizer.hub import bundled_checkpoint, load_tokenizer
from meditok.tokenizer.jobs import BatchReport, reconstruct_files
from meditok.utils.io import atomic_write_text
from meditok.utils.lazy import package_dir


@dataclass(frozen=True)
class Sample:
    """A real image bundled in an installed package."""

    path: Path
    modality: str  # reader hint: 'ct', 'mri', 'xray', ... (None lets the DICOM header decide)
    description: str


def bundled_samples() -> list[Sample]:
    """Real medical images found in the installed sample-carrying packages (may be empty)."""
    found: list[Sample] = []
    # pydicom ships its small test files; pydicom-data adds the larger ones (looked up
    # locally only: download=False).
    try:
        from pydicom.data import get_testdata_file

        for name, modality, text in [
            ("CT_small.dcm", "ct", "CT slice (pydicom)"),
            ("MR_small.dcm", "mri", "MR slice (pydicom)"),
            ("RG1_UNCI.dcm", "xray", "chest radiograph, CR (pydicom-data)"),
            ("US1_UNCI.dcm", "ultrasound", "ultrasound frame (pydicom-data)"),
        ]:
            path = get_testdata_file(name, download=False)
            if path:
                found.append(Sample(Path(path), modality, text))
    except Exception:  # noqa: BLE001 - absent or broken optional package: no DICOM samples
        pass
    nilearn = package_dir("nilearn")
    if nilearn is not None:
        t1 = nilearn / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        if t1.exists():
            found.append(Sample(t1, "mri", "MNI152 T1 brain MRI template, middle axial slice (nilearn)"))
    skimage = package_dir("skimage")
    if skimage is not None:
        for name, modality, text in [("retina.jpg", "fundus", "fundus photograph (scikit-image)"),
                                     ("ihc.png", "pathology", "IHC-stained tissue section (scikit-image)")]:
            if (skimage / "data" / name).exists():
                found.append(Sample(skimage / "data" / name, modality, text))
    return found


def run_demo(out_dir: str | Path, checkpoint: str | Path | None = None, overwrite: bool = False,
             device: str = "cpu") -> tuple[BatchReport, list[dict]]:
    """Reconstruct every bundled sample into ``out_dir`` (panels, ``metrics.csv``, ``samples.json``)."""
    samples = bundled_samples()
    if not samples:
        raise FileNotFoundError(
            "no bundled sample images found; install them with: pip install 'meditok[samples]'")
    model = load_tokenizer(checkpoint, device)
    modalities = {str(s.path): s.modality for s in samples}
    with torch.inference_mode():
        report, rows = reconstruct_files(model, [s.path for s in samples], out_dir,
                                         overwrite=overwrite, modalities=modalities)
    info = {"checkpoint": str(checkpoint or bundled_checkpoint()), "model": model.config.meta,
            "samples": [{"path": str(s.path), "modality": s.modality, "description": s.description}
                        for s in samples]}
    atomic_write_text(Path(out_dir) / "samples.json", json.dumps(info, indent=2))
    return report, rows
