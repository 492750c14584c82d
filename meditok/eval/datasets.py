"""Evaluation inputs: manifests, the official MedMNIST npz files and the ISIC folder.

Image files go through :mod:`meditok.data` (``read_image`` + ``to_model_input``) so that the
evaluation sees exactly what the model sees in training and inference. MedMNIST arrays are
already uint8 pixels and are converted here (``x / 255 * 2 - 1``, grey to 3 channels,
bilinear resize), which is the same input contract.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from meditok.errors import ImageReadError, InvalidInputError

from .common import Skipped

MEDMNIST_FILES = {"breastmnist": "breastmnist.npz", "pneumoniamnist": "pneumoniamnist.npz"}
MEDMNIST_CLASSES = {"breastmnist": ["malignant", "normal+benign"],
                    "pneumoniamnist": ["normal", "pneumonia"]}
#: Paper Table 1 column order; other modality names follow in order of appearance.
PAPER_MODALITIES = ["ct", "dermoscopy", "endoscopy", "fundus", "mri", "pathology",
                    "ultrasound", "xray"]
PAPER_MODALITY_LABELS = {"ct": "CT", "dermoscopy": "Dermo.", "endoscopy": "Endo.",
                         "fundus": "Fundus.", "mri": "MRI", "pathology": "Patho.",
                         "ultrasound": "US", "xray": "X-ray"}


@dataclass
class Sample:
    """One evaluation image: where it is and what it is."""

    path: str
    modality: str = "unknown"
    label: str | None = None
    dataset: str | None = None


# ----------------------------------------------------------------------------- manifests
def read_manifest(path: str | Path, split: str | None = None) -> list[Sample]:
    """Rows of a manifest (CSV, or Parquet when pandas/pyarrow are installed) as samples.

    ``identifier`` paths that are relative are resolved against the manifest's folder.
    Rows are filtered on ``split`` when given (and the column exists).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: manifest not found")
    if path.suffix == ".parquet":
        import pandas as pd  # the ``data`` extra

        rows = pd.read_parquet(path).fillna("").astype(str).to_dict("records")
    else:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    if rows and "identifier" not in rows[0]:
        raise InvalidInputError(f"{path}: manifest has no 'identifier' column "
                                f"(columns: {sorted(rows[0])})")
    samples = []
    for row in rows:
        if split and row.get("split") and row["split"] != split:
            continue
        ident = Path(row["identifier"])
        if not ident.is_absolute():
            ident = path.parent / ident
        samples.append(Sample(path=str(ident),
                              modality=(row.get("modality") or "unknown").strip().lower(),
                              label=row.get("label") or None,
                              dataset=row.get("dataset") or None))
    if not samples:
        raise InvalidInputError(f"{path}: no rows" + (f" with split={split!r}" if split else ""))
    return samples


def samples_from_paths(paths: Sequence[str | Path], modality: str = "unknown") -> list[Sample]:
    """Samples for a plain list of image files (or every image in the given folders)."""
    out: list[Sample] = []
    for p in map(Path, paths):
        files = sorted(q for q in p.rglob("*") if q.suffix.lower() in _IMAGE_SUFFIXES) \
            if p.is_dir() else [p]
        out.extend(Sample(path=str(f), modality=modality) for f in files)
    return out


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".gz"}


def order_modalities(names: Sequence[str]) -> list[str]:
    """Paper order first (CT, Dermo., ...), then the others as they appear."""
    uniq = list(dict.fromkeys(names))
    return [m for m in PAPER_MODALITIES if m in uniq] + [m for m in uniq
                                                         if m not in PAPER_MODALITIES]


# ----------------------------------------------------------------------------- loading
def load_tensor(sample: Sample, preprocess) -> torch.Tensor:
    """One image file → ``[3, S, S]`` in ``[-1, 1]`` via :func:`meditok.data.load_image`.

    The modality is passed on so that 16-bit CT PNGs (HU + offset) are windowed.
    """
    from meditok.data.preprocess import load_image

    modality = sample.modality if sample.modality not in ("", "unknown") else None
    return load_image(sample.path, preprocess, modality=modality)


def load_batch(samples: Sequence[Sample], preprocess) -> tuple[torch.Tensor | None,
                                                                list[Sample], list[Skipped]]:
    """Load what can be loaded; bad files are reported as :class:`Skipped`, not raised."""
    tensors, kept, skipped = [], [], []
    for s in samples:
        try:
            tensors.append(load_tensor(s, preprocess))
            kept.append(s)
        except ImageReadError as exc:
            skipped.append(Skipped(s.path, exc.reason))
    return (torch.stack(tensors) if tensors else None), kept, skipped


def uint8_to_input(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 ``[N, H, W]`` or ``[N, H, W, C]`` pixels → ``[N, 3, size, size]`` in ``[-1, 1]``.

    Bilinear resizing (``align_corners=False``), aspect ignored, as the model's contract.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x / 127.5 - 1.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > size)
    return x.clamp(-1.0, 1.0).contiguous()


# ----------------------------------------------------------------------------- datasets
@dataclass
class ArraySplit:
    """A labelled split as raw uint8 pixels (never resized) and integer labels."""

    images: np.ndarray
    labels: np.ndarray


def load_medmnist(root: str | Path, name: str) -> dict[str, ArraySplit]:
    """Official MedMNIST splits (train/val/test) from ``root/<name>.npz``."""
    name = name.lower()
    if name not in MEDMNIST_FILES:
        raise InvalidInputError(f"unknown MedMNIST set {name!r}; known: {sorted(MEDMNIST_FILES)}")
    path = Path(root) / MEDMNIST_FILES[name]
    if not path.is_file():
        raise InvalidInputError(f"{path}: MedMNIST file not found")
    with np.load(path) as data:
        return {s: ArraySplit(data[f"{s}_images"], data[f"{s}_labels"].reshape(-1).astype(int))
                for s in ("train", "val", "test")}


def isic_samples(root: str | Path) -> list[Sample]:
    """ISIC images with their benign/malignant label from the json next to each JPG."""
    root = Path(root)
    out = []
    for jpg in sorted(root.glob("*.jpg")):
        meta = json.loads(jpg.with_suffix(".json").read_text(encoding="utf-8"))
        label = meta["meta"]["clinical"]["benign_malignant"]
        if label in ("benign", "malignant"):
            out.append(Sample(path=str(jpg), modality="dermoscopy", label=label, dataset="isic"))
    if not out:
        raise InvalidInputError(f"{root}: no labelled ISIC images found")
    return out


def isic_split(samples: Sequence[Sample], seed: int = 0,
               fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
               ) -> dict[str, list[Sample]]:
    """Fixed, seeded, stratified train/val/test split (independent of the torch seed)."""
    from sklearn.model_selection import train_test_split

    labels = [s.label for s in samples]
    idx = np.arange(len(samples))
    train, rest = train_test_split(idx, train_size=fractions[0], stratify=labels,
                                   random_state=seed)
    val_share = fractions[1] / (fractions[1] + fractions[2])
    val, test = train_test_split(rest, train_size=val_share,
                                 stratify=[labels[i] for i in rest], random_state=seed)
    return {name: [samples[i] for i in sorted(part)]
            for name, part in (("train", train), ("val", val), ("test", test))}
