"""Training-speed changes keep the objective: the adaptive GAN weight from one backward equals
the original two-``autograd.grad`` weight, the parameter gradients are the same, and LPIPS
with a bf16 trunk stays within 1 % of fp32 on the LPIPS reference images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


def _trainer(tmp_path, **loss):
    from meditok.tokenizer.train import TrainConfig, Trainer

    cfg = TrainConfig.from_dict({
        "model": {"preset": "tiny"}, "stage": 1, "device": "cpu", "precision": "fp32",
        "align": {"mode": "none"}, "steps": 10, "output_dir": str(tmp_path),
        "tensorboard": False, "progress": False,
        "loss": {"disc_warmup": 1, "lpips_min_size": 16, "lpips_precision": "fp32", **loss}})
    return Trainer(cfg)


def _grads(trainer, batch, adaptive):
    trainer.loss_fn.adaptive = adaptive
    trainer.optim.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    logs = trainer.generator_backward(batch)
    grads = {n: p.grad.detach().clone() for n, p in trainer.module.named_parameters() if p.grad is not None}
    return logs, grads


@pytest.mark.parametrize("with_lpips", [True, False])
def test_adaptive_weight_from_one_backward_equals_original(tmp_path, one_thread, with_lpips):
    trainer = _trainer(tmp_path, lpips=1.0 if with_lpips else 0.0)
    assert (trainer.lpips is not None) == with_lpips and trainer.disc is not None
    trainer.step = 3  # past the GAN warm-up start: the GAN term and its weight are active
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, "caption": [""] * 4}
    ref_logs, ref_grads = _grads(trainer, batch, "reference")
    new_logs, new_grads = _grads(trainer, batch, "one_backward")
    assert ref_logs["w_gan"] > 0
    assert new_logs["w_gan"] == pytest.approx(ref_logs["w_gan"], rel=1e-5)
    assert new_logs["loss_total"] == pytest.approx(ref_logs["loss_total"], rel=1e-6)
    assert new_grads.keys() == ref_grads.keys() and len(ref_grads) > 10
    for name, ref in ref_grads.items():
        scale = ref.abs().max().item() + 1e-12
        assert (new_grads[name] - ref).abs().max().item() <= 1e-4 * scale + 1e-9, name
    # and the gradient really contains the GAN term: without it the decoder gradient differs
    trainer.step = 0  # warm-up factor 0: no GAN term
    _, plain = _grads(trainer, batch, "one_backward")
    last = "model.decoder.up_conv4.conv2.weight"
    assert not torch.allclose(plain[last], ref_grads[last], rtol=1e-3)


def test_adaptive_weight_function_matches_original_directly():
    from meditok.losses import adaptive_gan_weight, adaptive_gan_weight_via_output

    torch.manual_seed(0)
    conv0 = torch.nn.Conv2d(3, 8, 3, padding=1)
    last = torch.nn.Conv2d(8, 3, 3, padding=1)
    head = torch.nn.Conv2d(3, 1, 4, stride=2)  # a stand-in discriminator
    x = torch.rand(2, 3, 16, 16)

    def losses():
        rec = last(torch.relu(conv0(x)))
        nll = (rec - x).abs().mean() + ((rec - x) ** 2).mean()
        return rec, nll, -head(rec).mean()

    rec, nll, g = losses()
    want = adaptive_gan_weight(nll, g, last.weight)
    rec, nll, g = losses()
    got, d_nll, d_g = adaptive_gan_weight_via_output(rec, nll, g, last.weight)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert d_nll.shape == rec.shape and d_g.shape == rec.shape and not d_nll.requires_grad


def _ref_images(shared_data):
    d = shared_data / "lpips_reference"

    def load(name):
        a = np.asarray(Image.open(d / name).convert("RGB"), dtype=np.float32)
        return torch.from_numpy(a).permute(2, 0, 1)[None] / 127.5 - 1

    return load("ex_ref.png"), load("ex_p0.png"), load("ex_p1.png")


def test_lpips_bf16_trunk_within_one_percent_of_fp32(shared_data):
    from meditok.losses import LPIPS

    ref, p0, p1 = _ref_images(shared_data)
    lp = LPIPS()
    x, y = torch.cat([ref, ref]), torch.cat([p0, p1])
    fp32 = lp(x, y)
    lp.precision = "bf16"
    y_b = y.clone().requires_grad_(True)
    bf16 = lp(x, y_b)
    assert bf16.dtype == torch.float32
    assert ((bf16.detach() - fp32).abs() / fp32).max().item() < 0.01
    # its gradient (what training uses) points the same way as fp32's, though not exactly:
    # measured cosine 0.95 on these 64 px images (bf16 rounding of the VGG activations)
    bf16.sum().backward()
    lp.precision = "fp32"
    y_f = y.clone().requires_grad_(True)
    lp(x, y_f).sum().backward()
    cos = torch.nn.functional.cosine_similarity(y_b.grad.flatten(), y_f.grad.flatten(), dim=0)
    assert cos.item() > 0.9
    with pytest.raises(ValueError):
        LPIPS(precision="fp16")
