"""Generation metrics (paper §4.4, Table 3): gFID, MS-SSIM diversity, conditional accuracy.

Conventions (written next to every number, see :data:`GENERATION_CONVENTIONS`):

* **gFID** is the Fréchet distance between TF-Inception pool3 features of real and generated
  images, in exactly the rFID convention of :mod:`meditok.metrics.image` (uint8 as a PNG
  stores it → bilinear 299² → ``(x-128)/128`` → 2048-d pool3). Real images are the model-input
  crops (``to_input`` at the tokenizer's size) of corpus images; generated images are the
  tokenizer's decodings at the same size. FID is biased upwards for small N, so a number is
  only comparable with one at the same N: the real-vs-real floor is computed at the same N.
* **Diversity** of N images is ``Σ_{i<j} (1 − MS-SSIM(x_i, x_j)) / C(N, 2)`` over the
  C(N, 2) distinct unordered pairs (torchmetrics MS-SSIM on ``[0, 1]`` RGB, data_range 1).
  Wang et al.'s 5 scales need at least 161 px with an 11-px window; at small sizes
  :func:`msssim_settings` keeps the largest number of scales whose coarsest image is still
  ≥ 16 px, with Wang et al.'s 11-px Gaussian window (σ 1.5) there (64 px: 3 scales
  64/32/16 px, the first three of Wang et al.'s weights renormalised to sum 1; 256 px: the
  standard 5 scales).
* **Conditional accuracy**: a linear classifier (:mod:`meditok.metrics.probe`) trained on the
  Inception features of real images labelled with their condition, applied to generated
  images; the accuracy for condition c is the share of images generated for c that it
  classifies as c. Inception features are tokenizer-independent, so generators on different
  tokenizers are judged by the same classifier.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from meditok.metrics.image import frechet_distance, inception_features
from meditok.utils.lazy import require

#: Wang et al. (2003) MS-SSIM scale weights (5 scales, finest first).
WANG_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def msssim_settings(size: int) -> dict[str, Any]:
    """Valid MS-SSIM scales / window for ``size``-pixel images (see the module docstring)."""
    scales = 5
    while scales > 1 and size / 2 ** (scales - 1) < 16:
        scales -= 1
    coarsest = size // 2 ** (scales - 1)
    kernel = 11 if coarsest >= 16 else 7 if coarsest >= 8 else 3
    # torchmetrics also asks size // (scales-1)^2 > kernel - 1
    while scales > 1 and size // max(1, scales - 1) ** 2 <= kernel - 1:
        scales -= 1
    betas = WANG_BETAS if scales == 5 else tuple(round(b / sum(WANG_BETAS[:scales]), 6)
                                                 for b in WANG_BETAS[:scales])
    return {"scales": scales, "kernel_size": kernel, "sigma": 1.5, "betas": betas,
            "scale_sizes": [size // 2 ** i for i in range(scales)]}


def describe_msssim(settings: dict[str, Any]) -> str:
    return (f"MS-SSIM with {settings['scales']} scales ({'/'.join(map(str, settings['scale_sizes']))} px), "
            f"Gaussian {settings['kernel_size']}x{settings['kernel_size']} sigma {settings['sigma']}, "
            f"betas {list(settings['betas'])}, data_range 1, torchmetrics normalize='relu'")


GENERATION_CONVENTIONS = {
    "gfid": "FID(real model-input images, generated images) with the rFID convention: uint8 -> "
            "bilinear 299x299 -> (x-128)/128 -> TF-Inception pool3 (2048-d); real and generated sets of "
            "the same N per condition; biased upwards for small N",
    "floor": "real-vs-real FID: the same reference set against N other real images of the condition "
             "(the best a generator can reach at this N)",
    "diversity": "mean over the C(N,2) distinct unordered pairs of 1 - MS-SSIM; overall = mean over conditions",
    "conditional_accuracy": "share of images generated for condition c that a linear classifier "
                            "(meditok.metrics.probe, on the Inception features of real reference images "
                            "after a round trip through the generator's tokenizer) assigns to c; overall = "
                            "mean over conditions. Generated images are decoder outputs, so the classifier "
                            "is trained in that domain: one trained on the original images also judges the "
                            "tokenizer's artefacts (on the shipped tokenizer it puts 15 % of real, "
                            "round-tripped images in the wrong modality). Its accuracy on the real floor "
                            "set after the same round trip is the ceiling; the original-image classifier's "
                            "figure is kept as cond_acc_raw",
}


# ----------------------------------------------------------------------------- features / FID
@torch.no_grad()
def inception_pool3(images: torch.Tensor, device: str | torch.device = "cpu",
                    batch_size: int = 32) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` → float64 ``[N, 2048]`` pool3 features (rFID convention)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"inception_pool3 expects uint8 images, got {images.dtype}")
    net = inception_features(device)
    out = [net(chunk).double().cpu() for chunk in images.split(batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 2048, dtype=torch.float64)


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of ``[N, D]`` features (N ≥ 2)."""
    f = features.double()
    if f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {f.shape[0]}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between two feature sets (same formula as rFID)."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


