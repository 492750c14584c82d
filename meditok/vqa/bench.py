"""``meditok vqa eval``: VQA-RAD test-split (or val-split) evaluation, one row per model plus baselines.

Every question of the split is answered greedily; closed questions are scored by normalised
exact match, open ones by token recall (LLaVA-Med) and exact match, per answer type and per
question type (:func:`meditok.metrics.text.vqa_scores`). Each evaluated model leaves
``<label>.predictions.jsonl`` + ``<label>.json`` in the output folder (re-used on the next call
when the adapter file is unchanged), and ``vqa_rad.{json,md}`` is rebuilt with every model
evaluated there so far, the majority-answer baselines and the train/test image overlap.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from meditok.data.vqa_rad import (
    VQAItem,
    image_overlap,
    images_of,
    load_vqa_rad,
    majority_answers,
)
from meditok.errors import InvalidInputError
from meditok.metrics.text import normalize_answer, vqa_scores
from meditok.utils.hub import WEIGHTS_NAME, resolve_checkpoint
from meditok.utils.io import atomic_write_text
from meditok.utils.results import environment, markdown_table, pct, write_results
from meditok.vqa.contrast import noised
from meditok.vqa.data import FeatureTable
from meditok.vqa.model import VQAModel

RESULT_NAME = "vqa_rad"


def _item_dict(it: VQAItem) -> dict[str, Any]:
    return {"qid": it.qid, "image_name": it.image_name, "question": it.question, "answer": it.answer,
            "answer_type": it.answer_type, "question_types": list(it.question_types)}


def mismatched_images(items: list[VQAItem], seed: int = 0) -> dict[str, str]:
    """A control: every image of ``items`` mapped to *another* image of the same items (a fixed
    derangement: the images in a seeded random order, each replaced by the next one) → path →
    path. Answers on mismatched images keep the question and the language prior but not the
    picture; what accuracy they lose is what the image contributes."""
    paths = sorted({str(p) for p in images_of(items).values()})
    if len(paths) < 2:
        raise InvalidInputError("a mismatched-image control needs at least two distinct images")
    g = torch.Generator().manual_seed(seed)
    order = [paths[i] for i in torch.randperm(len(paths), generator=g).tolist()]
    return {p: order[(i + 1) % len(order)] for i, p in enumerate(order)}


def predict(model: VQAModel, items: list[VQAItem], batch_size: int = 16, progress: bool = True,
            image_map: dict[str, str] | None = None) -> list[str]:
    """Greedy answers for ``items`` (in order); features are computed once per image (and once
    per noised image under contrastive decoding). With ``image_map`` (path → path, see
    ``mismatched_images``) a question sees the mapped image."""
    image_map = image_map or {}
    tables: list[FeatureTable] = []
    if model.config.use_image:
        pre = model.tower.preprocess
        paths = {str(p): None for p in images_of(items).values()}
        tables.append(FeatureTable(model.tower, paths, pre))
        if model.config.contrast.active:
            contrast = model.config.contrast
            tables.append(FeatureTable(model.tower, paths, pre,
                                       transform=lambda x: noised(x, contrast, pre.input_range)))
        if tables[0].skipped:
            raise RuntimeError(f"unreadable VQA-RAD images: {[str(e) for e in tables[0].skipped][:3]}")
    order = sorted(range(len(items)), key=lambda i: len(items[i].question))  # less padding
    answers: list[str] = [""] * len(items)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc="answering")
    for chunk in chunks:
        qs = [items[i].question for i in chunk]
        keys = [image_map.get(str(items[i].image_path), str(items[i].image_path)) for i in chunk]
        feats = [torch.stack([table[k] for k in keys]) for table in tables]
        for i, a in zip(chunk, model.generate(qs, features=feats[0] if feats else None,
                                              contrast_features=feats[1] if len(feats) > 1 else None)):
            answers[i] = a
    return answers


def baseline_predictions(train: list[VQAItem], test: list[VQAItem]) -> dict[str, list[str]]:
    """Majority answer per answer type, and per (answer type, first question type)."""
    major = majority_answers(train)
    by_type: dict[tuple[str, str], Counter] = {}
    for it in train:
        by_type.setdefault((it.answer_type, it.question_types[0]), Counter())[it.answer.lower()] += 1
    return {
        "majority answer (per answer type)": [major.get(it.answer_type, "") for it in test],
        "majority answer (per answer and question type)": [
            by_type[(it.answer_type, it.question_types[0])].most_common(1)[0][0]
            if (it.answer_type, it.question_types[0]) in by_type else major.get(it.answer_type, "")
            for it in test],
    }


def label_stem(label: str) -> str:
    """The file stem of ``label``'s ``<stem>.json`` / ``<stem>.predictions.jsonl`` records."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


