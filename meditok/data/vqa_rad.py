"""VQA-RAD (Lau et al., 2018): radiology images with clinician-written question–answer pairs.

The release (``trainset.json`` 3064 QA, ``testset.json`` 451 QA, ``images/``) has a few
irregularities this reader smooths out once, so that every consumer sees the same data:

* ``answer`` is an ``int`` for some counting questions (``4``) — always a ``str`` here;
* ``answer_type`` is ``"CLOSED "`` (trailing space) for two training items — stripped;
* ``question_type`` has combined values (``"PRES, ATTRIB"``), a lower-case ``"Other"`` and the
  typos ``ATRIB`` / ``PRSE`` — split into a tuple of canonical upper-case types.

The official split re-uses images: every one of the 203 test images is also a training image
(same file name and content). :func:`image_overlap` measures that, and :func:`disjoint_train`
gives the training items whose image never appears in the test split.

The release has no validation split, so model choices made on ``test`` would be tuned on it.
:func:`validation_split` holds one out of ``train`` that looks like ``test`` does: questions
about the test images, which stay in training through their other questions. The derived
splits ``val`` and ``train-val`` (training without it) load like the released ones.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from meditok.errors import InvalidInputError

SPLITS = {"train": "trainset.json", "test": "testset.json"}
#: Splits derived from ``train`` by :func:`validation_split` (fixed fraction and seed, so every
#: run and every evaluation sees the same ones).
DERIVED_SPLITS = ("val", "train-val")
VAL_FRACTION = 0.2
VAL_SEED = 0
ANSWER_TYPES = ("CLOSED", "OPEN")
#: Canonical question types of VQA-RAD (Lau et al., Table 2).
QUESTION_TYPES = ("PRES", "POS", "ABN", "SIZE", "MODALITY", "PLANE", "ORGAN", "ATTRIB", "COLOR",
                  "COUNT", "OTHER")
_TYPE_FIXES = {"ATRIB": "ATTRIB", "PRSE": "PRES"}
ORGANS = {"HEAD": "head", "CHEST": "chest", "ABD": "abdomen"}


@dataclass(frozen=True)
class VQAItem:
    """One question about one image."""

    qid: int
    image_name: str
    image_path: Path
    organ: str
    question: str
    answer: str
    #: ``CLOSED`` or ``OPEN``.
    answer_type: str
    #: Canonical question types (usually one; a few questions have two).
    question_types: tuple[str, ...]
    phrase_type: str
    split: str

    @property
    def closed(self) -> bool:
        return self.answer_type == "CLOSED"

    def as_dict(self) -> dict:
        return {"qid": self.qid, "image": str(self.image_path), "image_name": self.image_name,
                "organ": self.organ, "question": self.question, "answer": self.answer,
                "answer_type": self.answer_type, "question_type": ",".join(self.question_types),
                "phrase_type": self.phrase_type, "split": self.split}


def question_types(raw: str) -> tuple[str, ...]:
    """``"PRES, ATTRIB"`` → ``("PRES", "ATTRIB")``; fixes case and the release's typos."""
    out = []
    for part in str(raw).split(","):
        key = part.strip().upper()
        key = _TYPE_FIXES.get(key, key)
        if key and key not in out:
            out.append(key)
    return tuple(out) or ("OTHER",)


def load_vqa_rad(root: str | Path, split: str) -> list[VQAItem]:
    """All QA items of ``split`` under ``root``, in file order: ``train`` / ``test`` as released,
    or ``val`` / ``train-val`` (:func:`validation_split` of ``train``).

    Raises :class:`InvalidInputError` naming the file when the folder, the JSON or an image is
    missing or a record lacks a field.
    """
    root = Path(root)
    if split in DERIVED_SPLITS:
        rest, val = validation_split(load_vqa_rad(root, "train"), load_vqa_rad(root, "test"))
        return val if split == "val" else rest
    if split not in SPLITS:
        raise InvalidInputError(f"VQA-RAD split must be one of {sorted(SPLITS) + list(DERIVED_SPLITS)}, "
                                f"got {split!r}")
    path = root / SPLITS[split]
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: not found (is {root} a VQA-RAD folder with "
                                "trainset.json, testset.json and images/?)") from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: cannot read ({exc})") from None
    if not isinstance(records, list):
        raise InvalidInputError(f"{path}: expected a JSON list of QA records")
    items = []
    for i, r in enumerate(records):
        try:
            answer_type = str(r["answer_type"]).strip().upper()
            image_path = root / "images" / str(r["image_name"])
            item = VQAItem(qid=int(r["qid"]), image_name=str(r["image_name"]), image_path=image_path,
                           organ=str(r.get("image_organ", "")).strip().upper(),
                           question=str(r["question"]).strip(), answer=str(r["answer"]).strip(),
                           answer_type=answer_type,
                           question_types=question_types(r.get("question_type", "OTHER")),
                           phrase_type=str(r.get("phrase_type", "")).strip(), split=split)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{path}: record {i} is malformed ({exc!r})") from None
        if answer_type not in ANSWER_TYPES:
            raise InvalidInputError(f"{path}: record {i} has answer_type {r['answer_type']!r}")
        if not image_path.is_file():
            raise InvalidInputError(f"{path}: record {i} names image {image_path}, which is missing")
        items.append(item)
    return items