# ----------------------------------------------------------------------------- diversity
def _blur_matrix(n: int, sigma: float) -> tuple[torch.Tensor, int]:
    """torchmetrics' SSIM window as an ``[n, n]`` matrix: reflect-pad by ``p``, Gaussian of size
    ``2·int(3.5σ+0.5)+1`` (what torchmetrics uses whatever ``kernel_size`` says), valid
    convolution; and ``p`` (the contrast term is averaged over rows/cols ``p … n-p-1``)."""
    k = int(3.5 * sigma + 0.5) * 2 + 1
    pad = (k - 1) // 2
    dist = torch.arange((1 - k) / 2, (1 + k) / 2, 1, dtype=torch.float64)
    g = torch.exp(-(dist / sigma) ** 2 / 2)
    g = g / g.sum()
    m = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for t in range(k):
            q = i + t - pad
            q = -q if q < 0 else 2 * (n - 1) - q if q >= n else q  # 'reflect' (edge not repeated)
            m[i, q] += g[t]
    return m.float(), pad


@torch.no_grad()
def pairwise_msssim(images: torch.Tensor, settings: dict[str, Any] | None = None,
                    batch_size: int = 256) -> torch.Tensor:
    """MS-SSIM of every unordered pair ``i < j`` of ``[N, 3, H, W]`` images in ``[0, 1]``.

    The definition of ``torchmetrics.functional.multiscale_structural_similarity_index_measure``
    (data_range 1, K1 0.01, K2 0.03, reflection padding, SSIM averaged over the whole map and
    the contrast term over the unpadded interior, ReLU normalisation, 2x2 average pooling
    between scales), computed from per-image blurred moments: a pair costs one separable blur
    of ``x_i·x_j`` per scale instead of five 2-D convolutions. Equal to torchmetrics to float
    precision (checked in the tests) and several times faster for N = 100.
    """
    import torch.nn.functional as F

    n = images.shape[0]
    settings = settings or msssim_settings(int(min(images.shape[-2:])))
    betas = torch.tensor(settings["betas"], dtype=torch.float32)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ii, jj = torch.triu_indices(n, n, offset=1)
    x = images.float()
    sims, css = [], []
    for _ in range(len(betas)):
        (mh, ph), (mw, pw) = _blur_matrix(x.shape[-2], settings["sigma"]), _blur_matrix(x.shape[-1], settings["sigma"])
        mu = mh @ x @ mw.T
        var = (mh @ (x * x) @ mw.T - mu * mu).clamp(min=0)
        sim_s, cs_s = [], []
        for b in range(0, ii.numel(), batch_size):
            i, j = ii[b:b + batch_size], jj[b:b + batch_size]
            mui, muj = mu[i], mu[j]
            cs = (2 * (mh @ (x[i] * x[j]) @ mw.T - mui * muj) + c2) / (var[i] + var[j] + c2)
            lum = (2 * mui * muj + c1) / (mui * mui + muj * muj + c1)
            sim_s.append((lum * cs).flatten(1).mean(1))
            cs_s.append(cs[..., ph:cs.shape[-2] - ph, pw:cs.shape[-1] - pw].flatten(1).mean(1))
        sims.append(torch.relu(torch.cat(sim_s)))
        css.append(torch.relu(torch.cat(cs_s)))
        x = F.avg_pool2d(x, 2)
    stack = torch.stack(css[:-1] + [sims[-1]])  # contrast terms, then SSIM at the coarsest scale
    return torch.prod(stack ** betas[:, None], 0)


def diversity(images: torch.Tensor, settings: dict[str, Any] | None = None) -> float:
    """``Σ_{i<j} (1 − MS-SSIM(x_i, x_j)) / C(N, 2)`` of ``[N, 3, H, W]`` images in ``[0, 1]``."""
    if images.shape[0] < 2:
        raise ValueError("diversity needs at least 2 images")
    sims = pairwise_msssim(images, settings)
    return float((1.0 - sims).sum() / math.comb(images.shape[0], 2))


# ----------------------------------------------------------------------------- conditional accuracy
def train_condition_classifier(features: torch.Tensor, labels: Sequence[int], num_classes: int,
                               val_fraction: float = 0.2, seed: int = 0, progress: bool = False):
    """A linear classifier of conditions on real features (stratified train / validation split
    for early stopping, :func:`meditok.metrics.probe.train_linear_probe`)."""
    from meditok.metrics.probe import ProbeConfig, train_linear_probe

    labels = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, int(round(len(idx) * val_fraction))) if len(idx) > 1 else 0
        val_idx += idx[:k].tolist()
        train_idx += idx[k:].tolist()
    tr, va = np.array(sorted(train_idx)), np.array(sorted(val_idx))
    # lr 1e-3: the probe's 1e-4 default needs thousands of epochs on 2048-d features
    cfg = ProbeConfig(lr=1e-3, batch_size=128, max_epochs=300, patience=15, seed=seed)
    return train_linear_probe(features[tr].float(), labels[tr], features[va].float(), labels[va],
                              cfg, num_classes=num_classes, progress=progress)


def conditional_accuracy(classifier, features: torch.Tensor, target: int) -> float:
    """Share of ``features`` (images generated for class ``target``) classified as ``target``."""
    if features.shape[0] == 0:
        return float("nan")
    pred = classifier.predict_proba(features.float()).argmax(1)
    return float((pred == int(target)).mean())
