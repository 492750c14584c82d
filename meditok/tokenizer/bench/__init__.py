"""Evaluation suite: the paper's reconstruction, classification, 3D, efficiency and codebook
benchmarks, and an HTML report over their results.

Submodules are imported on use so that ``import meditok.tokenizer.bench`` stays cheap:

* :mod:`~meditok.metrics.image` — ``psnr``, ``ssim``, ``InceptionFeatures``, ``make_fid``
* :mod:`~meditok.tokenizer.bench.reconstruction` — ``evaluate_reconstruction`` (Table 1)
* :mod:`~meditok.tokenizer.bench.probe` / :mod:`~meditok.tokenizer.bench.probe_bench` — ``train_linear_probe``,
  ``run_probe`` (Table 2)
* :mod:`~meditok.tokenizer.bench.volume` — ``evaluate_volumes``, ``volume_features`` (App. D.2)
* :mod:`~meditok.tokenizer.bench.efficiency` — ``run_efficiency`` (Table S4)
* :mod:`~meditok.tokenizer.bench.codebook` — ``analyse_codebook`` (App. D.4)
* :mod:`~meditok.report` — ``build_report``
"""
