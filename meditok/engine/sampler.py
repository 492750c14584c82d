"""An exactly resumable, rank-disjoint sampler for map-style datasets.

The training order is a seeded permutation per epoch, split into rank-disjoint strided
slices (like ``DistributedSampler`` with ``drop_last``). A checkpoint stores ``(epoch,
batches consumed in the epoch)``; on resume :meth:`ResumableSampler.set_position` starts at
that batch, so a resumed run sees exactly the items the uninterrupted run would have seen.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Per-epoch seeded shuffle, rank-disjoint, whole batches only, resumable mid-epoch."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch = 0
        self.start_batch = 0
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training set has {size} images, fewer than one batch per process "
                f"({batch_size} x {world_size} processes); lower data.batch_size")

    @property
    def batches_per_epoch(self) -> int:
        return (self.size // self.world_size) // self.batch_size

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        per_rank = self.batches_per_epoch * self.batch_size
        order = self._order()[: per_rank * self.world_size][self.rank::self.world_size]
        return iter(order[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
