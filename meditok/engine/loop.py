"""The training loop every single-optimiser family uses (synthesis GPT, VQA adapter, in-context).

A family supplies a model, a map-style dataset (+ collate) and ``loss_fn(model, batch) ->
(loss, logs)``; :class:`Loop` does the rest, the same way for all of them:

* AdamW with decay / no-decay groups, linear warm-up then cosine (or constant) LR, grad clip,
  gradient accumulation;
* the device / precision switch (CPU fp32, bf16 autocast on GPU) and torchrun DDP (NCCL on
  GPU, gloo on CPU), with rank-disjoint, exactly resumable data order;
* atomic checkpoints every ``ckpt_every`` steps (model, optimiser, scheduler, data position,
  every rank's RNG; keep-last-K), auto-resume from the newest one, ``weights_only`` loading;
* ``train_log.jsonl`` + optional TensorBoard + a progress bar, periodic ``evaluate`` hooks;
* a non-finite loss on any rank stops every rank before the update (:class:`TrainingDiverged`),
  so the last checkpoint on disk is the last good state.

The tokenizer's GAN trainer has two optimisers and stays in ``meditok.tokenizer.train``; it is
built from the same engine pieces.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset

from meditok.engine import checkpoints as ckpt_io
from meditok.engine.distributed import any_rank, cleanup, init_distributed
from meditok.engine.logs import TrainLogger, load_average, record_session
from meditok.engine.optim import WarmupCosine, build_adamw
from meditok.engine.sampler import ResumableSampler
from meditok.utils.config import Config
from meditok.utils.device import autocast, default_precision, resolve_device, seed_everything

LossFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, dict[str, float]]"]


class TrainingDiverged(RuntimeError):
    """A loss became NaN/inf; the run stopped without writing a checkpoint."""


@dataclass
class LoopConfig(Config):
    """Optimisation and bookkeeping of one run (every field overridable as ``--loop.field``)."""

    steps: int = 1000
    #: Items per process per micro-batch.
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05
    warmup_steps: int = 0
    #: ``cosine`` (to ``min_lr_ratio``·lr at the last step) or ``constant`` after warm-up.
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    num_workers: int = 0
    seed: int = 0
    #: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    device: str = "auto"
    #: ``auto`` (bf16 autocast on GPU, fp32 on CPU), ``fp32`` or ``bf16``.
    precision: str = "auto"
    ckpt_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    eval_every: int = 0
    output_dir: str = "runs/run"
    auto_resume: bool = True
    progress: bool = True
    tensorboard: bool = False

    def validate(self) -> None:
        for name in ("steps", "ckpt_every", "log_every", "eval_every", "keep_last", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"loop.{name} must be >= 0")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("loop.batch_size and loop.grad_accum must be >= 1")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"loop.schedule must be cosine or constant, got {self.schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"loop.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.lr <= 0:
            raise ValueError("loop.lr must be positive")


class Loop:
    """Fit ``model`` on ``dataset`` by minimising ``loss_fn``; see the module docstring.

    Args:
        model: the module to train (parameters with ``requires_grad=False`` stay frozen).
        loss_fn: ``(model, batch) -> (scalar loss, {name: float})``; runs under autocast.
        dataset: map-style dataset; ``collate`` turns a list of items into a batch.
        cfg: :class:`LoopConfig`.
        fmt: format tag of this family's checkpoints (refuses checkpoints of another family).
        run_config: the family's full config, stored in every checkpoint.
        evaluate: ``(model, step) -> {name: value}`` called on rank 0 every ``eval_every`` steps
            and at the end; its result is logged.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, dataset: Dataset, cfg: LoopConfig, *,
                 fmt: str, collate: Callable[[list], Any] | None = None,
                 run_config: dict[str, Any] | None = None,
                 evaluate: Callable[[nn.Module, int], dict[str, Any]] | None = None):
        cfg.validate()
        self.cfg, self.fmt, self.loss_fn, self.evaluate = cfg, fmt, loss_fn, evaluate
        self.run_config = run_config or {}
        requested = resolve_device(cfg.device)
        self.dist = init_distributed(requested.type)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.precision = default_precision(self.device, cfg.precision)
        seed_everything(cfg.seed + self.dist.rank)
        self.model = model.to(self.device)
        self.model.train()
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp: nn.Module = DDP(self.model, device_ids=ids, broadcast_buffers=False)
        else:
            self.ddp = self.model
        self.optim = build_adamw(self.model.named_parameters(), cfg.lr, cfg.betas, cfg.eps,
                                 cfg.weight_decay)
        self.sched = WarmupCosine(self.optim, cfg.steps, cfg.warmup_steps,
                                  1.0 if cfg.schedule == "constant" else cfg.min_lr_ratio)
        self.sampler = ResumableSampler(len(dataset), cfg.batch_size, cfg.seed, self.dist.rank,
                                        self.dist.world_size)
        self.dataset, self.collate = dataset, collate
        self.out_dir = Path(cfg.output_dir)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.resumed_from: Path | None = None
        self.start_step = 0
        self.last_eval: dict[str, Any] = {}

    # ------------------------------------------------------------------ data
    def _loader(self) -> DataLoader:
        self.sampler.set_position(self.epoch, self.batch_in_epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        g = torch.Generator()  # private: creating the iterator must not consume the global RNG
        g.manual_seed(self.cfg.seed + self.epoch)
        return DataLoader(self.dataset, batch_size=self.cfg.batch_size, sampler=self.sampler,
                          num_workers=self.cfg.num_workers, collate_fn=self.collate,
                          drop_last=True, generator=g, pin_memory=self.device.type == "cuda")

    def _batches(self):
        while True:
            if self.batch_in_epoch >= self.sampler.batches_per_epoch:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            for batch in self._loader():
                self.batch_in_epoch += 1
                yield batch

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; every rank gives its RNG)."""
        rng = ckpt_io.rng_state()
        rngs: list[Any] = [None] * self.dist.world_size if self.dist.enabled else [rng]
        if self.dist.enabled:
            torch.distributed.all_gather_object(rngs, rng)
        path = None
        if self.dist.is_main:
            state = {"model": self.model.state_dict(), "optim": self.optim.state_dict(),
                     "sched": self.sched.state_dict(), "config": self.run_config,
                     "data": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
                     "rng": rngs, "world_size": self.dist.world_size}
            path = ckpt_io.save_checkpoint(state, self.out_dir, self.step, self.cfg.keep_last, self.fmt)
        if self.dist.enabled:
            torch.distributed.barrier()
        return path

    def load(self, path: str | Path) -> None:
        state = ckpt_io.load_checkpoint(path, self.fmt)
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        self.step = int(state["step"])
        self.epoch = int(state["data"]["epoch"])
        self.batch_in_epoch = int(state["data"]["batch_in_epoch"])
        rngs = state.get("rng") or []
        if len(rngs) == self.dist.world_size:
            ckpt_io.set_rng_state(rngs[self.dist.rank])
        else:  # another number of processes: the data position stays exact, RNG re-seeded
            seed_everything(self.cfg.seed + self.dist.rank + self.step)
        self.resumed_from = Path(path)

    # ------------------------------------------------------------------ one step
    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self.dist.enabled:
            bad = any_rank(bad, self.device)
        if bad:
            last = ckpt_io.latest_checkpoint(self.out_dir)
            raise TrainingDiverged(f"non-finite loss at step {self.step + 1}; stopped without saving. "
                                   f"Last good checkpoint: {last or 'none'} (lower loop.lr or use fp32)")

    def train_step(self, micro: list[Any]) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches."""
        logs: list[dict[str, float]] = []
        losses = []
        for i, batch in enumerate(micro):
            sync = i == len(micro) - 1 or not self.dist.enabled
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()):
                with autocast(self.device, self.precision):
                    loss, extra = self.loss_fn(self.ddp, batch)
                loss = loss.float()
                self._check_finite(loss)
                (loss / len(micro)).backward()
            losses.append(float(loss.detach()))
            logs.append(extra)
        lr = self.optim.param_groups[0]["lr"]
        params = [p for g in self.optim.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip) if self.cfg.grad_clip > 0 \
            else torch.zeros(())
        self.optim.step()
        self.sched.step()
        self.optim.zero_grad(set_to_none=True)
        self.step += 1
        out = {"loss": float(np.mean(losses)), "lr": lr, "grad_norm": float(grad_norm)}
        for key in logs[0]:
            out[key] = float(np.mean([r[key] for r in logs]))
        return out

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train to ``cfg.steps`` (auto-resuming), evaluating and checkpointing on the way."""
        cfg = self.cfg
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.auto_resume and (last := ckpt_io.latest_checkpoint(self.out_dir)) is not None:
            self.load(last)
        self.start_step = self.step  # where this session began (0, or the resumed checkpoint's step)
        # this session's id, start and load: its sessions.jsonl row is kept current at every checkpoint
        self._session_id = f"{os.getpid()}-{time.time():.3f}"
        self._fit_start = (time.time(), load_average())
        logger = TrainLogger(self.out_dir, self.dist.is_main, cfg.steps, self.step,
                             cfg.tensorboard, cfg.progress)
        if self.resumed_from is not None:
            logger.message(f"resumed from {self.resumed_from} at step {self.step}")
        per_step = cfg.batch_size * cfg.grad_accum * self.dist.world_size
        batches = self._batches()
        t0, items, record = time.perf_counter(), 0, {}
        try:
            while self.step < cfg.steps:
                record = self.train_step([next(batches) for _ in range(cfg.grad_accum)])
                items += per_step
                logger.progress(1, {"loss": record["loss"]})
                last = self.step == cfg.steps
                if cfg.log_every and (self.step % cfg.log_every == 0 or last):
                    dt = time.perf_counter() - t0
                    logger.log({"step": self.step, "epoch": self.epoch, **record,
                                "items_per_s": items / max(dt, 1e-9)})
                    t0, items = time.perf_counter(), 0
                if self.evaluate is not None and self.dist.is_main and (
                        (cfg.eval_every and self.step % cfg.eval_every == 0) or last):
                    self.model.eval()
                    with torch.no_grad():
                        self.last_eval = self.evaluate(self.model, self.step)
                    self.model.train()
                    logger.log({"step": self.step, **self.last_eval})
                if cfg.ckpt_every and (self.step % cfg.ckpt_every == 0 or last):
                    self.save()
                    if self.dist.is_main:  # this session's cost so far, in case it never ends cleanly
                        record_session(self.out_dir, self._session_row(*self._fit_start, interrupted=True))
        finally:
            logger.close()
        return {"step": self.step, "train": record, "eval": self.last_eval,
                "checkpoint": str(ckpt_io.latest_checkpoint(self.out_dir) or ""),
                "command": " ".join(sys.argv)}

    def close(self, clean: bool = True) -> None:
        """Drop the DDP wrapper, then release the process group (see :func:`cleanup`)."""
        self.ddp = self.model
        gc.collect()
        cleanup(self.dist, clean)

    def end_session(self, final: str | Path, started_at: float, load_start: Any = None) -> list[dict] | None:
        """After :meth:`run` on rank 0: record this session in ``OUT/sessions.jsonl`` and return every
        session of the run — or ``None`` when it trained no step and ``final`` already holds the
        model (a finished run started again: the caller keeps that model and its record)."""
        if self.start_step == self.step:
            if (Path(final) / "config.json").is_file():
                return None
            return record_session(self.out_dir)
        return record_session(self.out_dir, self._session_row(started_at, load_start))

    def _session_row(self, started_at: float, load_start: Any, interrupted: bool = False) -> dict[str, Any]:
        """This session's ``sessions.jsonl`` row (``interrupted``: the checkpoint-time row that
        :meth:`end_session` replaces when the session ends normally)."""
        row = {"session": self._session_id, "start": started_at, "wall_s": round(time.time() - started_at, 1),
               "from_step": self.start_step, "to_step": self.step, "load_start": load_start,
               "load_end": load_average(), "command": " ".join(sys.argv)}
        return dict(row, interrupted=True) if interrupted else row

    def run(self) -> dict[str, Any]:
        """:meth:`fit`, then :meth:`close` however it ends (the process group must not outlive
        a failed run: torchrun would wait for it)."""
        clean = False
        try:
            result = self.fit()
            clean = True
            return result
        finally:
            self.close(clean)
