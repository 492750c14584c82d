"""The loss computations of one training step (spec §2.2–2.3).

Generator objective::

    L_rec   = l1·L1(x̂, x) + l2·MSE(x̂, x)
    L_nll   = L_rec + lpips·LPIPS(x, x̂)                 (LPIPS only when H ≥ lpips_min_size)
    L_total = L_nll + vq·L_vq + Σ_k λ_k·L_align,k + w_g·L_G
    w_g     = warm-up(t) · gan · clamp(‖∇_W L_nll‖ / (‖∇_W L_G‖ + 1e-6))   (W: last decoder layer)

``L_G = -mean(D(DiffAug(x̂)))`` with D frozen. The discriminator's loss is the hinge loss on
detached reconstructions plus balanced consistency regularisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from meditok.train.config import TrainConfig
from meditok.train.distributed import all_reduce_mean


def distributed_adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                                base: float, clamp: tuple[float, float], eps: float = 1e-6) -> torch.Tensor:
    """VQGAN adaptive GAN weight computed from the gradients of the *global* batch.

    Same formula as :func:`meditok.losses.adaptive_gan_weight`, but both gradients are
    averaged over DDP ranks before taking their norms, so every rank uses one weight and a
    multi-process run matches a single process on the concatenated batch. Single-process it
    is exactly the library function.
    """
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0].float()
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0].float()
    all_reduce_mean(g_nll)
    all_reduce_mean(g_gan)
    ratio = g_nll.norm() / (g_gan.norm() + eps)
    return (base * ratio.clamp(clamp[0], clamp[1])).detach()


@dataclass
class AlignTerm:
    kind: str
    weight: float


def align_terms(cfg: TrainConfig) -> list[AlignTerm]:
    """Alignment terms of this run with their λ (eq. S4 when ``align.combined``)."""
    terms = []
    for kind in cfg.teacher_kinds():
        if cfg.align.combined:
            w = cfg.align_weight if kind == "vision" else cfg.align.text_weight
        else:
            w = cfg.align_weight
        terms.append(AlignTerm(kind, w))
    return terms


class GeneratorLoss:
    """Computes ``L_total`` and the logged terms for one micro-batch."""

    def __init__(self, cfg: TrainConfig, lpips: nn.Module | None):
        from meditok.losses import ContrastiveLoss, CosineAlignmentLoss

        self.cfg = cfg
        self.lpips = lpips
        self.terms = align_terms(cfg)
        self.align_loss = ContrastiveLoss() if cfg.align.mode == "contrastive" else CosineAlignmentLoss()

    def reconstruction(self, rec: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rec = rec.float()
        loss_rec = self.cfg.loss.l1 * F.l1_loss(rec, x) + self.cfg.loss.l2 * F.mse_loss(rec, x)
        if self.lpips is not None:
            loss_lpips = self.lpips(x, rec).mean()
        else:
            loss_lpips = rec.new_zeros(())
        return loss_rec + self.cfg.loss.lpips * loss_lpips, loss_rec, loss_lpips

    def alignment(self, out: Any, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Weighted alignment loss, the unweighted sum (logged) and the mean i2t accuracy."""
        from meditok.losses import alignment_accuracy

        emb = out.embedding.float()
        total = emb.new_zeros(())
        raw = emb.new_zeros(())
        accs = []
        for term in self.terms:
            tgt = targets[term.kind]
            if self.cfg.align.mode == "contrastive":
                loss = self.align_loss(emb, tgt, out.logit_scale.float())
            else:
                loss = self.align_loss(emb, tgt)
            total = total + term.weight * loss
            raw = raw + loss.detach()
            accs.append(alignment_accuracy(emb.detach(), tgt.detach()))
        acc = sum(accs) / len(accs) if accs else float("nan")
        return total, raw, acc


def d_inputs(real: torch.Tensor, fake: torch.Tensor, diffaug: Any, strong: Any, fade: float,
             generator: torch.Generator | None, with_bcr: bool) -> tuple[torch.Tensor, int]:
    """All discriminator inputs of one D step stacked into one batch.

    One forward per step keeps DDP's reducer simple and GroupNorm statistics per sample;
    the order is ``[aug(x), aug(x̂), strong(x), strong(x̂)]`` (the last two for BCR).
    """
    parts = [diffaug(real, fade, generator), diffaug(fake, fade, generator)] if diffaug else [real, fake]
    if with_bcr:
        parts += [strong(real, 0.0, generator), strong(fake, 0.0, generator)]
    return torch.cat(parts, dim=0), real.shape[0]


def discriminator_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor, diffaug: Any,
                       strong: Any, fade: float, generator: torch.Generator | None,
                       bcr_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge loss + balanced consistency regularisation on detached reconstructions."""
    from meditok.losses import hinge_d_loss

    with_bcr = bcr_weight > 0
    inputs, b = d_inputs(real, fake.detach(), diffaug, strong, fade, generator, with_bcr)
    logits = disc(inputs).float()
    lr, lf = logits[:b], logits[b:2 * b]
    loss = hinge_d_loss(lr, lf)
    metrics = {"d_real": float(lr.mean().detach()), "d_fake": float(lf.mean().detach())}
    if with_bcr:
        sr, sf = logits[2 * b:3 * b], logits[3 * b:]
        bcr = bcr_weight * (F.mse_loss(sr, lr) + F.mse_loss(sf, lf))
        loss = loss + bcr
        metrics["loss_bcr"] = float(bcr.detach())
    return loss, metrics
