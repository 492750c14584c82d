"""What the synthesis GPT is conditioned on and how training draws are made.

**Conditions.** Class id ``i`` of the GPT is the condition ``names[i]``: canonical modality
keys (``xray``, ``ultrasound`` …, in the paper's order) and, optionally, class-within-dataset
conditions ``<dataset>:<class>`` (``pneumoniamnist:pneumonia``). A modality with fewer than
``min_images`` training images is not modelled — the corpus has one pathology image — and
the generator records why, so asking for it is a clear error instead of a memorised image.

**Balance.** The corpus is dominated by X-ray (~75 %); drawn as it comes, the GPT would see
a fundus image once per ~90 X-rays. Each draw therefore first picks a modality with
probability ∝ n^balance (``balance = 0``: uniform, i.e. class-balanced) and then the next
image of that modality's per-epoch permutation (each image of a modality is seen equally
often). An image that also has a class condition is labelled with it in ``class_share`` of
its draws and with its modality otherwise. The draw table depends only on (seed, epoch), so
the engine's resumable sampler resumes it exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from meditok.data.benchmarks import MEDMNIST_CLASSES, order_modalities
from meditok.data.modalities import modality_key
from meditok.data.token_shards import TokenShards
from meditok.errors import InvalidInputError
from meditok.tokenizer.layout import grid_to_sequence


@dataclass
class Conditions:
    """The condition vocabulary of a generator (stored in its config's ``meta``)."""

    names: list[str]
    #: Condition → why it is not modelled (e.g. too few training images).
    excluded: dict[str, str] = field(default_factory=dict)
    #: Class condition → (dataset, label) it stands for.
    classes: dict[str, tuple[str, int]] = field(default_factory=dict)

    def to_meta(self) -> dict[str, Any]:
        return {"conditions": list(self.names), "excluded_conditions": dict(self.excluded),
                "class_conditions": {k: [d, int(lab)] for k, (d, lab) in self.classes.items()}}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Conditions":
        if not meta.get("conditions"):
            raise InvalidInputError("this generator records no conditions (meta.conditions)")
        classes = {k: (str(v[0]), int(v[1])) for k, v in (meta.get("class_conditions") or {}).items()}
        return cls(list(meta["conditions"]), dict(meta.get("excluded_conditions") or {}), classes)

    def id(self, name: str) -> int:
        """Class id of a condition name (any modality spelling); a clear error otherwise."""
        text = str(name).strip()
        key = text.lower() if ":" in text else (modality_key(text) or text.lower())
        if key in self.names:
            return self.names.index(key)
        known = ", ".join(self.names)
        if key in self.excluded:
            raise InvalidInputError(f"condition {text!r} is not modelled by this generator: "
                                    f"{self.excluded[key]}. Known conditions: {known}")
        raise InvalidInputError(f"unknown condition {text!r}; known conditions: {known}")


def class_name(dataset: str, label: int) -> str:
    names = MEDMNIST_CLASSES.get(dataset.lower())
    text = names[label] if names and 0 <= label < len(names) else str(label)
    return f"{dataset.lower()}:{text}".replace(" ", "_")


def build_conditions(shards: TokenShards, conditions: list[str] | None = None, min_images: int = 20,
                     class_datasets: list[str] | None = None) -> Conditions:
    """The conditions a generator trained on ``shards`` (one split) models, and the ones it cannot."""
    counts = {m: n for m, n in shards.counts("modality").items() if m != "unknown"}
    excluded: dict[str, str] = {}
    if conditions:
        wanted = [modality_key(c) or c for c in conditions]
        names = []
        for m in wanted:
            n = counts.get(m, 0)
            if n < min_images:
                raise InvalidInputError(f"condition {m!r} has {n} training image(s) in {shards.root}, "
                                        f"fewer than data.min_images={min_images}")
            names.append(m)
    else:
        names = [m for m in order_modalities(list(counts)) if counts[m] >= min_images]
        if not names:
            raise InvalidInputError(f"{shards.root}: no modality has {min_images} training images")
    for m, n in counts.items():
        if m not in names:
            excluded[m] = (f"only {n} training image(s) (data.min_images={min_images})"
                           if n < min_images else "not selected by data.conditions")
    classes: dict[str, tuple[str, int]] = {}
    for ds in class_datasets or []:
        mask = np.char.lower(shards.labels["dataset"].astype(str)) == ds.lower()
        labels = shards.labels["label"][mask]
        if not mask.any() or (labels < 0).all():
            raise InvalidInputError(f"data.class_datasets: no labelled {ds!r} images in {shards.root}")
        for lab in sorted(int(v) for v in np.unique(labels) if v >= 0):
            n = int((labels == lab).sum())
            name = class_name(ds, lab)
            if n < min_images:
                excluded[name] = f"only {n} training image(s) (data.min_images={min_images})"
                continue
            mods = set(shards.labels["modality"][mask][labels == lab].tolist())
            if not mods & set(names):
                excluded[name] = f"its modality {sorted(mods)} is not modelled"
                continue
            classes[name] = (ds.lower(), lab)
            names.append(name)
    return Conditions(names, excluded, classes)


class ConditionedTokens(Dataset):
    """Class-balanced draws of ``(tokens [L, K], condition id)`` from one split's shards."""

    def __init__(self, shards: TokenShards, conditions: Conditions, balance: float = 0.0,
                 epoch_size: int = 0, class_share: float = 0.5, seed: int = 0):
        mods = shards.labels["modality"].astype(str)
        self.seqs = grid_to_sequence(torch.from_numpy(shards.tokens.astype(np.int64)))
        self.conditions, self.class_share, self.seed = conditions, class_share, seed
        self.pools: list[np.ndarray] = []
        self.pool_ids: list[int] = []
        for name in conditions.names:
            if name in conditions.classes:
                continue
            idx = np.flatnonzero(mods == name)
            if len(idx):
                self.pools.append(idx)
                self.pool_ids.append(conditions.names.index(name))
        if not self.pools:
            raise InvalidInputError(f"{shards.root}: none of the conditions {conditions.names} has images")
        sizes = np.array([len(p) for p in self.pools], dtype=np.float64)
        self.weights = sizes ** balance / (sizes ** balance).sum()
        # fine label of each image (-1: none)
        self.fine = np.full(len(mods), -1, dtype=np.int64)
        datasets = np.char.lower(shards.labels["dataset"].astype(str))
        for name, (ds, lab) in conditions.classes.items():
            self.fine[(datasets == ds) & (shards.labels["label"] == lab)] = conditions.names.index(name)
        self.size = int(epoch_size or len(mods))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Build the draw table of ``epoch`` (depends only on seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        which = rng.choice(len(self.pools), size=self.size, p=self.weights)
        items = np.empty(self.size, dtype=np.int64)
        conds = np.empty(self.size, dtype=np.int64)
        for p, pool in enumerate(self.pools):
            slots = np.flatnonzero(which == p)
            if not len(slots):
                continue
            reps = -(-len(slots) // len(pool))
            order = np.concatenate([rng.permutation(pool) for _ in range(reps)])[:len(slots)]
            items[slots] = order
            conds[slots] = self.pool_ids[p]
        fine = self.fine[items]
        use_fine = (fine >= 0) & (rng.random(self.size) < self.class_share)
        conds[use_fine] = fine[use_fine]
        self.items, self.conds = items, conds

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.seqs[int(self.items[i])], int(self.conds[i])

    def draw_shares(self) -> dict[str, float]:
        """Share of the current epoch's draws per condition (for the run's record)."""
        ids, n = np.unique(self.conds, return_counts=True)
        return {self.conditions.names[int(i)]: round(float(c) / self.size, 4) for i, c in zip(ids, n)}


def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.long)