def images_of(items: Iterable[VQAItem]) -> dict[str, Path]:
    """Distinct images (name → path) in first-seen order."""
    out: dict[str, Path] = {}
    for it in items:
        out.setdefault(it.image_name, it.image_path)
    return out


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def image_overlap(train: list[VQAItem], test: list[VQAItem]) -> dict:
    """How many test images (and test questions) also occur in training, by name and by content
    (md5 of the file), plus test (image, question, answer) triples repeated verbatim."""
    tr, te = images_of(train), images_of(test)
    tr_md5 = {_md5(p) for p in tr.values()}
    by_name = [n for n in te if n in tr]
    by_md5 = [n for n, p in te.items() if _md5(p) in tr_md5]
    seen = set(by_name) | set(by_md5)
    triples = {(it.image_name, it.question.lower(), it.answer.lower()) for it in train}
    return {
        "train_images": len(tr), "test_images": len(te),
        "test_images_in_train_by_name": len(by_name), "test_images_in_train_by_md5": len(by_md5),
        "test_questions_on_seen_images": sum(it.image_name in seen for it in test),
        "test_questions": len(test),
        "test_triples_verbatim_in_train": sum((it.image_name, it.question.lower(), it.answer.lower())
                                              in triples for it in test),
    }


def disjoint_train(train: list[VQAItem], test: list[VQAItem]) -> list[VQAItem]:
    """Training items whose image (by name or by content) is not a test image."""
    te = images_of(test)
    te_md5 = {_md5(p) for p in te.values()}
    md5_cache: dict[str, str] = {}
    keep = []
    for it in train:
        if it.image_name in te:
            continue
        if it.image_name not in md5_cache:
            md5_cache[it.image_name] = _md5(it.image_path)
        if md5_cache[it.image_name] not in te_md5:
            keep.append(it)
    return keep


def validation_split(train: list[VQAItem], test: list[VQAItem], fraction: float = VAL_FRACTION,
                     seed: int = VAL_SEED) -> tuple[list[VQAItem], list[VQAItem]]:
    """``(train without val, val)``: a validation split shaped like the official test split.

    Candidates are the training questions about test images (every test question is about an
    image seen in training). Each distinct (image, question) — repeats of a question go
    together, so none leaks — is held out with probability ``fraction`` (seeded), keeping at
    least one question of every image in training. Stage A never sees these images (it drops
    test images), so nothing of a held-out question reaches training.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    test_images = set(images_of(test))
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, it in enumerate(train):
        if it.image_name in test_images:
            groups[it.image_name][it.question.lower()].append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for name in sorted(groups):
        questions = sorted(groups[name])
        picked = [q for q in questions if rng.random() < fraction]
        if len(picked) == len(questions):
            picked = picked[:-1]  # the image keeps one question in training
        for q in picked:
            held.update(groups[name][q])
    rest = [it for i, it in enumerate(train) if i not in held]
    val = [replace(it, split="val") for i, it in enumerate(train) if i in held]
    return rest, val


def majority_answers(train: list[VQAItem]) -> dict[str, str]:
    """Most frequent (lower-cased) training answer per answer type: the majority baseline."""
    out = {}
    for kind in ANSWER_TYPES:
        counts = Counter(it.answer.lower() for it in train if it.answer_type == kind)
        if counts:
            out[kind] = counts.most_common(1)[0][0]
    return out


def description(organ: str, items: Iterable[VQAItem]) -> str:
    """A short caption of one image assembled from its own open MODALITY / PLANE / ORGAN answers
    (LLaVA stage-A style image–text pair; only ever built from training items)."""
    facts: dict[str, str] = {}
    for it in items:
        if it.answer_type != "OPEN":
            continue
        for kind in ("MODALITY", "PLANE", "ORGAN"):
            if kind in it.question_types and kind not in facts:
                facts[kind] = it.answer.lower()
    modality = facts.get("MODALITY", "radiology")
    article = "an" if modality[:1] in "aeioux" or modality.startswith("mr") else "a"
    text = f"This is {article} {modality} image of the {ORGANS.get(organ, 'body')}"
    if "PLANE" in facts:
        text += f", {facts['PLANE']} plane"
    if "ORGAN" in facts and facts["ORGAN"] not in text:
        text += f", showing the {facts['ORGAN']}"
    return text + "."
