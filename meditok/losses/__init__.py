"""Training losses: LPIPS-VGG16, adversarial terms and DiffAug, contrastive alignment,
discriminators. Modules that need weights load them only when instantiated."""
from __future__ import annotations

from meditok.losses.adversarial import (adaptive_gan_weight, adaptive_gan_weight_via_output, bcr_loss, bcr_penalty, disc_warmup,
                                        generator_adv_loss, hinge_d_loss)
from meditok.losses.contrastive import (ContrastiveLoss, CosineAlignmentLoss, alignment_accuracy,
                                        gather_with_grad)
from meditok.losses.diffaug import DiffAug, blur_fade
from meditok.losses.discriminator import (FrozenFeatureDiscriminator, PatchGANDiscriminator,
                                          build_discriminator, trainable_parameters)
from meditok.losses.lpips import LPIPS

__all__ = [
    "LPIPS", "DiffAug", "blur_fade", "hinge_d_loss", "generator_adv_loss", "adaptive_gan_weight", "adaptive_gan_weight_via_output",
    "disc_warmup", "bcr_loss", "bcr_penalty", "ContrastiveLoss", "CosineAlignmentLoss", "alignment_accuracy",
    "gather_with_grad", "PatchGANDiscriminator", "FrozenFeatureDiscriminator",
    "build_discriminator", "trainable_parameters",
]
