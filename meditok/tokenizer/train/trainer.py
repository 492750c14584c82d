"""The MedITok trainer: one object that builds a run from a :class:`TrainConfig` and fits it.

Per optimiser step (spec §2.2–2.4):

1. generator: for each micro-batch, forward the tokenizer (+ teacher heads), compute
   ``L_total`` with the adaptive GAN weight (D frozen), backward; clip; AdamW step;
2. discriminator: hinge (+ BCR) loss on the detached reconstructions; clip; AdamW step;
3. ``logit_scale`` clamped to ``[0, ln 100]``; all gradients zeroed.

A non-finite loss on any rank stops every rank with :class:`TrainingDiverged` before the
update, so the last checkpoint on disk stays the last good state.
"""
from __future__ import annotations

import contextlib
import gc
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from meditok.engine import checkpoints as ckpt_io
from meditok.engine.distributed import DistInfo, any_rank, cleanup, init_distributed
from meditok.engine.logs import TrainLogger
from meditok.engine.loop import TrainingDiverged  # one exception for every trainer
from meditok.engine.optim import WarmupCosine, build_adamw
from meditok.tokenizer.train.components import (TrainModule, build_discriminator, build_lpips,
                                                build_model, build_teachers)
from meditok.tokenizer.train.config import TrainConfig
from meditok.tokenizer.train.objective import GeneratorLoss, discriminator_loss
from meditok.tokenizer.train.transfer import FORMAT, flat_trainable_state
from meditok.utils.device import autocast, resolve_device, seed_everything

LOGIT_SCALE_MAX = math.log(100.0)


