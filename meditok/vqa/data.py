"""Training data of the VQA family: image–caption pairs (stage A), VQA-RAD QA (stage B), packing.

**Packing with a shared prefix.** All questions about one image go into one sequence::

    [prompt up to <image>][h·w image slots] [rest of prompt 1 + answer 1] [rest 2 + answer 2] …

with a block attention mask — every segment sees the shared prefix and itself, causally, and
nothing of the other segments — and position ids that restart after the prefix. Each answer
therefore gets exactly the logits it would get in its own unpacked sequence, while the image
prefix is computed once per image (VQA-RAD train: 3064 QA on 314 images, ~2.5x less compute).

**Frozen features.** The tower is frozen and there is no augmentation, so its features are
computed once per image (:class:`FeatureTable`) and batches carry them instead of pixels.
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from meditok.data.manifest import read_manifest, sha256_file
from meditok.data.modalities import modality_key
from meditok.data.preprocess import PreprocessConfig, load_image
from meditok.data.vqa_rad import VQAItem, description, images_of
from meditok.errors import ImageReadError, InvalidInputError
from meditok.utils.results import batches
from meditok.vqa.prompt import IMAGE_TOKEN_ID, PromptFormat, expand_image


@dataclass
class Packed:
    """One training sequence (ids with ``h·w`` image slots) and its bookkeeping."""

    image: str | None
    ids: list[int]
    positions: list[int]
    #: 0 for the shared prefix, k ≥ 1 for the k-th question segment.
    segments: list[int]
    #: True where the token is an answer token (predicted from the token before it).
    answer: list[bool]
    questions: int = 1

    def __len__(self) -> int:
        return len(self.ids)


def pack_image(fmt: PromptFormat, image: str | None, qas: Sequence[tuple[str, str]], n_image: int,
               max_tokens: int = 512, pack: bool = True) -> list[Packed]:
    """Sequences for the questions ``qas`` about one image (see the module docstring).

    With ``pack=False`` every question gets its own sequence. A packed sequence that would exceed
    ``max_tokens`` is closed and a new one (with the prefix again) started; a single question that
    does not fit alone is an :class:`InvalidInputError`.
    """
    out: list[Packed] = []
    cur: Packed | None = None
    prefix: list[int] | None = None
    for question, answer in qas:
        enc = fmt.encode_prompt(question)
        full = expand_image(enc.ids, n_image)
        pre = full[:len(enc.before) + n_image]
        seg = enc.after + fmt.encode_answer(answer)
        n_answer = len(seg) - len(enc.after)
        if len(pre) + len(seg) > max_tokens:
            raise InvalidInputError(f"question {question[:80]!r} needs {len(pre) + len(seg)} tokens "
                                    f"> data.max_tokens {max_tokens}")
        if prefix is not None and pre != prefix:
            raise InvalidInputError("prompts of one image differ before the image; cannot pack")
        prefix = pre
        if cur is None or not pack or len(cur) + len(seg) > max_tokens:
            cur = Packed(image, list(pre), list(range(len(pre))), [0] * len(pre), [False] * len(pre), 0)
            out.append(cur)
        cur.questions += 1
        k = cur.questions
        cur.ids += seg
        cur.positions += list(range(len(pre), len(pre) + len(seg)))
        cur.segments += [k] * len(seg)
        cur.answer += [False] * (len(seg) - n_answer) + [True] * n_answer
    return out


def collate(items: Sequence[Packed], pad_id: int, features: FeatureTable | None = None) -> dict[str, Any]:
    """Right-padded batch: ids, position ids, the 4-D boolean block mask ``[B,1,T,T]`` (True =
    may attend), the (row, column) positions whose logits predict answer tokens, the targets and,
    with a feature table, the image features ``[B, h·w, D]``."""
    width = max(len(it) for it in items)
    b = len(items)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    pos = torch.zeros(b, width, dtype=torch.long)
    seg = torch.full((b, width), -1, dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it)
        ids[i, :n] = torch.tensor(it.ids)
        pos[i, :n] = torch.tensor(it.positions)
        seg[i, :n] = torch.tensor(it.segments)
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    same = seg[:, :, None] == seg[:, None, :]
    to_prefix = (seg[:, None, :] == 0) & (seg[:, :, None] >= 0)
    mask = causal[None] & (same | to_prefix)
    pad = seg < 0
    mask[pad] = False
    eye = torch.eye(width, dtype=torch.bool)[None].expand(b, -1, -1)
    mask = mask | (eye & pad[:, :, None])  # padding attends to itself only (no empty rows)
    rows, cols, targets = [], [], []
    for i, it in enumerate(items):
        for p, is_answer in enumerate(it.answer):
            if is_answer:
                rows.append(i)
                cols.append(p - 1)
                targets.append(it.ids[p])
    batch: dict[str, Any] = {"input_ids": ids, "position_ids": pos, "attention_mask": mask[:, None],
                             "loss_rows": torch.tensor(rows, dtype=torch.long),
                             "loss_cols": torch.tensor(cols, dtype=torch.long),
                             "targets": torch.tensor(targets, dtype=torch.long)}
    if features is not None and any(it.image is not None for it in items):
        batch["features"] = torch.stack([features[it.image] for it in items])
    return batch


class FeatureTable:
    """Frozen tower features of a set of images, computed once (``[h·w, D]`` per image).
    ``transform``: applied to each preprocessed batch before the tower (the noised copies of
    contrastive decoding)."""

    def __init__(self, tower: Any, images: dict[str, str | None], pre: PreprocessConfig,
                 batch_size: int = 64, progress: bool = False,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.index: dict[str, int] = {}
        self.skipped: list[ImageReadError] = []
        chunks = []
        keys = list(images)
        device = next(tower.parameters()).device
        it = batches(keys, batch_size)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, total=(len(keys) + batch_size - 1) // batch_size, desc="features")
        for chunk in it:
            good, tensors = [], []
            for key in chunk:
                try:
                    tensors.append(load_image(key, pre, images[key]))
                    good.append(key)
                except ImageReadError as exc:
                    self.skipped.append(exc)
            if tensors:
                x = torch.stack(tensors).to(device)
                chunks.append(tower(transform(x) if transform else x).cpu())
                for key in good:
                    self.index[key] = len(self.index)
        self.table = torch.cat(chunks) if chunks else torch.empty(0)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.table[self.index[key]]

    def __len__(self) -> int:
        return len(self.index)


class PackedDataset(Dataset):
    """Map-style dataset over packed sequences (what :class:`meditok.engine.loop.Loop` draws)."""

    def __init__(self, items: list[Packed], pad_id: int, features: FeatureTable | None):
        self.items, self.pad_id, self.features = items, pad_id, features

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Packed:
        return self.items[i]

    def collate(self, items: list[Packed]) -> dict[str, Any]:
        return collate(items, self.pad_id, self.features)


# ----------------------------------------------------------------------------- stage A pairs
@dataclass
class CaptionPair:
    image: str
    modality: str | None
    caption: str
    source: str


@dataclass
class PairStats:
    corpus_pairs: int = 0
    vqa_descriptions: int = 0
    dropped_test_images: int = 0
    per_caption: dict[str, int] = field(default_factory=dict)


def _test_identity(test: list[VQAItem]) -> tuple[set[str], set[str]]:
    imgs = images_of(test)
    return {Path(n).stem for n in imgs}, {sha256_file(p) for p in imgs.values()}


def caption_pairs(manifest: str | Path | None, train: list[VQAItem], test: list[VQAItem],
                  per_caption: int, vqa_descriptions: bool, drop_test_images: bool,
                  seed: int = 0) -> tuple[list[CaptionPair], PairStats]:
    """Stage-A image–caption pairs: at most ``per_caption`` corpus images per distinct caption
    (the corpus has a few dozen pseudo-captions) plus one description per VQA-RAD training
    image built from its own answers. With ``drop_test_images`` no VQA-RAD test image (by
    name or by content) is used, from the corpus or from VQA-RAD."""
    stats = PairStats()
    stems, hashes = _test_identity(test) if drop_test_images else (set(), set())
    pairs: list[CaptionPair] = []
    if manifest:
        root = Path(manifest).resolve().parent
        groups: dict[str, list[dict]] = defaultdict(list)
        for row in read_manifest(manifest):
            caption = str(row.get("caption") or "").strip()
            if not caption:
                continue
            if drop_test_images and (row.get("source_sha256") in hashes or (
                    row.get("dataset") == "vqa_rad" and Path(str(row["identifier"])).stem in stems)):
                stats.dropped_test_images += 1
                continue
            groups[caption].append(row)
        rng = random.Random(seed)
        for caption in sorted(groups):
            rows = sorted(groups[caption], key=lambda r: str(r["identifier"]))
            rng.shuffle(rows)
            for row in rows[:per_caption]:
                pairs.append(CaptionPair(str(root / str(row["identifier"])),
                                         modality_key(row.get("modality")), caption, "corpus"))
            stats.per_caption[caption] = min(per_caption, len(rows))
        stats.corpus_pairs = len(pairs)
    if vqa_descriptions:
        by_image: dict[str, list[VQAItem]] = defaultdict(list)
        for it in train:
            by_image[it.image_name].append(it)
        for name, items in sorted(by_image.items()):
            if drop_test_images and (Path(name).stem in stems or sha256_file(items[0].image_path) in hashes):
                stats.dropped_test_images += 1
                continue
            pairs.append(CaptionPair(str(items[0].image_path), None, description(items[0].organ, items),
                                     "vqa_rad"))
            stats.vqa_descriptions += 1
    return pairs, stats


def qa_groups(items: list[VQAItem]) -> dict[str, list[tuple[str, str]]]:
    """``{image path: [(question, answer), …]}`` in file order."""
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for it in items:
        out[str(it.image_path)].append((it.question, it.answer))
    return dict(out)


__all__ = [
    "IMAGE_TOKEN_ID",
    "CaptionPair",
    "FeatureTable",
    "Packed",
    "PackedDataset",
    "caption_pairs",
    "collate",
    "pack_image",
    "qa_groups",
]
