"""Benchmark inputs: manifest samples, the official MedMNIST npz files and the ISIC folder.

Image files go through :func:`meditok.data.preprocess.load_image` so that a benchmark sees
exactly what the model sees in training and inference; MedMNIST arrays (raw uint8 pixels)
go through :func:`meditok.data.preprocess.uint8_to_input`, the same contract.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from meditok.data.modalities import modality_key
from meditok.data.readers import MedicalImage, _check_file, _checked, _native
from meditok.errors import ImageReadError, InvalidInputError
from meditok.utils.results import Skipped

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
def samples_from_manifest(path: str | Path, split: str | None = None) -> list[Sample]:
    """Rows of a corpus manifest (:func:`meditok.data.manifest.read_manifest`) as samples.

    Relative ``identifier`` paths are resolved against the manifest's folder; rows are
    filtered on ``split`` when given.
    """
    from meditok.data.manifest import read_manifest

    path = Path(path)
    rows = read_manifest(path)
    samples = []
    for row in rows:
        if split and row.get("split") and row["split"] != split:
            continue
        ident = Path(row["identifier"])
        if not ident.is_absolute():
            ident = path.parent / ident
        samples.append(Sample(path=str(ident), modality=modality_key(row.get("modality")) or "unknown",
                              label=str(row["label"]) if row.get("label", -1) != -1 else None,
                              dataset=row.get("dataset") or None))
    if not samples:
        raise InvalidInputError(f"{path}: no rows" + (f" with split={split!r}" if split else ""))
    return samples


def samples_from_paths(paths: Sequence[str | Path], modality: str = "unknown") -> list[Sample]:
    """Samples for a plain list of image files (or every image file in the given folders)."""
    from meditok.data.readers import iter_image_files

    key = modality_key(modality) or "unknown"
    return [Sample(path=str(f), modality=key) for f in iter_image_files(list(paths))]


def order_modalities(names: Sequence[str]) -> list[str]:
    """Paper order first (CT, Dermo., ...), then the others as they appear."""
    uniq = list(dict.fromkeys(names))
    return [m for m in PAPER_MODALITIES if m in uniq] + [m for m in uniq
                                                         if m not in PAPER_MODALITIES]


# ----------------------------------------------------------------------------- loading
def load_batch(samples: Sequence[Sample], preprocess) -> tuple[torch.Tensor | None,
                                                                list[Sample], list[Skipped]]:
    """Load what can be loaded (:func:`meditok.data.preprocess.load_image`, with each sample's
    modality); bad files are reported as :class:`Skipped`, not raised."""
    from meditok.data.preprocess import load_image

    tensors, kept, skipped = [], [], []
    for s in samples:
        try:
            tensors.append(load_image(s.path, preprocess, modality=s.modality))
            kept.append(s)
        except ImageReadError as exc:
            skipped.append(Skipped(s.path, exc.reason))
    return (torch.stack(tensors) if tensors else None), kept, skipped


# ----------------------------------------------------------------------------- datasets
def iter_medmnist(path: str | Path, split: str | None = None) -> Iterator[tuple[str, int, MedicalImage, int]]:
    """Yield ``(split, index, image, label)`` from a MedMNIST ``.npz`` (keys ``{split}_images``).

    ``label`` is the first label column as int (-1 when the file has no labels).
    """
    path = Path(path)
    _check_file(path)
    try:
        data = np.load(path)
        keys = set(data.files)
    except Exception as exc:
        raise ImageReadError(path, f"cannot read .npz ({type(exc).__name__}: {exc})") from None
    splits = [split] if split else [s for s in ("train", "val", "test") if f"{s}_images" in keys]
    if not splits or any(f"{s}_images" not in keys for s in splits):
        raise ImageReadError(path, f"not a MedMNIST file: keys {sorted(keys)}")
    for s in splits:
        try:
            images = data[f"{s}_images"]
            labels = data[f"{s}_labels"] if f"{s}_labels" in keys else None
        except Exception as exc:
            raise ImageReadError(path, f"cannot read split {s} ({type(exc).__name__}: {exc})") from None
        for i in range(len(images)):
            label = int(np.asarray(labels[i]).reshape(-1)[0]) if labels is not None else -1
            arr, kind = _native(images[i], path)
            yield s, i, _checked(MedicalImage(arr, kind, None, {"format": "medmnist", "split": s},
                                              f"{path}:{s}:{i}")), label


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
