"""GAN objectives: hinge discriminator loss, generator loss, VQGAN adaptive weight, warm-up,
balanced consistency regularisation (paper / spec §2.2–2.3)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: ``mean(relu(1 - D(x))) + mean(relu(1 + D(x̂)))``.

    The two terms are summed (not averaged), as in the reference training objective.
    """
    return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator's adversarial loss ``-mean(D(x̂))`` (hinge-GAN generator objective)."""
    return -logits_fake.mean()


def _weight_from_grads(nll_grad: torch.Tensor, g_grad: torch.Tensor, base: float,
                       clamp: tuple[float, float], eps: float) -> torch.Tensor:
    """``base * clamp(||∂nll/∂W|| / (||∂g/∂W|| + eps))`` from the two W-gradients, averaged
    over the ranks first under DDP (one weight for every rank)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for grad in (nll_grad, g_grad):
            dist.all_reduce(grad)
            grad.div_(dist.get_world_size())
    ratio = nll_grad.norm() / (g_grad.norm() + eps)
    return (base * ratio.clamp(clamp[0], clamp[1])).detach()


def adaptive_gan_weight(
    nll_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    base: float = 0.4,
    clamp: tuple[float, float] = (0.015, 1e4),
    eps: float = 1e-6,
) -> torch.Tensor:
    """VQGAN adaptive weight of the GAN term, a detached scalar.

    ``base * clamp(||∂nll/∂W|| / (||∂g/∂W|| + eps), *clamp)`` with ``W`` the decoder's last
    layer weight. It balances the two gradients where they meet the image, so the GAN term can
    neither swamp nor vanish against the reconstruction term. Both graphs are kept
    (``retain_graph=True``) because the caller back-propagates the total loss afterwards.
    Under DDP both gradients are averaged over the ranks before taking their norms, so every
    rank uses one weight and a multi-process run matches a single process on the
    concatenated batch.
    """
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0].float()
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0].float()
    return _weight_from_grads(nll_grad, g_grad, base, clamp, eps)


def adaptive_gan_weight_via_output(
    reconstruction: torch.Tensor,
    nll_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    base: float = 0.4,
    clamp: tuple[float, float] = (0.015, 1e4),
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same weight as :func:`adaptive_gan_weight`, with each loss back-propagated once.

    ``nll_loss`` and ``g_loss`` depend on the parameters only through ``reconstruction``
    (LPIPS and the discriminator are frozen), and ``last_layer`` produces ``reconstruction``
    directly. So ``∂L/∂W = (∂x̂/∂W)ᵀ ∂L/∂x̂``: take ``∂L/∂x̂`` once per loss (the only pass
    through LPIPS / D, whose graphs are then freed), and chain it to ``W`` with one small
    autograd call that runs only the last layer's weight-gradient kernel.

    Returns ``(weight, ∂nll/∂x̂, ∂g/∂x̂)`` (all detached); the caller feeds
    ``∂nll/∂x̂ + w·∂g/∂x̂`` into the decoder instead of back-propagating through LPIPS and D
    a second time. DDP: the W-gradients are averaged over the ranks, as in the original.
    """
    # retain_graph=False frees the LPIPS / D graphs at once; the decoder's graph behind
    # ``reconstruction`` is not traversed by these two calls and stays intact.
    nll_out = torch.autograd.grad(nll_loss, reconstruction)[0]
    g_out = torch.autograd.grad(g_loss, reconstruction)[0]
    nll_grad = torch.autograd.grad(reconstruction, last_layer, nll_out, retain_graph=True)[0].float()
    g_grad = torch.autograd.grad(reconstruction, last_layer, g_out, retain_graph=True)[0].float()
    return _weight_from_grads(nll_grad, g_grad, base, clamp, eps), nll_out.detach(), g_out.detach()


def disc_warmup(step: int, warmup_steps: int) -> float:
    """Linear GAN warm-up factor ``min(1, step / warmup_steps)``.

    It is 0 at ``step == 0``, where the trainer skips the GAN branch entirely; a non-positive
    ``warmup_steps`` means no warm-up.
    """
    if warmup_steps <= 0:
        return 1.0
    return float(min(1.0, max(0.0, step / warmup_steps)))


def bcr_loss(
    discriminator: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    logits_real: torch.Tensor,
    logits_fake: torch.Tensor,
    augment: Callable[[torch.Tensor], torch.Tensor],
    weight: float = 4.0,
) -> torch.Tensor:
    """Balanced consistency regularisation for the discriminator.

    ``weight * (MSE(D(T(x)), D(x)) + MSE(D(T(x̂)), D(x̂)))`` with ``T`` a strong augmentation
    (the spec uses DiffAug without blur, cutout 0.2). It asks D to give the same answer for an
    image and its augmented copy, in both the real and the fake branch, so that D cannot key
    on augmentation artefacts. ``fake`` must already be detached by the caller.
    """
    return bcr_penalty(discriminator(augment(real)), logits_real, discriminator(augment(fake)),
                       logits_fake, weight)


def bcr_penalty(aug_logits_real: torch.Tensor, logits_real: torch.Tensor,
                aug_logits_fake: torch.Tensor, logits_fake: torch.Tensor,
                weight: float = 4.0) -> torch.Tensor:
    """The BCR term from logits already computed (one stacked D forward in the trainer)."""
    return weight * (F.mse_loss(aug_logits_real, logits_real) + F.mse_loss(aug_logits_fake, logits_fake))
