"""PSNR / SSIM against hand-written numpy formulas, and rFID behaviour, on real images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from numpy.lib.stride_tricks import sliding_window_view

from meditok.metrics.image import InceptionFeatures, frechet_distance, make_fid, fid_value, psnr, ssim


pytestmark = pytest.mark.usefixtures("one_thread")


def _real_images(shared_data, n: int, size: int) -> np.ndarray:
    """``n`` ISIC dermoscopy images as float64 [n, H, W, 3] in [0, 1].

    About a fifth of this ISIC copy are degenerate vertical-stripe images (every row equal);
    they are skipped so the metrics see natural image structure.
    """
    out = []
    for path in sorted((shared_data / "isic_cc0_550").glob("*.jpg")):
        arr = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC))
        if arr.astype(float).std(axis=0).mean() < 1.0:
            continue
        out.append(arr)
        if len(out) == n:
            break
    return np.stack(out).astype(np.float64) / 255.0


def _np_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10.0 * np.log10(1.0 / np.mean((a - b) ** 2))


def _np_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 SSIM, Gaussian 11x11 window (sigma 1.5), data range 1, reflect border."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    r = np.arange(11) - 5.0
    g = np.exp(-(r ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()
    win = np.outer(g, g)

    def filt(x: np.ndarray) -> np.ndarray:
        padded = np.pad(x, 5, mode="reflect")
        return np.einsum("ijkl,kl->ij", sliding_window_view(padded, (11, 11)), win)

    maps = []
    for c in range(a.shape[-1]):
        x, y = a[..., c], b[..., c]
        mx, my = filt(x), filt(y)
        vx = filt(x * x) - mx ** 2
        vy = filt(y * y) - my ** 2
        cov = filt(x * y) - mx * my
        maps.append(((2 * mx * my + c1) * (2 * cov + c2))
                    / ((mx ** 2 + my ** 2 + c1) * (np.maximum(vx, 0) + np.maximum(vy, 0) + c2)))
    return float(np.mean(maps))


def test_psnr_ssim_match_numpy_formulas(shared_data):
    ref = _real_images(shared_data, 4, 64)
    rng = np.random.default_rng(0)
    # A realistic "reconstruction": blurred (box 3x3) plus mild noise, clipped to [0, 1].
    pad = np.pad(ref, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blur = sum(pad[:, i:i + 64, j:j + 64] for i in range(3) for j in range(3)) / 9.0
    rec = np.clip(blur + rng.normal(0, 0.02, ref.shape), 0, 1)
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float()  # noqa: E731
    got_p = psnr(to_t(rec), to_t(ref)).numpy()
    got_s = ssim(to_t(rec), to_t(ref)).numpy()
    want_p = np.array([_np_psnr(rec[i], ref[i]) for i in range(4)])
    want_s = np.array([_np_ssim(rec[i], ref[i]) for i in range(4)])
    np.testing.assert_allclose(got_p, want_p, atol=1e-3)
    np.testing.assert_allclose(got_s, want_s, atol=1e-4)
    assert 15 < want_p.min() and want_p.max() < 45 and 0.3 < want_s.min() < want_s.max() < 1
    # Identical images: SSIM exactly 1, PSNR unbounded.
    assert torch.allclose(ssim(to_t(ref), to_t(ref)), torch.ones(4), atol=1e-6)


def test_frechet_distance_matches_torchmetrics_formula():
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 48, generator=g, dtype=torch.float64)
    b = torch.randn(200, 48, generator=g, dtype=torch.float64) * 1.3 + 0.2
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    want = float(_compute_fid(mu1, s1, mu2, s2))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_inception_features_contract():
    net = InceptionFeatures()
    with pytest.raises(TypeError, match="uint8"):
        net(torch.zeros(1, 3, 32, 32))
    out = net(torch.full((2, 3, 40, 40), 128, dtype=torch.uint8))
    assert out.shape == (2, 2048) and torch.isfinite(out).all()


@pytest.mark.slow
def test_fid_is_zero_on_itself_and_grows_with_noise(shared_data):
    imgs = torch.from_numpy(np.round(_real_images(shared_data, 16, 64) * 255)).permute(0, 3, 1, 2)
    imgs = imgs.to(torch.uint8)
    fid = make_fid(reset_real_features=False)
    fid.update(imgs, real=True)
    fid.update(imgs, real=False)
    values = [fid_value(fid)]
    g = torch.Generator().manual_seed(0)
    for sigma in (6.0, 20.0, 60.0):
        fid.reset()  # keeps the real statistics
        noisy = (imgs.float() + sigma * torch.randn(imgs.shape, generator=g)).clamp(0, 255)
        fid.update(noisy.round().to(torch.uint8), real=False)
        values.append(fid_value(fid))
    assert values[0] < 1e-3, values
    assert values[1] > 1.0 and all(b > a for a, b in zip(values, values[1:])), values
