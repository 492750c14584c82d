"""Training config, CLI parsing, optimiser groups, schedules and validation metrics (fast)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch

from meditok.tokenizer import MedITok
from meditok.tokenizer.train import TrainConfig, apply_overrides
from meditok.engine.optim import WarmupCosine, build_adamw, no_weight_decay, warmup_cosine
from meditok.data.preprocess import to_unit
from meditok.metrics.codebook import CodeUsage
from meditok.metrics.image import psnr, ssim

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", [f"stage{s}_{p}" for s in (1, 2) for p in ("tiny", "small", "large")])
def test_shipped_configs_load(name):
    cfg = TrainConfig.load(CONFIGS / f"{name}.yaml")
    assert cfg.stage == int(name[5])
    assert cfg.align_weight == (0.1 if cfg.stage == 1 else 1.0)
    assert cfg.teacher_kinds() == (["vision"] if cfg.stage == 1 else ["text"])
    assert cfg.model.preset == name.split("_")[1]


def test_defaults_follow_the_reference_recipe():
    cfg = TrainConfig()
    assert (cfg.loss.l1, cfg.loss.l2, cfg.loss.lpips, cfg.loss.lpips_min_size, cfg.loss.vq) == (0.2, 1.0, 1.0, 48, 1.0)
    assert cfg.loss.gan == 0.4 and cfg.loss.gan_clamp == (0.015, 1e4)
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.eps, cfg.optim.weight_decay) == (5e-4, (0.9, 0.95), 1e-6, 0.02)
    assert (cfg.disc.lr, cfg.disc.betas, cfg.disc.weight_decay) == (2e-5, (0.5, 0.9), 0.2)
    assert cfg.optim.grad_clip == 10 and cfg.optim.min_lr_ratio == 0.1


def test_dotted_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    TrainConfig().save(path)
    cfg = TrainConfig.load(path, ["--optim.lr", "1e-4", "--data.manifest=corpus/manifest.csv",
                                  "--stage", "2", "--align.combined", "true",
                                  "--optim.betas", "0.8,0.9", "--model.overrides.image_size", "128",
                                  "--model.init_from", "none"])
    assert cfg.optim.lr == 1e-4 and cfg.data.manifest == "corpus/manifest.csv"
    assert cfg.stage == 2 and cfg.align.combined and cfg.teacher_kinds() == ["vision", "text"]
    assert cfg.optim.betas == (0.8, 0.9) and cfg.model.overrides == {"image_size": 128}
    assert cfg.model.init_from is None
    with pytest.raises(ValueError, match="optim.lrr"):
        apply_overrides(cfg, {"optim.lrr": 1})
    with pytest.raises(ValueError, match="align.mode"):
        apply_overrides(cfg, {"align.mode": "l2"})
    with pytest.raises(ValueError, match="steps"):
        apply_overrides(cfg, {"steps": "many"})
    with pytest.raises(ValueError, match="unfreeze_text"):
        apply_overrides(TrainConfig(), {"align.unfreeze_text": True})  # stage 1 has no text teacher
    assert apply_overrides(cfg, {"align.weight": 0.5}).align_weight == 0.5


def test_cli_parser_standalone(tmp_path, capsys):
    from meditok.cli.train import register

    parser = argparse.ArgumentParser(prog="meditok")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", str(CONFIGS / "stage1_small.yaml"), "--print-config",
                              "--optim.lr", "3e-4", "--data.manifest", "m.csv"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0003" in out and "manifest: m.csv" in out
    args = parser.parse_args(["train", str(CONFIGS / "stage1_small.yaml"), "--optim.nope", "1"])
    assert args.func(args) == 2
    assert "optim.nope" in capsys.readouterr().err


def test_weight_decay_groups_exclude_norms_biases_and_logit_scale():
    model = MedITok.from_preset("tiny")
    named = list(model.named_parameters())
    excluded = {n for n, p in named if no_weight_decay(n, p)}
    assert "logit_scale" in excluded and "fc_norm.weight" in excluded and "projection.bias" in excluded
    assert "projection.weight" not in excluded
    assert all(p.ndim >= 2 for n, p in named if n not in excluded)
    opt = build_adamw(named, 1e-3, (0.9, 0.95), 1e-6, 0.02)
    decays = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert set(decays) == {0.02, 0.0} and sum(decays.values()) == trainable


def test_warmup_cosine_schedule():
    total, warm = 100, 10
    f = [warmup_cosine(s, total, warm, 0.1) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[warm - 1] == pytest.approx(1.0)
    assert f[warm] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=2e-5)
    sched = WarmupCosine(opt, total=100, warmup=5, min_ratio=0.1, start=20)  # disc starts at 20
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[20] == pytest.approx(2e-5 / 5) and lrs[24] == pytest.approx(2e-5)
    assert lrs[-1] == pytest.approx(2e-6)
    state = sched.state_dict()
    sched2 = WarmupCosine(torch.optim.AdamW([p], lr=2e-5), total=100, warmup=5, min_ratio=0.1, start=20)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == sched.last_epoch


def test_psnr_ssim_and_code_statistics():
    torch.manual_seed(0)
    x = to_unit(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert torch.all(ssim(x, x) > 0.999) and torch.all(psnr(x, x) > 90)
    noisy = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    # noise std 0.05 in [0,1]: PSNR about 10*log10(1/0.05**2) = 26 dB
    assert psnr(noisy, x).mean() == pytest.approx(26.0, abs=1.0)
    assert 0.2 < ssim(noisy, x).mean() < 0.99
    stats = CodeUsage(2, 4)
    stats.update(torch.tensor([[[[0, 1], [2, 3]], [[0, 0], [0, 0]]]]))  # [1, K=2, 2, 2]
    assert stats.usage() == [100.0, 25.0]
    assert stats.perplexity() == pytest.approx([4.0, 1.0])
    assert math.isclose(stats.perplexity()[0], 4.0)
