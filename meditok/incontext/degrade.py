"""Degradations that turn a clean slice into an (input, target) pair: low-dose CT, MR noise, voids.

* **Low-dose CT in the projection domain** (:func:`ldct_noise`): HU → attenuation → line
  integrals (Radon transform) → Poisson counts at ``I0`` photons per ray → log → filtered
  back-projection. The *added* noise is ``FBP(noisy sinogram) − FBP(clean sinogram)``, so the
  pair differs only by quantum noise (streaks included) and keeps the slice's sharpness ("noise
  insertion"). It costs 20–200 ms per slice on CPU, so training draws from a precomputed bank
  (:class:`NoiseBank`) and rescales a field to a random dose (σ ∝ 1/√I0).
* **Image-domain approximation** (:func:`ldct_image_noise`): white noise shaped by an FBP-like
  noise power spectrum ``|f|·Hann(f)`` — no streaks, no attenuation dependence; used where
  scikit-image is absent.
* **MR magnitude (Rician) noise** (:func:`rician`): ``|s + n_r + i·n_i|``.
* **Inpainting voids** (:func:`void_boxes`): 1–3 boxes of 10–35 % of the side, centre on the
  body, set to 0 as BraTS-Local voids its region; the mask is returned for hole-only metrics.
"""
from __future__ import annotations

import numpy as np

from meditok.utils.lazy import require

#: Linear attenuation of water at ~70 keV (1/mm).
MU_WATER = 0.0192


def _square(a: np.ndarray, fill: float) -> tuple[np.ndarray, tuple[slice, slice]]:
    h, w = a.shape
    n = max(h, w)
    out = np.full((n, n), fill, np.float64)
    y, x = (n - h) // 2, (n - w) // 2
    out[y:y + h, x:x + w] = a
    return out, (slice(y, y + h), slice(x, x + w))


def ldct_noise(hu: np.ndarray, pixel_mm: float, i0: float, rng: np.random.Generator) -> np.ndarray:
    """Quantum noise (HU, same shape as ``hu``) that a scan with ``i0`` incident photons per ray
    adds to the slice ``hu`` of pixel size ``pixel_mm`` (2·size views over 180°, ramp FBP)."""
    tf = require("skimage.transform", "samples", "scikit-image")
    sq, crop = _square(np.asarray(hu, np.float64), -1000.0)
    theta = np.linspace(0.0, 180.0, 2 * sq.shape[0], endpoint=False)
    mu = np.clip(MU_WATER * (1.0 + sq / 1000.0), 0.0, None) * pixel_mm
    sino = tf.radon(mu, theta=theta, circle=False)
    counts = rng.poisson(i0 * np.exp(-sino))
    noisy = -np.log(np.maximum(counts, 1) / i0)
    fbp = lambda s: tf.iradon(s, theta=theta, filter_name="ramp", circle=False, output_size=sq.shape[0])
    noise = (fbp(noisy) - fbp(sino)) / pixel_mm / MU_WATER * 1000.0
    return noise[crop].astype(np.float32)


def ldct_image_noise(shape: tuple[int, int], sigma_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Image-domain stand-in: Gaussian noise with NPS ∝ |f|·Hann(f), std ``sigma_hu``."""
    h, w = shape
    f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
    amp = np.sqrt(f * 0.5 * (1 + np.cos(np.pi * np.clip(f / 0.5, 0, 1))))
    n = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((h, w))) * amp))
    return (sigma_hu * n / (n.std() + 1e-12)).astype(np.float32)


class NoiseBank:
    """Precomputed projection-domain noise fields, ``draws`` per slice at ``i0_ref`` photons.
    :meth:`sample` rescales one to a dose ``i0`` by ``√(i0_ref / i0)`` (variance ∝ 1/I0)."""

    def __init__(self, slices_hu: list[np.ndarray], pixel_mm: list[float], draws: int = 4,
                 i0_ref: float = 1e5, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.i0_ref = i0_ref
        self.fields = [[ldct_noise(hu, mm, i0_ref, rng) for _ in range(draws)]
                       for hu, mm in zip(slices_hu, pixel_mm)]

    def sample(self, index: int, i0: float, rng: np.random.Generator) -> np.ndarray:
        field = self.fields[index][int(rng.integers(len(self.fields[index])))]
        return field * np.float32(np.sqrt(self.i0_ref / i0))


def rician(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """MR magnitude noise on an image in ``[0, 1]`` (``sigma`` relative to 1), clipped to [0, 1]."""
    re = img + rng.normal(0.0, sigma, img.shape)
    im = rng.normal(0.0, sigma, img.shape)
    return np.clip(np.sqrt(re ** 2 + im ** 2), 0.0, 1.0).astype(np.float32)


def void_boxes(img: np.ndarray, rng: np.random.Generator, boxes: tuple[int, int] = (1, 3),
               side: tuple[float, float] = (0.1, 0.35), body: np.ndarray | None = None,
               fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Void random boxes (centres on ``body`` when given). Returns (voided image, bool mask)."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(boxes[0], boxes[1] + 1))):
        for _try in range(20):
            bh, bw = max(1, int(rng.uniform(*side) * h)), max(1, int(rng.uniform(*side) * w))
            y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            if body is None or body[y + bh // 2, x + bw // 2]:
                break
        mask[y:y + bh, x:x + bw] = True
    out = np.array(img, np.float32, copy=True)
    out[mask] = fill
    return out, mask
