"""The LLaVA recipe on the shared engine loop (paper App. C.2, spec §3.3).

* **Stage A** — only the projector trains, on image–caption pairs (balanced corpus captions +
  VQA-RAD descriptions of training images); the LM is frozen.
* **Stage B** — projector + LoRA on VQA-RAD training QA pairs, starting from the stage-A
  projector (``init_from``).

Both: loss on answer tokens only, LM logits only where they predict an answer token, all
questions of an image packed into one sequence (:mod:`meditok.vqa.data`). AdamW, warm-up +
cosine, grad clip, accumulation, bf16 autocast on GPU / fp32 on CPU, torchrun DDP, atomic
resumable checkpoints (adapter only, a few MB), JSONL logs and the progress bar come from
:class:`meditok.engine.loop.Loop`.
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from meditok.data.vqa_rad import disjoint_train, image_overlap, load_vqa_rad, validation_split
from meditok.engine.logs import load_average
from meditok.engine.loop import Loop
from meditok.errors import InvalidInputError
from meditok.tokenizer.hub import load_tokenizer
from meditok.utils.config import config_hash
from meditok.utils.hub import WEIGHTS_NAME, read_state
from meditok.vqa.config import VQATrainConfig
from meditok.vqa.data import (
    FeatureTable,
    PackedDataset,
    caption_pairs,
    pack_image,
    qa_groups,
)
from meditok.vqa.lm import lm_identity, load_lm
from meditok.vqa.model import VQAModel, parameter_summary
from meditok.vqa.select import ValidationTracker

CHECKPOINT_FORMAT = "meditok-vqa"


def _loss(model, batch):
    return model(batch)


def build_model(cfg: VQATrainConfig, verbose: bool = True) -> VQAModel:
    """The model of a run: tokenizer + LM named by the config, fresh projector/LoRA, the
    stage-A projector when ``init_from`` is set."""
    lm, text_tok = load_lm(cfg.model.lm, verbose)
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    mcfg = cfg.model
    mcfg.meta = dict(mcfg.meta)
    mcfg.meta["lm_identity"] = lm_identity(mcfg.lm, lm, text_tok)
    mcfg.meta["tokenizer_identity"] = {"spec": mcfg.tokenizer, "config_hash": config_hash(tokenizer.config),
                                       "name": tokenizer.config.meta.get("name", mcfg.tokenizer)}
    torch.manual_seed(cfg.loop.seed)
    model = VQAModel(mcfg, tokenizer=tokenizer, lm=lm, text_tokenizer=text_tok)
    if cfg.init_from:
        src = Path(cfg.init_from)
        other = VQAModel.config_from_pretrained(src)
        for key in ("tokenizer", "lm", "features", "image_size", "merge"):
            if getattr(other, key) != getattr(mcfg, key):
                raise InvalidInputError(f"init_from {src}: trained with {key}={getattr(other, key)!r}, "
                                        f"this run uses {getattr(mcfg, key)!r}")
        model.load_projector_from(read_state(src / WEIGHTS_NAME), str(src))
        tr = other.meta.get("training", {})
        mcfg.meta["stage_a"] = {"path": str(src.resolve()), "stage": tr.get("stage"), "steps": tr.get("steps"),
                                "epochs": tr.get("epochs"), "wall_time_s": tr.get("wall_time_s"),
                                "load_average": tr.get("load_average"), "data": tr.get("data"),
                                "final_train_loss": tr.get("final_train_loss")}
    return model


def build_dataset(cfg: VQATrainConfig, model: VQAModel, progress: bool = True) -> tuple[PackedDataset, dict]:
    """Packed training sequences of the stage, their image features, and what went in."""
    d = cfg.data
    train = load_vqa_rad(d.vqa_rad, "train")
    test = load_vqa_rad(d.vqa_rad, "test")
    n_img = model.num_image_tokens
    info: dict[str, Any] = {"stage": cfg.stage, "overlap": image_overlap(train, test)}
    groups: dict[str, list[tuple[str, str]]]
    modalities: dict[str, str | None] = {}
    if cfg.stage == "A":
        pairs, stats = caption_pairs(d.manifest or None, train, test, d.per_caption, d.vqa_descriptions,
                                     d.stage_a_drop_test_images or d.image_disjoint, cfg.loop.seed)
        groups = {}
        for p in pairs:
            groups.setdefault(p.image, []).append((model.config.prompt.caption_question, p.caption))
            modalities[p.image] = p.modality
        info.update({"pairs": len(pairs), "corpus_pairs": stats.corpus_pairs,
                     "vqa_descriptions": stats.vqa_descriptions,
                     "dropped_test_images": stats.dropped_test_images,
                     "distinct_captions": len(stats.per_caption)})
    else:
        if d.image_disjoint:
            items = disjoint_train(train, test)
        elif d.train_split == "train-val":
            items = validation_split(train, test)[0]  # the same split load_vqa_rad(..., "val") gives
        else:
            items = train
        groups = qa_groups(items)
        modalities = {k: None for k in groups}
        info.update({"qa": len(items), "images": len(groups), "image_disjoint": d.image_disjoint,
                     "train_split": d.train_split})
    if not groups:
        raise InvalidInputError("no training pairs (check data.manifest / data.vqa_rad)")
    features = None
    if model.config.use_image:
        pre = model.tower.preprocess
        features = FeatureTable(model.tower, modalities, pre, d.feature_batch, progress)
        info["feature_skipped"] = [str(e) for e in features.skipped]
    seqs = []
    for image, qas in groups.items():
        if features is not None and image not in features:
            continue
        seqs += pack_image(model.prompt, image if features is not None else None, qas, n_img,
                           d.max_tokens, d.pack)
    info.update({"sequences": len(seqs), "tokens": sum(len(s) for s in seqs),
                 "answer_tokens": sum(sum(s.answer) for s in seqs)})
    pad = model.text_tokenizer.pad_token_id
    return PackedDataset(seqs, model.prompt.end_id if pad is None else int(pad), features), info


def train(cfg: VQATrainConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one stage; write the trained adapter; return a summary."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0, load0 = time.time(), load_average()
    model = build_model(cfg, verbose=progress)
    dataset, info = build_dataset(cfg, model, progress)
    if len(dataset) < cfg.loop.batch_size:
        raise InvalidInputError(f"{len(dataset)} sequences < loop.batch_size {cfg.loop.batch_size}")
    out_dir = Path(cfg.loop.output_dir)
    tracker = None
    if cfg.stage == "B" and cfg.data.train_split == "train-val":
        tracker = ValidationTracker(load_vqa_rad(cfg.data.vqa_rad, "val"), out_dir)
    loop = Loop(model, _loss, dataset, cfg.loop, fmt=CHECKPOINT_FORMAT, collate=dataset.collate,
                run_config=cfg.to_dict(), evaluate=tracker)
    result = loop.run()
    if not loop.dist.is_main:
        return result
    final = Path(cfg.output or out_dir / "final")
    sessions = loop.end_session(final, t0, load0)
    if sessions is None:
        result["final"] = str(final)  # nothing trained this time: keep the adapter and its record
        return result
    per_epoch = len(dataset) / (cfg.loop.batch_size * cfg.loop.grad_accum * loop.dist.world_size)
    model.config.meta["training"] = {
        "stage": cfg.stage, "name": cfg.name, "data": info, "steps": result["step"],
        "epochs": round(result["step"] / per_epoch, 2),
        "batch_sequences": cfg.loop.batch_size * cfg.loop.grad_accum * loop.dist.world_size,
        "lr": cfg.loop.lr, "final_train_loss": (result.get("train") or {}).get("loss"),
        "parameters": parameter_summary(model), "command": " ".join(sys.argv),
        "wall_time_s": round(sum(s["wall_s"] for s in sessions), 1), "sessions": len(sessions),
        "load_average": [s.get("load_start") for s in sessions] + [sessions[-1].get("load_end")],
        "machine": f"{platform.machine()} {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        "device": str(loop.device), "precision": loop.precision,
    }
    model.save_pretrained(final)
    result.update({"final": str(final), "data": info})
    if tracker is not None:  # after `final`: this swaps the model's weights for the chosen ones
        result["best"] = str(out_dir / "best")
        result["selection"] = tracker.write_best(model, out_dir / "best", per_epoch)
    return result
