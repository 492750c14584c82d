"""Evaluation suite: the paper's reconstruction, classification, 3D, efficiency and codebook
benchmarks, and an HTML report over their results.

Submodules are imported on use so that ``import meditok.eval`` stays cheap:

* :mod:`~meditok.eval.metrics` — ``psnr``, ``ssim``, ``InceptionFeatures``, ``make_fid``
* :mod:`~meditok.eval.reconstruction` — ``evaluate_reconstruction`` (Table 1)
* :mod:`~meditok.eval.probe` / :mod:`~meditok.eval.probe_bench` — ``train_linear_probe``,
  ``run_probe`` (Table 2)
* :mod:`~meditok.eval.volume` — ``evaluate_volumes``, ``volume_features`` (App. D.2)
* :mod:`~meditok.eval.efficiency` — ``run_efficiency`` (Table S4)
* :mod:`~meditok.eval.codebook` — ``analyse_codebook`` (App. D.4)
* :mod:`~meditok.eval.report` — ``build_report``
"""