def _adapter_hash(path: Path) -> str:
    return hashlib.sha256((path / WEIGHTS_NAME).read_bytes()).hexdigest()[:16]


def evaluate_model(spec: str, label: str, vqa_root: str | Path, out_dir: str | Path, device: str = "cpu",
                   batch_size: int = 16, overwrite: bool = False, progress: bool = True,
                   split: str = "test", mismatched: bool = False,
                   contrast_alpha: float | None = None) -> dict[str, Any]:
    """Answer every question of ``split`` with the adapter ``spec``; write and return its record.
    ``mismatched``: the image control (``mismatched_images``, seed 0) instead of each question's image.
    ``contrast_alpha``: visual contrastive decoding strength instead of the adapter's own."""
    out = Path(out_dir)
    path = resolve_checkpoint(spec)
    record_path = out / f"{label_stem(label)}.json"
    digest = _adapter_hash(path)
    control = "mismatched images (seed 0)" if mismatched else None
    cfg = VQAModel.config_from_pretrained(path)
    if contrast_alpha is not None:
        cfg.contrast.alpha = float(contrast_alpha)
        cfg.contrast.validate()
    decoding = cfg.contrast.to_dict() if cfg.contrast.active and cfg.use_image else "greedy"
    if record_path.exists() and not overwrite:
        old = json.loads(record_path.read_text())
        if (old.get("adapter_sha256") == digest and old.get("split") == split
                and old.get("image_control") == control and old.get("decoding", "greedy") == decoding):
            return old  # these predictions are of this very adapter and decoding: re-use them
        raise InvalidInputError(f"{record_path}: label {label!r} already holds results of another adapter, "
                                f"image control or decoding ({old.get('model')}, {old.get('image_control')}, "
                                f"{old.get('decoding')}); pass --overwrite "
                                "or choose another --label")
    if split == "val":  # checked from the config, before the LM is loaded
        meta = cfg.meta
        trained_on = (meta.get("training", {}).get("data") or {}).get("train_split", "train")
        if trained_on != "train-val":
            raise InvalidInputError(f"{path}: trained on {trained_on!r}, which holds the val questions; "
                                    "val scores only adapters trained with data.train_split train-val")
    items = load_vqa_rad(vqa_root, split)
    t0 = time.time()
    model = VQAModel.from_pretrained(path, map_location=device)
    model.config.contrast = cfg.contrast
    if mismatched and not model.config.use_image:
        raise InvalidInputError(f"{path}: a text-only adapter has no image to mismatch")
    load_s = time.time() - t0
    t1, load_avg = time.time(), environment().get("load_average_1min")
    preds = predict(model, items, batch_size, progress, mismatched_images(items) if mismatched else None)
    wall = time.time() - t1
    rows = [{**_item_dict(it), "prediction": p} for it, p in zip(items, preds)]
    atomic_write_text(out / f"{label_stem(label)}.predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cfg = model.config
    record = {
        "label": label, "model": str(path), "adapter_sha256": digest, "split": split,
        "image_control": control, "decoding": decoding,
        "config": {"tokenizer": cfg.tokenizer, "lm": cfg.lm, "features": cfg.features,
                   "use_image": cfg.use_image, "lora_r": cfg.lora.r,
                   "tokenizer_identity": cfg.meta.get("tokenizer_identity")},
        "training": {k: cfg.meta.get("training", {}).get(k) for k in
                     ("stage", "steps", "epochs", "wall_time_s", "load_average", "data", "command")},
        "stage_a": cfg.meta.get("stage_a"),
        "eval_wall_s": round(wall, 1), "model_load_s": round(load_s, 1), "eval_load_start": load_avg,
        "eval_load_end": environment().get("load_average_1min"), "questions": len(items),
        "scores": vqa_scores([_item_dict(it) for it in items], preds), "environment": environment(),
    }
    atomic_write_text(record_path, json.dumps(record, indent=2, default=str) + "\n")
    return record


def _row(name: str, s: dict, extra: list[Any]) -> list[Any]:
    closed, recall = s["closed"]["closed_accuracy"], s["open"]["open_recall"]
    mean = (closed + recall) / 2 if closed is not None and recall is not None else None
    return [name, pct(closed), pct(recall), pct(s["open"]["open_accuracy"]), pct(s["overall"]["accuracy"]),
            pct(mean), *extra]


def build_table(vqa_root: str | Path, out_dir: str | Path, split: str = "test",
                order: list[str] | None = None) -> dict[str, Any]:
    """Rebuild ``vqa_rad.{json,md}`` from every ``<label>.json`` in ``out_dir`` + baselines."""
    out = Path(out_dir)
    # baselines learn from what the evaluated models trained on: train-val when scoring val
    train = load_vqa_rad(vqa_root, "train-val" if split == "val" else "train")
    test = load_vqa_rad(vqa_root, split)
    items = [_item_dict(it) for it in test]
    records = {}
    for p in sorted(out.glob("*.json")):
        if p.stem == RESULT_NAME:
            continue
        rec = json.loads(p.read_text())
        if isinstance(rec, dict) and "scores" in rec and rec.get("split") == split:
            records[rec["label"]] = rec
    labels = [x for x in (order or []) if x in records] + sorted(set(records) - set(order or []))
    baselines = {k: vqa_scores(items, v) for k, v in baseline_predictions(train, test).items()}
    overlap = image_overlap(train, test)
    closed = [it for it in test if it.closed]
    major = majority_answers(train).get("CLOSED", "no")
    header = ["system", "closed acc", "open recall", "open acc", "overall acc", "mean(closed, recall)",
              "tokenizer / LM",
              "train wall (s)", "eval wall (s)", "load"]
    rows = [_row(k, s, ["–", "–", "–", "–"]) for k, s in baselines.items()]
    for lab in labels:
        r = records[lab]
        c = r["config"]
        rows.append(_row(lab, r["scores"], [
            f"{c['tokenizer'] if c['use_image'] else '(no image)'} / {c['lm']}",
            _wall(r), r["eval_wall_s"], f"{r.get('eval_load_start')}–{r.get('eval_load_end')}"]))
    types = sorted({t for it in test for t in it.question_types})
    systems = list(baselines.items()) + [(lab, records[lab]["scores"]) for lab in labels]
    qt_rows = []
    for t in types:
        g = systems[0][1]["by_question_type"].get(t, {})
        qt_rows.append([t, g.get("closed_n", 0), g.get("open_n", 0)] + [
            f"{pct(s['by_question_type'][t]['closed_accuracy'])} / {pct(s['by_question_type'][t]['open_recall'])}"
            for _, s in systems])
    md = [f"# VQA-RAD {split} split ({len(test)} questions: {len(closed)} closed, {len(test) - len(closed)} open)", "",
          ("Closed: normalised exact match. Open: token recall (LLaVA-Med) and exact match. Overall: exact "
           "match over all questions. Percent. Wall times: training (stage A + stage B) and answering "
           "the split, seconds, with the 1-minute load average while answering."), "",
          markdown_table(header, rows), "",
          "## Per question type (closed accuracy / open recall; a question with two types counts in both)", "",
          markdown_table(["type", "closed n", "open n"] + [k for k, _ in systems], qt_rows), "",
          "## Train/test image overlap (dataset property)", "",
          (f"{overlap['test_images_in_train_by_name']}/{overlap['test_images']} test images are training "
           f"images by name and {overlap['test_images_in_train_by_md5']}/{overlap['test_images']} by file "
           f"content; {overlap['test_questions_on_seen_images']}/{overlap['test_questions']} test questions "
           f"are about an image seen in training; {overlap['test_triples_verbatim_in_train']} test (image, "
           f"question, answer) triples occur verbatim in training. Closed majority answer '{major}': "
           f"{pct(sum(normalize_answer(it.answer) == major for it in closed) / max(1, len(closed)))} %."), ""]
    result = {"split": split, "questions": len(test), "baselines": baselines,
              "models": {lab: records[lab] for lab in labels}, "order": labels, "overlap": overlap}
    write_results(out, RESULT_NAME, result, "\n".join(md))
    return result


def _wall(record: dict) -> str:
    tr = record.get("training") or {}
    st = record.get("stage_a") or {}
    b, a = tr.get("wall_time_s"), st.get("wall_time_s") if isinstance(st, dict) else None
    if b is None:
        return "–"
    return f"{a:.0f} + {b:.0f}" if a is not None else f"{b:.0f}"
