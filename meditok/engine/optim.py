"""Optimisers and learning-rate schedules (spec §2.4).

AdamW with weight decay only on matrices/kernels: parameters with ``ndim < 2``, biases,
norm weights and ``logit_scale`` are in a no-decay group. The schedule is a linear warm-up
from 0 followed by a cosine decay to ``min_lr_ratio × peak`` at the last step.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

_NO_DECAY_PARTS = ("bias", "logit_scale", "bn", "ln")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Whether a parameter is excluded from weight decay (ndim < 2, bias, norm, logit_scale)."""
    if param.ndim < 2:
        return True
    parts = name.lower().split(".")
    return any(p in _NO_DECAY_PARTS or "norm" in p for p in parts)


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups (decay / no decay) over the parameters that require grad."""
    decay, no_decay = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        (no_decay if no_weight_decay(name, p) else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_adamw(named: Iterable[tuple[str, nn.Parameter]], lr: float, betas: tuple[float, float],
                eps: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``named`` parameters with the decay/no-decay split."""
    groups = param_groups(named, weight_decay)
    if not groups:
        raise ValueError("no trainable parameters for the optimiser")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier at ``step`` (0-based): linear warm-up, then cosine to ``min_ratio``.

    The first update already gets ``1 / warmup`` of the peak (a zero LR step is wasted).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup - 1)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """:func:`warmup_cosine` as an LR scheduler, optionally starting at ``start`` (disc start)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, warmup: int,
                 min_ratio: float, start: int = 0):
        self.total, self.warmup, self.min_ratio, self.start = total, warmup, min_ratio, start
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        return warmup_cosine(max(0, step - self.start), max(1, self.total - self.start),
                             self.warmup, self.min_ratio)

    #: Rebuilt from the config, never restored: a run resumed with a raised ``loop.steps``
    #: continues on the cosine of the new length (LambdaLR would otherwise restore the old total
    #: from its ``__dict__`` and hold the final LR for every added step).
    _FROM_CONFIG = ("lr_lambdas", "total", "warmup", "min_ratio", "start")

    def state_dict(self) -> dict:
        # only the counters (last_epoch, base_lrs, ...) are state
        return {k: v for k, v in super().state_dict().items() if k not in self._FROM_CONFIG}

    def load_state_dict(self, state_dict: dict) -> None:
        # checkpoints written before _FROM_CONFIG existed carry the old schedule: drop it
        state = {k: v for k, v in state_dict.items() if k not in self._FROM_CONFIG}
        state["lr_lambdas"] = [None] * len(self.optimizer.param_groups)
        super().load_state_dict(state)
        # the optimiser's restored LR belongs to the old schedule; set this one's (the same
        # value, bit for bit, when the schedule did not change)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self._factor(self.last_epoch)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
