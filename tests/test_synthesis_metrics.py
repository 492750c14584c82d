"""Generation metrics: MS-SSIM diversity (torchmetrics' definition, pairwise fast path), FID from
features, conditional accuracy, and ``meditok synth eval`` end to end on a tiny generator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from meditok.data.preprocess import PreprocessConfig, load_image, to_unit, uint8_to_input
from meditok.metrics.generation import (conditional_accuracy, diversity, fid_from_features, msssim_settings,
                                        pairwise_msssim, train_condition_classifier)

pytestmark = pytest.mark.usefixtures("one_thread")


def _real(shared: "Path", n: int = 4) -> dict[str, torch.Tensor]:
    pre = PreprocessConfig(image_size=64)
    with np.load(shared / "medmnist" / "pneumoniamnist.npz") as d:
        xray = uint8_to_input(d["train_images"][:n], pre)
    isic = [f for f in sorted((shared / "isic_cc0_550").glob("*.jpg"))
            if np.asarray(Image.open(f)).std(axis=0).mean() > 1][:n]
    derm = torch.stack([load_image(f, pre, "dermoscopy") for f in isic])
    return {"xray": to_unit(xray), "dermoscopy": to_unit(derm)}


def test_pairwise_msssim_is_torchmetrics_msssim_on_real_images(shared_data):
    tm = pytest.importorskip("torchmetrics.functional.image")
    real = _real(shared_data)
    x = torch.cat([real["xray"], real["dermoscopy"]])
    settings = msssim_settings(64)
    assert settings["scales"] == 3 and settings["scale_sizes"] == [64, 32, 16]
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    want = tm.multiscale_structural_similarity_index_measure(
        x[i], x[j], data_range=1.0, kernel_size=settings["kernel_size"], sigma=settings["sigma"],
        betas=settings["betas"], reduction="none", normalize="relu")
    got = pairwise_msssim(x, settings)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()  # float32 rounding
    assert msssim_settings(256)["scales"] == 5  # Wang et al.'s setting where it is valid


def test_diversity_orders_identical_one_modality_and_mixed_images(shared_data):
    real = _real(shared_data)
    same = real["xray"][:1].repeat(4, 1, 1, 1)
    assert diversity(same) == pytest.approx(0.0, abs=1e-6)
    one = diversity(real["xray"])
    mixed = diversity(torch.cat([real["xray"][:2], real["dermoscopy"][:2]]))
    assert 0.0 < one < mixed <= 1.0
    with pytest.raises(ValueError):
        diversity(real["xray"][:1])


def test_fid_from_features_and_conditional_accuracy():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    near, far = fid_from_features(a, b), fid_from_features(a, b + 2.0)
    assert near < 1.0 and far == pytest.approx(near + 16 * 4.0, rel=0.1)  # ||Δμ||² = 16·2²
    labels = np.repeat(np.arange(3), 60)
    feats = torch.randn(180, 16, generator=g) + 4.0 * torch.eye(16)[labels]
    clf = train_condition_classifier(feats, labels, 3, seed=0)
    test = torch.randn(30, 16, generator=g) + 4.0 * torch.eye(16)[2]
    assert conditional_accuracy(clf, test, 2) > 0.9
    assert conditional_accuracy(clf, test, 0) < 0.1


@pytest.mark.slow
def test_synth_eval_end_to_end(tmp_path, shared_data):
    """Tiny generator on real images: every table entry is produced and the floor is a FID
    between real sets (finite, and its real-image classifier beats chance)."""
    pytest.importorskip("torchmetrics")
    from meditok.metrics.image import inception_weights_path
    from meditok.errors import MissingDependencyError
    try:
        inception_weights_path()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    from test_synthesis import _cfg, _manifest, _tokenizer
    from meditok.data.token_shards import pretokenize
    from meditok.synthesis.bench import EvalConfig, run_evaluation
    from meditok.synthesis.train import train
    from meditok.tokenizer.hub import load_tokenizer

    manifest = _manifest(tmp_path, shared_data, per=10)
    tok = _tokenizer(tmp_path / "tok", 0)
    pretokenize(manifest, load_tokenizer(tok), tmp_path / "shards", spec=str(tok), progress=False)
    final = train(_cfg({"shards": tmp_path / "shards"}, tmp_path / "run", steps=4, min_images=3))["final"]
    cfg = EvalConfig(n=4, ref_cap=6, grid_n=4, features_cache=str(tmp_path / "feats.pt"))
    result = run_evaluation(manifest, [final], tmp_path / "ev", cfg, labels=["tiny"], progress=False)
    floor, gen = result["table"]["real-vs-real floor"], result["table"]["tiny"]
    assert set(gen) == {"dermoscopy", "ultrasound", "xray"}
    for m in gen:
        assert gen[m]["n"] == floor[m]["n"] == 4
        assert np.isfinite(gen[m]["gfid"]) and np.isfinite(floor[m]["gfid"])
        assert 0.0 <= gen[m]["diversity"] <= 1.0 and gen[m]["cond_acc"] is not None
        assert 0.0 <= gen[m]["cond_acc_ceiling"] <= 1.0 and gen[m]["cond_acc_raw"] is not None
    assert result["summary"]["real-vs-real floor"]["cond_acc_avg"] > 1 / 3
    # the round-trip classifier's features are the reconstructions' (cached under the tokenizer's
    # identity), not the originals'
    recon_cache = list(tmp_path.glob("feats.recon-*.pt"))
    assert len(recon_cache) == 1
    raw, rt = torch.load(tmp_path / "feats.pt"), torch.load(recon_cache[0])
    common = sorted(set(raw["paths"]) & set(rt["paths"]))
    assert common
    fr = dict(zip(raw["paths"], raw["features"]))
    fx = dict(zip(rt["paths"], rt["features"]))
    assert all(not torch.allclose(fr[q], fx[q]) for q in common[:5])
    assert "round trip" in (tmp_path / "ev" / "synthesis_eval.md").read_text()
    assert (tmp_path / "ev" / "synthesis_eval.md").is_file() and (tmp_path / "ev" / "grid_tiny_xray.png").is_file()
    assert (tmp_path / "feats.pt").is_file()
