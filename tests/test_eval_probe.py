"""Linear probe: separable data reaches AUC 1, scores follow sklearn, Table 2 plumbing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from meditok.tokenizer.bench.probe import ProbeConfig, fit_and_score, probe_scores, train_linear_probe


pytestmark = pytest.mark.usefixtures("one_thread")


def _separable(n: int, dim: int, seed: int):
    """Two Gaussian blobs split by a margin along a random direction (linearly separable)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)
    w /= w.norm()
    x = torch.randn(n, dim, generator=g)
    proj = x @ w
    keep = proj.abs() > 0.5
    x, proj = x[keep], proj[keep]
    return x * 3.0, (proj > 0).long().numpy()


def test_probe_on_linearly_separable_data_reaches_auc_one():
    x, y = _separable(2600, 32, seed=1)
    assert len(y) > 1500
    splits = {"train": (x[:1000], y[:1000]), "val": (x[1000:1250], y[1000:1250]),
              "test": (x[1250:1500], y[1250:1500])}
    cfg = ProbeConfig()  # the paper's optimisation (Adam, lr 1e-4, batch 128) to convergence
    res = fit_and_score(splits, cfg, progress=False)
    assert res.scores["test"]["auc"] == 1.0
    assert res.scores["test"]["map"] == 1.0
    assert res.best_epoch >= 1 and len(res.history) <= cfg.max_epochs
    # Deterministic under the seed.
    short = ProbeConfig(max_epochs=15)
    one, two = (fit_and_score(splits, short, progress=False) for _ in range(2))
    assert [h["train_loss"] for h in one.history] == [h["train_loss"] for h in two.history]


def test_probe_on_noise_is_near_chance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 32, generator=g)
    y = (torch.rand(600, generator=g) > 0.5).long().numpy()
    res = train_linear_probe(x[:400], y[:400], x[400:500], y[400:500],
                             ProbeConfig(max_epochs=40, patience=10), progress=False)
    auc = probe_scores(y[500:], res.predict_proba(x[500:]))["auc"]
    assert 0.3 < auc < 0.7


def test_probe_scores_are_macro_one_vs_rest():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    p = rng.dirichlet(np.ones(3), 120) + 0.5 * np.eye(3)[y]
    p /= p.sum(1, keepdims=True)
    s = probe_scores(y, p)
    onehot = np.eye(3)[y]
    want_auc = np.mean([roc_auc_score(onehot[:, c], p[:, c]) for c in range(3)])
    want_ap = np.mean([average_precision_score(onehot[:, c], p[:, c]) for c in range(3)])
    assert s["auc"] == pytest.approx(want_auc) and s["map"] == pytest.approx(want_ap)
    # Binary: AUC is that of the positive-class probability; reversed scores give 0.
    yb = np.array([0, 0, 1, 1])
    pb = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    assert probe_scores(yb, pb)["auc"] == 1.0
    assert probe_scores(yb, pb[:, ::-1])["auc"] == 0.0


def test_run_probe_breastmnist_writes_table2(shared_data, tmp_path):
    from meditok.tokenizer.hub import load_tokenizer as load_model
    from meditok.tokenizer.bench.probe_bench import run_probe

    model = load_model("preset:tiny")
    cfg = ProbeConfig(max_epochs=8, patience=3)
    res = run_probe(model, shared_data, datasets=["breastmnist"], kinds=["tokens", "features"],
                    config=cfg, out_dir=tmp_path, label="tiny", progress=False)
    saved = json.loads((tmp_path / "probe.json").read_text())
    names = [r["model"] for r in saved["table"]]
    assert names == ["Raw pixels (28×28) + linear", "tiny [tokens] + linear",
                     "tiny [features] + linear", "ResNet-18 (28), MedMNIST v2 (published)"]
    assert saved["table"][-1]["scores"]["breastmnist"]["auc"] == 0.901
    run = {r["kind"]: r for r in res["runs"]}
    cfg_m = model.config.model
    assert run["tokens"]["dim"] == cfg_m.grid_size() ** 2 * cfg_m.vocab_width
    assert run["features"]["dim"] == cfg_m.width and run["pixels"]["dim"] == 28 * 28
    assert run["tokens"]["n"] == {"train": 546, "val": 78, "test": 156}
    for r in res["runs"]:
        assert 0.0 <= r["scores"]["test"]["auc"] <= 1.0
    # Features are cached as tensors and reused.
    cached = tmp_path / "features" / "breastmnist-tokens-train.pt"
    assert torch.load(cached, weights_only=True).shape == (546, run["tokens"]["dim"])
    assert "BreastMNIST" in (tmp_path / "probe.md").read_text()
    assert (tmp_path / "probe.curves.png").stat().st_size > 1000
