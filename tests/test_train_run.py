"""End-to-end training on real images (tiny preset): two stages, stage transfer, NaN stop."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meditok.tokenizer.train import Trainer, TrainConfig, TrainingDiverged, dropped_teacher_keys
from meditok.engine.checkpoints import list_checkpoints, load_checkpoint
from meditok.engine.logs import read_log


def write_manifest(shared: Path, out: Path, n_train: int, n_val: int) -> Path:
    """A manifest over real images of three modalities (ISIC dermoscopy, VQA-RAD radiology,
    CHASE_DB1 fundus), interleaved, with captions built from their metadata."""
    isic = sorted((shared / "isic_cc0_550").glob("ISIC_*.jpg"))
    organs = {q["image_name"]: q["image_organ"].lower()
              for q in json.loads((shared / "vqa_rad" / "trainset.json").read_text())}
    rad = [shared / "vqa_rad" / "images" / n for n in sorted(organs)]
    fundus = sorted((shared / "retina_vessels" / "CHASE_DB1").glob("Image_*.jpg"))
    if not (isic and rad and fundus):
        pytest.skip("ISIC / VQA-RAD / CHASE_DB1 images missing from the shared data folder")
    items = []
    for i in range(n_train + n_val):
        src = i % 3
        if src == 0:
            f = isic[i]
            c = json.loads(f.with_suffix(".json").read_text())["meta"]["clinical"]
            items.append((f, "dermoscopy", f"dermoscopy of a {c.get('benign_malignant')} "
                                           f"{c.get('diagnosis') or 'lesion'}"))
        elif src == 1:
            f = rad[i]
            items.append((f, "X-ray", f"radiology image of the {organs[f.name]}"))
        else:
            f = fundus[i % len(fundus)]
            items.append((f, "fundus", f"colour fundus photograph, {f.stem[-1]} eye"))
    # Real images, stored downsized (some originals are 2000+ px; decoding them would dominate
    # the test's run time at the tiny preset's 32 px).
    rows = []
    for i, (f, m, cap) in enumerate(items):
        small = out / "images" / f"{i:03d}_{f.stem}.png"
        small.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            im.convert("RGB").resize((64, 64), Image.BICUBIC).save(small)
        rows.append({"identifier": str(small.relative_to(out)), "modality": m, "dataset": "mixed",
                     "split": "train" if i < n_train else "val", "caption": cap, "label": i % 3,
                     "source_sha256": f.stem})
    path = out / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def tiny_config(manifest: Path, out: Path, stage: int = 1, **over) -> TrainConfig:
    base = {
        "stage": stage, "model": {"preset": "tiny"},
        "align": {"vision_teacher_size": 32},
        "loss": {"disc_warmup": 10}, "disc": {"warmup_steps": 5, "options": {"base": 16}},
        "optim": {"lr": 2e-3, "warmup_steps": 3},
        "data": {"manifest": str(manifest), "batch_size": 8, "num_workers": 0, "val_images": 8,
                 "val_batch_size": 8},
        "steps": 40, "ckpt_every": 20, "val_every": 40, "log_every": 1, "device": "cpu",
        "precision": "fp32", "output_dir": str(out), "tensorboard": False, "progress": False,
        "deterministic": True,
    }
    cfg = TrainConfig.from_dict(base)
    from meditok.tokenizer.train.config import apply_overrides
    return apply_overrides(cfg, over) if over else cfg


def _mean(records: list[dict], key: str, sl: slice) -> float:
    vals = [r[key] for r in records if "loss_total" in r][sl]
    return float(np.mean(vals))


@pytest.mark.slow
def test_two_stage_run_on_real_images(shared_data, tmp_path):
    manifest = write_manifest(shared_data, tmp_path, n_train=16, n_val=8)
    # Stage 1: EfficientNet-Lite0 vision teacher (real offline weights), lambda 0.1.
    s1 = tiny_config(manifest, tmp_path / "s1", stage=1)
    result = Trainer(s1).fit()
    log1 = read_log(tmp_path / "s1" / "train_log.jsonl")
    assert _mean(log1, "loss_rec", slice(-8, None)) < 0.7 * _mean(log1, "loss_rec", slice(0, 4))
    assert _mean(log1, "align_acc", slice(-8, None)) > _mean(log1, "align_acc", slice(0, 4)) + 0.1
    assert np.isfinite(result["val_psnr"]) and (tmp_path / "s1" / "val").is_dir()
    final = tmp_path / "s1" / "final"
    meta = json.loads((final / "config.json").read_text())["meta"]["training"]
    assert meta["stage"] == 1 and meta["steps"] == 40 and meta["teachers"] == {"vision": "efficientnet-lite0"}

    # Stage 2 from the stage-1 checkpoint: MiniLM text teacher on the captions, lambda 1.0.
    ckpt = list_checkpoints(tmp_path / "s1")[-1]
    s2 = tiny_config(manifest, tmp_path / "s2", stage=2, **{"model.init_from": str(ckpt)})
    assert s2.align_weight == 1.0
    trainer = Trainer(s2)
    state = load_checkpoint(ckpt)
    vision_keys = sorted(f"heads.vision.{k}" for k in state["heads"]["vision"])
    assert trainer.init_dropped == vision_keys  # exactly the teacher-side keys
    for k, v in state["model"].items():
        assert torch.equal(trainer.model.state_dict()[k], v), k
    trainer.fit()
    log2 = read_log(tmp_path / "s2" / "train_log.jsonl")
    assert _mean(log2, "align_acc", slice(-8, None)) > _mean(log2, "align_acc", slice(0, 4)) + 0.1
    assert _mean(log2, "loss_align", slice(-8, None)) < _mean(log2, "loss_align", slice(0, 4))


def test_stage2_drops_exactly_teacher_keys(shared_data, tmp_path):
    manifest = write_manifest(shared_data, tmp_path, n_train=8, n_val=0)
    s1 = Trainer(tiny_config(manifest, tmp_path / "s1", stage=1))
    path = s1.save_checkpoint()
    ckpt = load_checkpoint(path)
    teacher_side = sorted(f"heads.vision.{k}" for k in ckpt["heads"]["vision"])
    assert teacher_side  # the stage-1 head exists and is saved
    s2_cfg = tiny_config(manifest, tmp_path / "s2", stage=2, **{"model.init_from": str(path)})
    assert dropped_teacher_keys(path, s2_cfg) == teacher_side
    # Continuing stage 1 with the same teacher keeps the head.
    again = tiny_config(manifest, tmp_path / "s1b", stage=1, **{"model.init_from": str(path)})
    assert dropped_teacher_keys(path, again) == []
    # Combined single-stage (eq. S4) keeps the vision head and adds a fresh text head.
    combined = tiny_config(manifest, tmp_path / "c", stage=1,
                           **{"model.init_from": str(path), "align.combined": True})
    assert dropped_teacher_keys(path, combined) == []


def test_nan_stops_with_last_checkpoint_intact(shared_data, tmp_path):
    manifest = write_manifest(shared_data, tmp_path, n_train=8, n_val=0)
    cfg = tiny_config(manifest, tmp_path / "run", steps=8, ckpt_every=3, keep_last=5,
                      **{"align.mode": "none", "loss.gan": 0.0})
    trainer = Trainer(cfg)
    calls = {"n": 0}

    def poison(module, inputs, output):  # NaN from the 5th forward (step 5) on
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 5 else output

    trainer.model.decoder.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match="step 5"):
        trainer.fit()
    ckpts = list_checkpoints(tmp_path / "run")
    assert [p.name for p in ckpts] == ["ckpt-step00000003.pt"]
    state = load_checkpoint(ckpts[-1])
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # The failed step stopped before backward/update: the weights in memory are still finite.
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    log = read_log(tmp_path / "run" / "train_log.jsonl")
    assert max(r["step"] for r in log) == 4
    assert not (tmp_path / "run" / "final").exists()


def test_combined_single_stage_with_unfrozen_text_encoder(shared_data, tmp_path):
    """Eq. S4 (vision + text terms in one stage) with the text-encoder ablation: both heads
    and the text encoder itself receive gradients, and checkpoints carry the text encoder."""
    manifest = write_manifest(shared_data, tmp_path, n_train=8, n_val=0)
    cfg = tiny_config(manifest, tmp_path / "c", **{"align.combined": True, "align.unfreeze_text": True,
                                                   "loss.gan": 0.0})
    assert cfg.teacher_kinds() == ["vision", "text"]
    trainer = Trainer(cfg)
    from meditok.tokenizer.train.data import build_train_data
    data = build_train_data(cfg, trainer.model.config.preprocess, 0, 1)
    batch = next(iter(data.epoch_loader(0, 0)))
    rec = trainer.generator_backward(batch)
    assert rec["loss_align"] > 0
    for kind in ("vision", "text"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in trainer.module.heads[kind].parameters())
    text_params = list(trainer.module.text_teacher.parameters())
    assert sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in text_params) > len(text_params) // 2
    state = trainer.state_dict()
    assert state["text_teacher"] and set(state["heads"]) == {"vision", "text"}
