"""Train an in-context model (``mvg``, ``token`` or a ``unet`` specialist) with the shared loop.

Everything about optimisation, checkpoints, resuming, logging and devices is
:class:`meditok.engine.loop.Loop`; this module wires the episodes
(:mod:`meditok.incontext.episodes`), the objective of each kind and the final model's
provenance (data, licences, shares, steps, command, wall time, machine load).
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from meditok.engine.logs import load_average
from meditok.engine.loop import Loop
from meditok.incontext.baselines import UNet, unet_preset
from meditok.incontext.config import InContextConfig
from meditok.incontext.episodes import TASK_IDS, EpisodeDataset, EpisodeSampler, canvas, collate
from meditok.incontext.infer import cell_size
from meditok.incontext.model import MVG, mvg_preset, random_token_mask
from meditok.incontext.sources import load_sources

CHECKPOINT_FORMAT = {"mvg": "meditok-incontext-mvg-v1", "token": "meditok-incontext-token-v1",
                     "unet": "meditok-incontext-unet-v1"}


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def build_model(cfg: InContextConfig) -> nn.Module:
    """The untrained model a config describes."""
    if cfg.kind == "mvg":
        return MVG(mvg_preset(cfg.preset, **cfg.model))
    if cfg.kind == "unet":
        task = cfg.data.task_specs()[0]
        return UNet(unet_preset(cfg.preset, task=task.task, **cfg.model))
    from meditok.incontext.tokens import TokenMVG
    return TokenMVG.create(cfg.tokenizer, cfg.preset, **cfg.model)


def make_loss(cfg: InContextConfig):
    """``(model, batch) -> (loss, logs)`` for the configured kind (the hybrid schedule is in
    the batch: each episode says whether it is an MIM or an AR episode)."""
    d = cfg.data

    def mvg_loss(model, batch):
        m = unwrap(model)
        dev = m.pos.device
        x, mim, task = batch["canvas"].to(dev), batch["mim"].to(dev), batch["task"].to(dev)
        n, total, logs = x.shape[0], 0.0, {}
        if (~mim).any():
            ar, _ = m.forward_ar(x[~mim], weights={1: d.ar_prompt_weight, 3: 1.0}, beta=d.loss_beta,
                                 task=task[~mim])
            total = total + ar * (~mim).sum() / n
            logs["ar_loss"] = float(ar.detach())
        if mim.any():
            tm = random_token_mask(int(mim.sum()), m, d.mask_ratio, d.p_full_query_label, device=dev)
            mm, _ = m.forward_mim(x[mim], tm, beta=d.loss_beta, task=task[mim])
            total = total + mm * mim.sum() / n
            logs["mim_loss"] = float(mm.detach())
        logs["mim_share"] = float(mim.float().mean())
        return total, logs

    def unet_loss(model, batch):
        m = unwrap(model)
        return m.loss(batch["canvas"].to(next(m.parameters()).device), beta=d.loss_beta), {}

    def token_loss(model, batch):
        m = unwrap(model)
        return m.loss(batch["canvas"].to(next(m.parameters()).device), batch["task"]), {}

    return {"mvg": mvg_loss, "unet": unet_loss, "token": token_loss}[cfg.kind]


def _monitor(sampler: EpisodeSampler, n: int, seed: int):
    """Loss / vessel IoU on fixed *training-split* episodes (monitoring only, never selection)."""
    if n <= 0:
        return None
    rng = np.random.default_rng([seed, 99991])
    eps = [sampler.sample(rng) for _ in range(n)]
    x = torch.stack([canvas(e.cells) for e in eps])
    task = torch.tensor([TASK_IDS[e.task] for e in eps])

    def evaluate(model, step: int) -> dict[str, Any]:
        m = unwrap(model)
        pred = torch.cat([m.predict(x[i:i + 16], task=task[i:i + 16]) for i in range(0, len(x), 16)])
        tgt = x[:, :, x.shape[2] // 2:, x.shape[3] // 2:]
        err = (pred - tgt).abs().mean(dim=(1, 2, 3))
        out = {"monitor_l1": float(err.mean()), "monitor_episodes": len(eps)}
        seg = [i for i, e in enumerate(eps) if e.task == "segmentation"]
        if seg:
            inter = union = 0
            for i in seg:
                g = (tgt[i] > -0.5).any(0)
                p = (pred[i] > -0.5).any(0)
                inter += int((g & p).sum())
                union += int((g | p).sum())
            out["monitor_seg_iou"] = inter / max(union, 1)
        return out

    return evaluate


def train(cfg: InContextConfig) -> dict[str, Any]:
    """Run (or resume) ``cfg``; write the final model; return a summary."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    load_start = load_average()
    specs = cfg.data.task_specs()
    needed = sorted({t.source for t in specs if t.weight > 0})
    sources = load_sources(cfg.data.root, needed)
    torch.manual_seed(cfg.loop.seed)
    model = build_model(cfg)
    sampler = EpisodeSampler(sources, specs, cell_size(model), cfg.data.scheme, cfg.data.segmentation_share,
                             noise_seed=cfg.loop.seed)
    dataset = EpisodeDataset(sampler, cfg.data.epoch_size, cfg.loop.seed)
    evaluate = _monitor(sampler, cfg.data.val_episodes, cfg.loop.seed)
    loop = Loop(model, make_loss(cfg), dataset, cfg.loop, fmt=CHECKPOINT_FORMAT[cfg.kind], collate=collate,
                run_config=cfg.to_dict(), evaluate=evaluate)
    result = loop.run()
    if not loop.dist.is_main:
        return result
    final = Path(cfg.output or Path(cfg.loop.output_dir) / "final")
    sessions = loop.end_session(final, t0, load_start)
    if sessions is None:
        result["final"] = str(final)  # nothing trained this time: keep the final model and its record
        return result
    meta = {
        "name": cfg.name or final.name, "kind": cfg.kind, "preset": cfg.preset,
        "training": {
            "data_root": str(Path(cfg.data.root).resolve()),
            "sources": {k: {"train_items": len(s.train), "licence": s.licence,
                            "cases": sorted({it.case for it in s.train})} for k, s in sources.items()},
            "task_shares": sampler.shares(), "scheme": cfg.data.scheme,
            "segmentation_share": cfg.data.segmentation_share,
            "mim_share": {t.name: t.mim for t in sampler.tasks},
            "mask_ratio": cfg.data.mask_ratio, "p_full_query_label": cfg.data.p_full_query_label,
            "steps": result["step"], "batch_size": cfg.loop.batch_size * cfg.loop.grad_accum * loop.dist.world_size,
            "lr": cfg.loop.lr, "final_train_loss": (result.get("train") or {}).get("loss"),
            "monitor": result.get("eval") or {}, "command": " ".join(sys.argv),
            "wall_time_this_session_s": round(time.time() - t0, 1),
            # every session that trained this run (a resumed or extended run states its whole cost)
            "sessions": sessions, "wall_time_s": round(sum(r["wall_s"] for r in sessions), 1),
            "load_average_1min_start_end": [(load or [None])[0] for load in (load_start, load_average())],
            "machine": f"{platform.machine()} {torch.get_num_threads()} thread(s), {os.cpu_count()} cores, "
                       f"torch {torch.__version__}",
            "device": str(loop.device),
        },
    }
    target = unwrap(model)
    cfg_meta = target.gpt.config.meta if cfg.kind == "token" else target.config.meta
    cfg_meta.update(meta)
    target.save_pretrained(final)
    result["final"] = str(final)
    return result
