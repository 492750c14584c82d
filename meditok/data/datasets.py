"""Map-style training dataset over a corpus manifest.

Each item is ``{'image': [3,S,S] in [-1,1], 'caption', 'label' (-1 if none), 'modality',
'identifier'}``. CT rows stored as 16-bit ``HU + ct_offset`` PNGs are read back in HU
(:func:`meditok.data.preprocess.interpret`) and windowed by the random CT-window
augmentation (train) or the fixed ``pre.ct_window`` (eval).

**Bad files at training time.** A file that fails to read (``ImageReadError``) must not
kill a long run: the dataset warns once per file, counts it in ``self.failures`` (per
process: each DataLoader worker has its own copy) and returns the next index instead, trying
at most ``max_skip`` consecutive items before raising. Evaluation datasets (``train=False``)
raise immediately, since silently changing an evaluation set would bias the metric.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from meditok.data.manifest import read_manifest
from meditok.data.preprocess import (PreprocessConfig, interpret, scale_intensity,
                                     to_channels_first, to_input)
from meditok.data.readers import MedicalImage, read_image
from meditok.data.transforms import AugmentConfig, train_transform
from meditok.errors import ImageReadError

log = logging.getLogger(__name__)


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values, else the initialised ``torch.distributed`` group, else ``(0, 1)``."""
    if rank is not None and world_size is not None:
        return rank, world_size
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def image_to_sample_tensor(img: MedicalImage, pre: PreprocessConfig, modality: str | None = None,
                           aug: AugmentConfig | None = None,
                           gen: torch.Generator | None = None) -> torch.Tensor:
    """MedicalImage → ``[3, S, S]``: random transform with ``aug``, else the deterministic
    contract (exactly :func:`meditok.data.preprocess.to_input`)."""
    img = interpret(img, modality, pre)
    if aug is None:
        return to_input(img, pre)
    is_hu = img.kind == "hu"
    if is_hu:
        t = torch.from_numpy(np.ascontiguousarray(img.array, np.float32))[None]
    else:
        t = to_channels_first(scale_intensity(img, pre), img.path, pre.channel_policy)
    return train_transform(t, pre, is_hu, aug, gen)


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """Independent, reproducible random stream per (seed, epoch, item)."""
    g = torch.Generator()
    g.manual_seed(zlib.crc32(f"{seed}:{epoch}:{index}".encode()) + (seed << 32))
    return g


class ManifestDataset(Dataset):
    """Images of a manifest (CSV/Parquet path or list of rows).

    Args:
        manifest: manifest file or rows with the :data:`~meditok.data.manifest.COLUMNS`.
        pre: preprocessing contract (size, CT window, CT offset).
        train: training semantics (unreadable files are skipped and counted) and, unless
            ``augment`` is false, random augmentation seeded per item and epoch; otherwise
            the deterministic contract of :func:`meditok.data.preprocess.to_input`.
        root: folder identifiers are relative to (default: the manifest's folder).
        split: keep only rows of this split (``None``: all).
        rank, world_size: keep only rows ``rank::world_size`` (disjoint DDP shards without a
            sampler); default: all rows (use a ``DistributedSampler`` instead).
    """

    def __init__(self, manifest: str | Path | list[dict], pre: PreprocessConfig, train: bool,
                 root: str | Path | None = None, split: str | None = None, seed: int = 0,
                 aug: AugmentConfig | None = None, rank: int | None = None,
                 world_size: int | None = None, max_skip: int = 16, augment: bool = True):
        if isinstance(manifest, (str, Path)):
            rows = read_manifest(manifest)
            root = Path(root) if root is not None else Path(manifest).parent
        else:
            rows = [dict(r) for r in manifest]
            root = Path(root) if root is not None else Path(".")
        if split is not None:
            rows = [r for r in rows if r["split"] == split]
        if rank is not None and world_size is not None:
            rows = rows[rank::world_size]
        self.rows, self.root, self.pre, self.train = rows, root, pre, train
        self.seed, self.max_skip = seed, max_skip
        self.aug = (aug or AugmentConfig()) if train and augment else None
        self.epoch = 0
        self.failures: dict[str, str] = {}

    def set_epoch(self, epoch: int) -> None:
        """New random augmentation stream per epoch (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> dict[str, Any]:
        """Read and transform one row; raises ImageReadError on a bad file."""
        row = self.rows[index]
        path = Path(row["identifier"])
        path = path if path.is_absolute() else self.root / path
        gen = item_generator(self.seed, self.epoch, index) if self.aug is not None else None
        image = image_to_sample_tensor(read_image(path), self.pre, row["modality"], self.aug, gen)
        label = row.get("label", -1)
        return {"image": image, "caption": str(row.get("caption", "")),
                "label": int(label) if label not in ("", None) else -1,
                "modality": str(row["modality"]), "identifier": str(row["identifier"])}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.train:
            return self.load(index)
        for step in range(self.max_skip):
            i = (index + step) % len(self.rows)
            try:
                return self.load(i)
            except ImageReadError as exc:
                if exc.path not in self.failures:
                    log.warning("skipping unreadable training image %s", exc)
                self.failures[exc.path] = exc.reason
        raise ImageReadError(self.rows[index]["identifier"],
                             f"{self.max_skip} consecutive unreadable images from here on")


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and labels; keep strings as lists."""
    return {"image": torch.stack([it["image"] for it in items]),
            "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
            "caption": [it["caption"] for it in items],
            "modality": [it["modality"] for it in items],
            "identifier": [it["identifier"] for it in items]}
