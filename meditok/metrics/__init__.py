"""Metrics shared by every family, each written once.

* :mod:`~meditok.metrics.image` — PSNR, SSIM, MS-SSIM and FID (offline TF-Inception); images
  in ``[0, 1]`` (map model outputs with :func:`meditok.data.preprocess.to_unit`)
* :mod:`~meditok.metrics.codebook` — code usage and perplexity per sub-codebook
* :mod:`~meditok.metrics.probe` — linear probes (AUC / mAP / accuracy)

Task families add theirs here (generation, text, dense). Submodules are imported on use.
"""