class Trainer:
    """Builds model, teachers, discriminator, optimisers and data from ``cfg``; :meth:`fit` runs it."""

    def __init__(self, cfg: TrainConfig, dist_info: DistInfo | None = None):
        cfg.validate()
        self.cfg = cfg
        device_type = "cuda" if cfg.device.startswith("cuda") or (
            cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.dist = dist_info or init_distributed(device_type)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        if self.device.type == "cpu" and self.dist.enabled and cfg.device not in ("cpu", "auto"):
            raise ValueError("distributed training on CPU needs --device cpu (gloo)")
        self.out_dir = Path(cfg.output_dir)
        self.use_bf16 = cfg.precision == "bf16" and (self.device.type == "cuda" or cfg.bf16_on_cpu)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._seed_everything(cfg.seed + self.dist.rank)

        self.model, init = build_model(cfg)
        self.teachers = build_teachers(cfg, self.device)
        self.module = TrainModule(self.model, self.teachers, cfg.align.unfreeze_text)
        if init is not None and init.teacher_side:
            self.module.load_teacher_side(init.teacher_side)
        self.init_dropped = init.dropped if init is not None else []
        self.module.to(self.device).train()
        image_size = self.model.config.model.image_size
        self.disc = build_discriminator(cfg, image_size)
        self.lpips = build_lpips(cfg, image_size)
        if self.lpips is not None:
            self.lpips.to(self.device)
        self.loss_fn = GeneratorLoss(cfg, self.lpips)

        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # An unfrozen HF text encoder has layers the pooled output never uses (BERT pooler).
            self.ddp = DDP(self.module, device_ids=ids, broadcast_buffers=False,
                           find_unused_parameters=cfg.align.unfreeze_text)
        else:
            self.ddp = self.module
        self.optim = build_adamw(self.module.named_parameters(), cfg.optim.lr, cfg.optim.betas,
                                 cfg.optim.eps, cfg.optim.weight_decay)
        self.sched = WarmupCosine(self.optim, cfg.steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        self.disc_ddp = self.disc_optim = self.disc_sched = None
        self.diffaug = self.strong_aug = None
        if self.disc is not None:
            from meditok.losses import DiffAug, trainable_parameters

            self.disc.to(self.device).train()
            self.disc_ddp = (DDP(self.disc, device_ids=ids, broadcast_buffers=False)
                             if self.dist.enabled else self.disc)
            names = {id(p): n for n, p in self.disc.named_parameters()}
            self.disc_optim = build_adamw(((names[id(p)], p) for p in trainable_parameters(self.disc)),
                                          cfg.disc.lr, cfg.disc.betas, cfg.disc.eps,
                                          cfg.disc.weight_decay)
            self.disc_sched = WarmupCosine(self.disc_optim, cfg.steps, cfg.disc.warmup_steps,
                                           cfg.disc.min_lr_ratio, start=cfg.loss.disc_start)
            self.diffaug = DiffAug() if cfg.disc.diffaug else None
            self.strong_aug = DiffAug(prob=1.0, cutout=0.2, blur=False) if cfg.loss.bcr > 0 else None

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.train_data = None
        self.val_batches = None
        self.last_val: dict[str, Any] = {}
        self.resumed_from: Path | None = None

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _seed_everything(seed: int) -> None:
        seed_everything(seed)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, "bf16" if self.use_bf16 else "fp32")

    def _aug_generator(self, micro: int) -> torch.Generator:
        # DiffAug randomness is a pure function of (seed, step, rank, micro-batch): identical in
        # a resumed run without touching the global RNG.
        g = torch.Generator(device=self.device)
        g.manual_seed(((self.cfg.seed * 1_000_003 + self.step) * 997 + self.dist.rank) * 31 + micro)
        return g

    def gan_active(self) -> bool:
        return self.disc is not None and self.step >= self.cfg.loss.disc_start

    def gan_warmup(self) -> float:
        from meditok.losses import disc_warmup

        return disc_warmup(self.step - self.cfg.loss.disc_start, self.cfg.loss.disc_warmup)

    def _teacher_features(self, images: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
        feats = {}
        for kind, teacher in self.teachers.items():
            if kind == "text" and self.cfg.align.unfreeze_text:
                continue  # encoded inside TrainModule, with gradient
            with torch.no_grad():
                feats[kind] = teacher.encode(images if kind == "vision" else list(captions)).to(self.device)
        return feats

    # ------------------------------------------------------------------ one step
    def generator_backward(self, batch: dict[str, Any], micro: int = 0, sync: bool = True) -> dict[str, Any]:
        """Forward + backward of the generator objective for one micro-batch (grads accumulate)."""
        cfg = self.cfg
        x = batch["image"].to(self.device, non_blocking=True)
        captions = batch.get("caption") or [""] * x.shape[0]
        feats = self._teacher_features(x, captions)
        ctx = contextlib.nullcontext() if sync or not self.dist.enabled else self.ddp.no_sync()
        with ctx:
            with self.autocast():
                out, targets = self.ddp(x, feats, captions)
            warm = self.gan_warmup() if self.gan_active() else 0.0
            adversary = (lambda fake: self._adversary(fake, micro)) if warm > 0 else None
            if adversary is not None:
                self.disc.requires_grad_(False)
                self.disc.eval()
            try:
                total, terms = self.loss_fn(out, x, targets, adversary,
                                            self.model.last_decoder_weight(), warm)
            finally:
                if adversary is not None:
                    self.disc.requires_grad_(True)
                    self.disc.train()
            self._check_finite(total, "generator")
            (total / cfg.optim.grad_accum).backward()
        usage = out.usage.detach().float()
        return {"loss_total": float(total.detach()), **terms,
                "usage_min": float(usage.min()), "usage_mean": float(usage.mean()),
                "_pair": (x, out.reconstruction.detach())}

    def _adversary(self, fake: torch.Tensor, micro: int) -> torch.Tensor:
        """Frozen discriminator logits of (DiffAug-ed) reconstructions for the GAN term."""
        if self.diffaug is not None:
            fake = self.diffaug(fake, self._fade(), self._aug_generator(micro))
        with self.autocast():
            return self.disc(fake)

    def _fade(self) -> float:
        from meditok.losses import blur_fade

        return blur_fade(self.step - self.cfg.loss.disc_start, self.cfg.loss.disc_warmup)

    def discriminator_backward(self, real: torch.Tensor, fake: torch.Tensor, micro: int = 0) -> dict[str, float]:
        with self.autocast():
            loss_d, metrics = discriminator_loss(
                self.disc_ddp, real, fake, self.diffaug, self.strong_aug, self._fade(),
                self._aug_generator(1000 + micro), self.cfg.loss.bcr)
        self._check_finite(loss_d, "discriminator")
        (loss_d / self.cfg.optim.grad_accum).backward()
        return {"loss_d": float(loss_d.detach()), **metrics}

    def _check_finite(self, loss: torch.Tensor, what: str) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self.dist.enabled:
            bad = any_rank(bad, self.device)
        if bad:
            last = ckpt_io.latest_checkpoint(self.out_dir)
            raise TrainingDiverged(
                f"non-finite {what} loss ({float(loss.detach())}) at step {self.step + 1}; "
                f"training stopped without saving. Last good checkpoint: "
                f"{last if last else 'none'} (lower optim.lr, raise loss.disc_warmup or use fp32)")

    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, Any]:
        """One optimiser step over ``grad_accum`` micro-batches (generator, then D)."""
        n = len(micro_batches)
        logs: list[dict[str, Any]] = []
        for i, batch in enumerate(micro_batches):
            logs.append(self.generator_backward(batch, micro=i, sync=i == n - 1))
        lr = self.optim.param_groups[0]["lr"]
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.optim.grad_clip)
        self.optim.step()
        self.sched.step()
        d_logs: list[dict[str, float]] = []
        if self.gan_active():
            for i, rec in enumerate(logs):
                real, fake = rec["_pair"]
                ctx = (self.disc_ddp.no_sync() if self.dist.enabled and i < n - 1
                       else contextlib.nullcontext())
                with ctx:
                    d_logs.append(self.discriminator_backward(real, fake, micro=i))
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.cfg.disc.grad_clip)
            self.disc_optim.step()
        if self.disc_sched is not None:
            self.disc_sched.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)
        self.optim.zero_grad(set_to_none=True)
        if self.disc_optim is not None:
            self.disc_optim.zero_grad(set_to_none=True)
        self.step += 1
        out = {"lr": lr, "grad_norm": float(grad_norm)}
        out.update({k: float(np.mean([r[k] for r in logs])) for k in logs[0] if not k.startswith("_")})
        if d_logs:
            out.update({k: float(np.mean([r[k] for r in d_logs])) for k in d_logs[0]})
        else:
            out["loss_d"] = 0.0
        return out

    # ------------------------------------------------------------------ data position
    def _micro_batches(self) -> Iterator[dict[str, Any]]:
        data = self.train_data
        while True:
            if self.batch_in_epoch >= data.sampler.batches_per_epoch:
                self.epoch += 1
                self.batch_in_epoch = 0
            got = 0
            for batch in data.epoch_loader(self.epoch, self.batch_in_epoch):
                self.batch_in_epoch += 1
                got += 1
                yield batch
            if got == 0:
                raise RuntimeError(f"epoch {self.epoch} yielded no training batch (all images unreadable?)")
            # A shard epoch may end early (unreadable samples): move on to the next epoch.
            self.batch_in_epoch = max(self.batch_in_epoch, data.sampler.batches_per_epoch)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "model_config": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            **self.module.teacher_state(),
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "optim": self.optim.state_dict(),
            "sched": self.sched.state_dict(),
            "disc_optim": self.disc_optim.state_dict() if self.disc_optim is not None else None,
            "disc_sched": self.disc_sched.state_dict() if self.disc_sched is not None else None,
            "data": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
            "world_size": self.dist.world_size,
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; every rank gives its RNG)."""
        rng = ckpt_io.rng_state()
        if self.dist.enabled:
            rngs: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        path = None
        if self.dist.is_main:
            state = self.state_dict()
            state["rng"] = rngs
            path = ckpt_io.save_checkpoint(state, self.out_dir, self.step, self.cfg.keep_last, FORMAT)
        if self.dist.enabled:
            torch.distributed.barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        state = ckpt_io.load_checkpoint(path, FORMAT)
        self.model.load_state_dict(state["model"])
        self.module.load_teacher_side(flat_trainable_state(state))
        if self.disc is not None and state.get("disc") is not None:
            self.disc.load_state_dict(state["disc"])
        self.optim.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        if self.disc_optim is not None and state.get("disc_optim") is not None:
            self.disc_optim.load_state_dict(state["disc_optim"])
            self.disc_sched.load_state_dict(state["disc_sched"])
        self.step = int(state["step"])
        self.epoch = int(state["data"]["epoch"])
        self.batch_in_epoch = int(state["data"]["batch_in_epoch"])
        rngs = state.get("rng") or []
        if len(rngs) == self.dist.world_size:
            ckpt_io.set_rng_state(rngs[self.dist.rank])
        else:  # different number of processes: data position still exact, RNG re-seeded
            self._seed_everything(self.cfg.seed + self.dist.rank + self.step)
        self.resumed_from = Path(path)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train to ``cfg.steps`` (auto-resuming), validate, checkpoint, export ``final/``."""
        from meditok.tokenizer.train.data import build_train_data, build_val_batches
        from meditok.tokenizer.train.validate import run_validation

        cfg = self.cfg
        pre = self.model.config.preprocess
        self.train_data = build_train_data(cfg, pre, self.dist.rank, self.dist.world_size)
        self.val_batches = build_val_batches(cfg, pre) if self.dist.is_main else None
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out_dir / "train_config.yaml")
        if cfg.auto_resume and (last := ckpt_io.latest_checkpoint(self.out_dir)) is not None:
            self.load_checkpoint(last)
        logger = TrainLogger(self.out_dir, self.dist.is_main, cfg.steps, self.step,
                             cfg.tensorboard, cfg.progress)
        if self.resumed_from is not None:
            logger.message(f"resumed from {self.resumed_from} at step {self.step}")
        global_batch = cfg.data.batch_size * cfg.optim.grad_accum * self.dist.world_size
        batches = self._micro_batches()
        window_t, window_imgs = time.perf_counter(), 0
        try:
            while self.step < cfg.steps:
                micro = [next(batches) for _ in range(cfg.optim.grad_accum)]
                metrics = self.train_step(micro)
                window_imgs += global_batch
                logger.progress(1, {"loss": metrics["loss_total"]})
                if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    dt = time.perf_counter() - window_t
                    record = {"step": self.step, "epoch": self.epoch, **metrics, "img_per_s": window_imgs / max(dt, 1e-9)}
                    logger.log(record)
                    window_t, window_imgs = time.perf_counter(), 0
                if self.val_batches and cfg.val_every and (self.step % cfg.val_every == 0
                                                           or self.step == cfg.steps):
                    self.last_val = run_validation(self.model, self.val_batches, self.device,
                                                   self.autocast,
                                                   self.out_dir / "val" / f"recon_step{self.step:08d}.png")
                    logger.log({"step": self.step, **self.last_val})
                    logger.message(f"step {self.step}: val PSNR {self.last_val['val_psnr']:.2f} dB, "
                                   f"SSIM {self.last_val['val_ssim']:.3f}")
                if cfg.ckpt_every and (self.step % cfg.ckpt_every == 0 or self.step == cfg.steps):
                    self.save_checkpoint()
            final = self.export_final() if self.dist.is_main else None
        finally:
            logger.close()
        return {"step": self.step, "final": str(final) if final else None, **self.last_val}

    def export_final(self) -> Path:
        """``model.save_pretrained(output_dir/final)`` with training provenance in ``config.meta``."""
        meta = dict(self.model.config.meta)
        meta["training"] = {
            "stage": self.cfg.stage, "steps": self.step, "align_mode": self.cfg.align.mode,
            "teachers": {k: getattr(self.cfg.align, f"{k}_teacher") for k in self.teachers},
            "discriminator": self.cfg.disc.name if self.disc is not None else None,
            "init_from": self.cfg.model.init_from, "world_size": self.dist.world_size,
            "global_batch": self.cfg.data.batch_size * self.cfg.optim.grad_accum * self.dist.world_size,
            "command": " ".join(sys.argv), "torch": torch.__version__,
            "final_val": {k: v for k, v in self.last_val.items() if not isinstance(v, list)},
            "config": self.cfg.to_dict(),
        }
        self.model.config.meta = meta
        return self.model.save_pretrained(self.out_dir / "final")

    def close(self, clean: bool = True) -> None:
        """Drop the DDP wrappers, then release the process group (see ``cleanup``)."""
        self.ddp = self.module
        if self.disc_ddp is not None:
            self.disc_ddp = self.disc
        gc.collect()
        cleanup(self.dist, clean)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Build a :class:`Trainer` for ``cfg``, fit it and release the process group."""
    trainer = Trainer(cfg)
    clean = False
    try:
        result = trainer.fit()
        clean = True
        return result
    finally:
        trainer.close(clean)
