"""Training / validation data for the trainer, with an exactly resumable position.

The training order is a seeded permutation per epoch, split into rank-disjoint strided
slices (like ``DistributedSampler``, ``drop_last``). A checkpoint stores ``(epoch,
batches consumed in the epoch)``; on resume the sampler starts at that batch, so the
resumed run sees exactly the images (and, because the dataset seeds its augmentation per
``(seed, epoch, index)``, exactly the augmentations) the uninterrupted run would have seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from meditok.data.preprocess import PreprocessConfig
from meditok.engine.sampler import ResumableSampler
from meditok.tokenizer.train.config import TrainConfig


@dataclass
class TrainData:
    dataset: Dataset
    sampler: ResumableSampler
    batch_size: int
    num_workers: int
    seed: int

    def epoch_loader(self, epoch: int, start_batch: int) -> DataLoader:
        """A loader over the rest of ``epoch`` starting at batch ``start_batch``."""
        from meditok.data.datasets import collate

        self.sampler.set_position(epoch, start_batch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        # A private generator: creating the iterator must not consume the global RNG, or a
        # resumed run (iterator created mid-epoch) would drift from the uninterrupted one.
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                          num_workers=self.num_workers, collate_fn=collate, drop_last=True,
                          pin_memory=torch.cuda.is_available(), generator=g,
                          persistent_workers=False)


class ShardTrainData:
    """WebDataset shards (``data.shards``): fixed shard order, rank/worker-disjoint samples.

    An epoch is capped at ``num_samples // world_size // batch_size`` batches so every rank
    takes the same number of steps; resuming skips the batches already consumed in the epoch.
    """

    def __init__(self, dataset: Any, batch_size: int, num_workers: int, seed: int, world_size: int):
        self.dataset, self.batch_size, self.num_workers, self.seed = dataset, batch_size, num_workers, seed
        per_epoch = dataset.num_samples // world_size // batch_size
        if per_epoch == 0:
            raise ValueError(f"{dataset.shard_dir}: fewer samples than one batch per process")
        self.sampler = type("ShardPosition", (), {"batches_per_epoch": per_epoch})()

    def epoch_loader(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        import itertools

        from meditok.data.datasets import collate

        self.dataset.set_epoch(epoch)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=collate, drop_last=True, pin_memory=torch.cuda.is_available())
        return itertools.islice(loader, start_batch, self.sampler.batches_per_epoch)


def _manifest_rows(cfg: TrainConfig, split: str) -> list[dict]:
    from meditok.data.manifest import read_manifest

    rows = read_manifest(cfg.data.manifest)
    if split:
        rows = [r for r in rows if r.get("split") == split]
    return rows


def build_train_data(cfg: TrainConfig, pre: PreprocessConfig, rank: int,
                     world_size: int) -> TrainData | ShardTrainData:
    """The training set of ``cfg.data``: manifest rows of ``train_split``, or WebDataset shards."""
    from meditok.data.datasets import ManifestDataset

    if cfg.data.shards:
        from meditok.data.shards import ShardDataset

        ds = ShardDataset(cfg.data.shards, pre, train=True, seed=cfg.seed,
                          augment=cfg.data.augment, rank=rank, world_size=world_size)
        return ShardTrainData(ds, cfg.data.batch_size, cfg.data.num_workers, cfg.seed, world_size)

    if not cfg.data.manifest:
        raise ValueError("data.manifest is not set (e.g. --data.manifest corpus/manifest.csv); "
                         "build a corpus with `meditok data build-corpus`")
    path = Path(cfg.data.manifest)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    rows = _manifest_rows(cfg, cfg.data.train_split)
    if not rows:
        raise ValueError(f"{path}: no rows with split {cfg.data.train_split!r}")
    root = cfg.data.root or path.parent
    # data.augment false: the deterministic eval contract (pre.resize, pre.ct_window), not a crop
    ds = ManifestDataset(rows, pre, train=True, root=root, seed=cfg.seed, augment=cfg.data.augment)
    sampler = ResumableSampler(len(ds), cfg.data.batch_size, cfg.seed, rank, world_size)
    return TrainData(ds, sampler, cfg.data.batch_size, cfg.data.num_workers, cfg.seed)


def build_val_batches(cfg: TrainConfig, pre: PreprocessConfig) -> list[dict[str, Any]] | None:
    """Up to ``data.val_images`` held-out images as a fixed list of batches (or ``None``)."""
    from meditok.data.datasets import ManifestDataset, collate

    if not cfg.data.manifest or cfg.data.val_images <= 0:
        return None
    rows = _manifest_rows(cfg, cfg.data.val_split)[: cfg.data.val_images]
    if not rows:
        return None
    root = cfg.data.root or Path(cfg.data.manifest).parent
    ds = ManifestDataset(rows, pre, train=False, root=root)
    bs = max(1, cfg.data.val_batch_size)
    batches = []
    for start in range(0, len(ds), bs):
        batches.append(collate([ds[i] for i in range(start, min(len(ds), start + bs))]))
    return batches
