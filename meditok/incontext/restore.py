"""How a restoration label (denoising, inpainting) is predicted from its own image cell.

A plain MVG rebuilds every pixel of a label through the network. For restoration the answer is
nearly the input, and a rebuilt image has an error floor of its own (MR denoising: ~26.3 dB for
any noise level, below a lightly corrupted input's 29.7 dB; ``benchmarks/incontext_noise_sweep.py``).
``MVGConfig.residual_tasks`` names the tasks whose label uses the image cell ``x`` (``X`` for
``Y``, ``P_x`` for ``P_y``; only the pixels the network may see). Three ways, tried in this order:

* ``x + r`` — the decoded output ``r`` is a correction (default).
* ``x + g·r`` — ``residual_gate``: one learned scalar ``g`` from 0, so training starts at the
  identity. Tried: one gate shared by four tasks stays near the identity (inpainting holes stay).
* ``x + α·(p − x)`` — ``residual_blend``: ``p`` is the plain full prediction (also supervised on
  its own, so it learns exactly what the plain model learns) and a per-pixel gate
  ``α = sigmoid(conv1x1(decoder features))`` says how far to trust it over the input. A hole
  needs α = 1, heavy noise a large α, light noise a small one: the network can see which from the
  image, where one scalar per task could not. A pixel hidden from the network is always ``p``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meditok.errors import InvalidInputError
from meditok.incontext.episodes import TASK_IDS

#: A batch's task: one name for every row, task ids ``[B]`` (``TASK_IDS``), or None.
TaskArg = str | torch.Tensor | None


class Restoration(nn.Module):
    """The restoration rule of an MVG (see the module docstring); a no-op without ``tasks``."""

    def __init__(self, tasks: tuple[str, ...], gate: bool = False, blend: bool = False, width: int = 0):
        super().__init__()
        self.tasks = tuple(tasks)
        self.gate = nn.Parameter(torch.zeros(())) if tasks and gate else None
        self.blend = nn.Conv2d(width, 1, 1) if tasks and blend else None
        if self.blend is not None:  # α = 0.5 everywhere at init: both sources get a gradient
            nn.init.zeros_(self.blend.weight)
            nn.init.zeros_(self.blend.bias)

    @property
    def extra_channels(self) -> int:
        """Channels the decoder appends to its output for this rule (the blend logit)."""
        return 1 if self.blend is not None else 0

    def rows(self, task: TaskArg, batch: int, device: torch.device) -> torch.Tensor | None:
        """Which rows of a batch are restoration rows: ``task`` is one task name for the whole
        batch, task ids ``[B]`` (``TASK_IDS``) or None (no row) → bool ``[B]`` or None."""
        if not self.tasks or task is None:
            return None
        ids = torch.tensor([TASK_IDS[t] for t in self.tasks], device=device)
        if isinstance(task, str):
            if task not in TASK_IDS:
                raise InvalidInputError(f"unknown task {task!r}; choose from {sorted(TASK_IDS)}")
            task = torch.full((batch,), TASK_IDS[task], device=device)
        task = task.to(device)
        if task.shape != (batch,):
            raise InvalidInputError(f"task ids must have shape [{batch}], got {list(task.shape)}")
        rows = torch.isin(task, ids)
        return rows if bool(rows.any()) else None

    def forward(self, out: torch.Tensor, base: torch.Tensor, rows: torch.Tensor | None,
                 labels: list[bool], hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoder output ``out`` ``[B, S, C(+1), c, c]`` of sources whose label flags are
        ``labels`` (length S), their image cells ``base`` ``[B, S, C, c, c]`` (zeros where not a
        label), ``rows`` from ``rows()``, ``hidden`` ``[B, S, 1, c, c]`` (1 = the image pixel was
        hidden from the network) → (the label prediction ``[B, S, C, c, c]``, the mask ``[B, S]``
        of the blended sources, or None when no source was blended)."""
        pred = out[:, :, :out.shape[2] - self.extra_channels]
        if rows is None:
            return pred, None
        r = rows[:, None] & torch.tensor(labels, device=out.device)[None]  # [B, S]
        rr = r[:, :, None, None, None]
        if self.blend is not None:
            alpha = torch.sigmoid(out[:, :, -1:].float()).to(pred.dtype)
            if hidden is not None:
                alpha = torch.where(hidden.bool(), torch.ones_like(alpha), alpha)
            return torch.where(rr, base + alpha * (pred - base), pred), r
        corr = pred if self.gate is None else pred * self.gate.to(pred.dtype)
        return torch.where(rr, corr + base, pred), None

    def aux_loss(self, out: torch.Tensor, target: torch.Tensor, blended: torch.Tensor | None, beta: float,
                 weight: torch.Tensor | None = None) -> torch.Tensor | float:
        """With ``blend``: the smooth-L1 of the plain prediction (``out`` without the logit) on
        the blended sources, summed per pixel and divided like the main term (by ``weight``'s
        sum, else the number of elements) — the plain prediction keeps learning as it would
        alone, whatever α does. 0 otherwise."""
        if blended is None:
            return 0.0
        pred = out[:, :, :out.shape[2] - self.extra_channels]
        per = F.smooth_l1_loss(pred.float(), target.float(), beta=beta, reduction="none")
        w = blended[:, :, None, None, None].float()
        if weight is not None:
            return (per * w * weight).sum() / (weight.sum() * target.shape[2]).clamp_min(1.0)
        return (per * w).sum() / per.numel()
