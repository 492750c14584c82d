"""Train a modality-conditioned GPT on token shards with the shared engine loop.

AdamW (β 0.9/0.95, weight decay 0.05 on matrices), lr 1e-4, grad clip 1, warm-up (paper
App. C.2 / the official ``train_c2i.py``), bf16 autocast on GPU and fp32 on CPU, torchrun DDP,
atomic resumable checkpoints, JSONL logs and a progress bar all come from
:class:`meditok.engine.loop.Loop`. This module only wires the data (class-balanced draws,
:mod:`meditok.synthesis.data`), the loss (the GPT's mean cross-entropy over every sub-code)
and the final generator (``save_pretrained`` with the conditions, the tokenizer identity and
the provenance in its config).
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meditok.data.token_shards import load_token_shards
from meditok.engine.logs import load_average
from meditok.engine.loop import Loop
from meditok.errors import InvalidInputError
from meditok.gpt import GPT
from meditok.synthesis.config import SynthConfig
from meditok.synthesis.data import ConditionedTokens, build_conditions, collate
from meditok.synthesis.model import CHECKPOINT_FORMAT, gpt_config
from meditok.tokenizer.layout import grid_to_sequence


def _loss(model, batch):
    tokens, cond = batch
    device = next(model.parameters()).device
    out = model(tokens.to(device), cond.to(device))
    return out.loss, {}


def _validation(shards, conditions, items: int, seed: int):
    """A fixed set of validation sequences (balanced over conditions) and its loss function."""
    if items <= 0 or len(shards) == 0:
        return None
    mods = shards.labels["modality"].astype(str)
    ids = [conditions.names.index(m) if m in conditions.names else -1 for m in mods]
    ids = np.array(ids)
    rng = np.random.default_rng(seed)
    keep = []
    groups = [np.flatnonzero(ids == c) for c in np.unique(ids[ids >= 0])]
    per = max(1, items // max(1, len(groups)))
    for g in groups:
        keep += rng.permutation(g)[:per].tolist()
    if not keep:
        return None
    keep = np.array(sorted(keep))
    seqs = grid_to_sequence(torch.from_numpy(shards.tokens[keep].astype(np.int64)))
    cond = torch.from_numpy(ids[keep])

    def evaluate(model: GPT, step: int) -> dict[str, Any]:
        device = next(model.parameters()).device
        losses = [float(model(s.to(device), c.to(device)).loss) * len(c)
                  for s, c in zip(seqs.split(32), cond.split(32))]
        return {"val_loss": sum(losses) / len(cond), "val_items": int(len(cond))}

    return evaluate


def train(cfg: SynthConfig) -> dict[str, Any]:
    """Run (or resume) ``cfg``; write the final generator; return a summary."""
    cfg.validate()
    if not cfg.data.shards:
        raise InvalidInputError("data.shards is empty: give the folder of 'meditok synth pretokenize'")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0, load0 = time.time(), load_average()
    shards = load_token_shards(cfg.data.shards)
    train_shards = shards.split(cfg.data.split)
    if len(train_shards) == 0:
        raise InvalidInputError(f"{cfg.data.shards}: no tokens in split {cfg.data.split!r}")
    conditions = build_conditions(train_shards, cfg.data.conditions, cfg.data.min_images,
                                  cfg.data.class_datasets)
    gcfg = gpt_config(cfg, shards.tokenizer, conditions)
    torch.manual_seed(cfg.loop.seed)
    model = GPT(gcfg)
    dataset = ConditionedTokens(train_shards, conditions, cfg.data.balance, cfg.data.epoch_size,
                                cfg.data.class_share, cfg.loop.seed)
    val_split = "val" if cfg.data.split != "val" else "test"
    evaluate = _validation(shards.split(val_split), conditions, cfg.data.val_items, cfg.loop.seed)
    loop = Loop(model, _loss, dataset, cfg.loop, fmt=CHECKPOINT_FORMAT, collate=collate,
                run_config=cfg.to_dict(), evaluate=evaluate)
    result = loop.run()
    if not loop.dist.is_main:
        return result
    final = Path(cfg.output or Path(cfg.loop.output_dir) / "final")
    sessions = loop.end_session(final, t0, load0)
    if sessions is None:
        result["final"] = str(final)  # nothing trained this time: keep the generator and its record
        return result
    counts = train_shards.counts("modality")
    model.config.meta["training"] = {
        "shards": str(Path(cfg.data.shards).resolve()),
        "manifest": shards.index.get("source", {}).get("manifest"),
        "split": cfg.data.split, "train_images": {k: counts.get(k, 0) for k in conditions.names
                                                   if k in counts},
        "draw_shares_epoch0": _shares(dataset),
        "balance": cfg.data.balance, "class_share": cfg.data.class_share,
        "steps": result["step"], "batch_size": cfg.loop.batch_size * cfg.loop.grad_accum * loop.dist.world_size,
        "lr": cfg.loop.lr, "final_train_loss": (result.get("train") or {}).get("loss"),
        "final_val_loss": (result.get("eval") or {}).get("val_loss"),
        "command": " ".join(sys.argv), "wall_time_this_session_s": round(time.time() - t0, 1),
        "sessions": sessions, "wall_time_s": round(sum(r["wall_s"] for r in sessions), 1),
        "machine": f"{platform.machine()} {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        "device": str(loop.device),
    }
    model.save_pretrained(final)
    result["final"] = str(final)
    return result


def _shares(dataset: ConditionedTokens) -> dict[str, float]:
    dataset.set_epoch(0)
    return dataset.draw_shares()
