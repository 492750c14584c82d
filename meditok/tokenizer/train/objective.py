"""The loss computations of one training step (spec §2.2–2.3).

Generator objective::

    L_rec   = l1·L1(x̂, x) + l2·MSE(x̂, x)
    L_nll   = L_rec + lpips·LPIPS(x, x̂)                 (LPIPS only when H ≥ lpips_min_size)
    L_total = L_nll + vq·L_vq + Σ_k λ_k·L_align,k + w_g·L_G
    w_g     = warm-up(t) · gan · clamp(‖∇_W L_nll‖ / (‖∇_W L_G‖ + 1e-6))   (W: last decoder layer)

``L_G = -mean(D(DiffAug(x̂)))`` with D frozen. The discriminator's loss is the hinge loss on
detached reconstructions plus balanced consistency regularisation.

Cost of the GAN branch (``adaptive="one_backward"``, the default): L_nll and L_G reach the
parameters only through x̂, so each is back-propagated to x̂ exactly once; the adaptive weight
chains those two image gradients to W analytically (one small autograd call on the last layer)
and the returned ``L_total`` feeds ``∂L_nll/∂x̂ + w_g·∂L_G/∂x̂`` straight into the decoder. The
original formulation (``adaptive="reference"``) back-propagates through LPIPS and D twice
(once for each ``∂/∂W`` and again in ``L_total.backward()``); both give the same weight and
the same parameter gradients (tests/test_speed_train.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from meditok.tokenizer.train.config import TrainConfig


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

    def __init__(self, cfg: TrainConfig, lpips: nn.Module | None, adaptive: str = "one_backward"):
        from meditok.losses import ContrastiveLoss, CosineAlignmentLoss

        if adaptive not in ("one_backward", "reference"):
            raise ValueError(f"adaptive must be one_backward or reference, got {adaptive!r}")
        self.adaptive = adaptive
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

    def __call__(self, out: Any, x: torch.Tensor, targets: dict[str, torch.Tensor],
                 adversary: Any = None, last_layer: torch.Tensor | None = None,
                 warm: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_total`` of one micro-batch and its logged terms.

        ``adversary(x̂)`` returns the (frozen, augmented) discriminator's logits; the GAN term
        is added with the adaptive weight only while ``warm > 0``. The returned tensor has the
        value of ``L_total``; back-propagating it gives the gradients of ``L_total``.
        """
        from meditok.losses import (adaptive_gan_weight, adaptive_gan_weight_via_output,
                                    generator_adv_loss)

        nll, loss_rec, loss_lpips = self.reconstruction(out.reconstruction, x)
        loss_align, raw_align, acc = self.alignment(out, targets)
        rest = self.cfg.loss.vq * out.vq_loss.float() + loss_align
        total = nll + rest
        loss_g = total.new_zeros(())
        w_gan = 0.0
        if warm > 0 and adversary is not None and last_layer is not None:
            rec = out.reconstruction
            loss_g = generator_adv_loss(adversary(rec).float())
            if self.adaptive == "reference":
                w = adaptive_gan_weight(nll, loss_g, last_layer, self.cfg.loss.gan, self.cfg.loss.gan_clamp)
                w_gan = float(w) * warm
                total = total + w_gan * loss_g
            else:
                w, d_nll, d_g = adaptive_gan_weight_via_output(
                    rec, nll, loss_g, last_layer, self.cfg.loss.gan, self.cfg.loss.gan_clamp)
                w_gan = float(w) * warm
                grad_rec = (d_nll + w_gan * d_g).to(rec.dtype)
                # ⟨x̂, g⟩ - ⟨x̂, g⟩.detach() is 0 in value and has gradient g at x̂: the total
                # keeps L_total's value and its backward never re-enters LPIPS or D.
                link = (rec * grad_rec).sum(dtype=torch.float32)
                total = (rest + nll.detach() + w_gan * loss_g.detach()) + (link - link.detach())
        logs = {"loss_rec": float(loss_rec.detach()), "loss_lpips": float(loss_lpips.detach()),
                "loss_vq": float(out.vq_loss.detach()), "loss_align": float(raw_align),
                "align_acc": acc, "loss_g": float(loss_g.detach()), "w_gan": w_gan}
        return total, logs


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
    from meditok.losses import bcr_penalty, hinge_d_loss

    with_bcr = bcr_weight > 0
    inputs, b = d_inputs(real, fake.detach(), diffaug, strong, fade, generator, with_bcr)
    logits = disc(inputs).float()
    lr, lf = logits[:b], logits[b:2 * b]
    loss = hinge_d_loss(lr, lf)
    metrics = {"d_real": float(lr.mean().detach()), "d_fake": float(lf.mean().detach())}
    if with_bcr:
        sr, sf = logits[2 * b:3 * b], logits[3 * b:]
        bcr = bcr_penalty(sr, lr, sf, lf, bcr_weight)
        loss = loss + bcr
        metrics["loss_bcr"] = float(bcr.detach())
    return loss, metrics
