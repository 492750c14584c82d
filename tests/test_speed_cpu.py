"""CPU fast path: thread count from the usable cores, the exact heap setting, the sub-pixel
decoder (identical tokens, reconstruction within fp32 rounding) and bf16 as an opt-in."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from meditok.tokenizer.kernels import cpu, fastpath


def test_available_cpus_respects_affinity_and_quota(monkeypatch):
    n = len(os.sched_getaffinity(0))
    assert 1 <= cpu.available_cpus() <= n
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: 1.5)  # a 1.5-CPU container
    assert cpu.available_cpus() == 1
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert cpu.available_cpus() == 1


def test_configure_threads_caps_at_available_and_keeps_explicit_choice(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        monkeypatch.setattr(cpu, "available_cpus", lambda: 1)
        torch.set_num_threads(2)
        assert cpu.configure_threads() == 1
        assert cpu.configure_threads(2) == 2  # an explicit count wins
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert cpu.configure_threads() == 2  # the user's environment is kept
    finally:
        torch.set_num_threads(before)


def test_heap_setting_changes_no_number(tmp_path):
    """Tokens and reconstruction with the tuned allocator are bit for bit the default's
    (fresh processes, since the setting is process-wide)."""
    code = ("import sys, torch\n"
            "from meditok.tokenizer.kernels import cpu\n"
            "ok = cpu.tune_allocator() if sys.argv[1] == '1' else False\n"
            "from meditok import MedITok\n"
            "torch.manual_seed(0)\n"
            "m = MedITok.from_pretrained('meditok-small')\n"
            "x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1\n"
            "t = m.tokenize(x)\n"
            "torch.save({'t': t, 'r': m.detokenize(t), 'ok': ok}, sys.argv[2])\n")
    outs = []
    for flag in ("0", "1"):
        path = tmp_path / f"{flag}.pt"
        res = subprocess.run([sys.executable, "-c", code, flag, str(path)], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        outs.append(torch.load(path))
    assert outs[1]["ok"] or sys.platform != "linux"
    assert torch.equal(outs[0]["t"], outs[1]["t"]) and torch.equal(outs[0]["r"], outs[1]["r"])


def test_subpixel_conv_is_the_upsample_conv():
    from meditok.tokenizer.decoder import Upsample2d

    torch.manual_seed(0)
    for cin, cout, h, w in [(5, 3, 7, 4), (16, 8, 6, 6)]:
        up = Upsample2d(cin, cout)
        x = torch.randn(2, cin, h, w)
        with torch.no_grad():
            want = torch.nn.functional.conv2d(
                torch.nn.functional.interpolate(x.double(), scale_factor=2.0, mode="nearest"),
                up.conv.weight.double(), up.conv.bias.double(), padding=1)
            got = fastpath.SubpixelUpsampleConv(up.conv)(x)
        assert got.shape == (2, cout, 2 * h, 2 * w)
        assert (got.double() - want).abs().max().item() < 1e-5


def test_fast_decoder_keeps_tokens_and_state_dict(shared_data, one_thread):
    from meditok import MedITok
    from meditok.data.preprocess import PreprocessConfig, load_images

    files = sorted((shared_data / "isic_cc0_550").glob("ISIC_*.jpg"))[:4]
    x = load_images(files, PreprocessConfig(image_size=64))
    model = MedITok.from_pretrained("meditok-small")
    keys = list(model.state_dict())
    tokens = model.tokenize(x)
    rec = model.detokenize(tokens)
    assert fastpath.enable_fast_decoder(model) == 4  # up_conv1, the strided stage's 2, InvStem's
    assert list(model.state_dict()) == keys
    assert torch.equal(model.tokenize(x), tokens)
    fast = model.detokenize(tokens)
    assert 0 < (fast - rec).abs().max().item() < 1e-4
    assert fastpath.disable_fast_decoder(model) == 4
    assert torch.equal(model.detokenize(tokens), rec)


def test_bf16_is_opt_in_and_close(shared_data, one_thread):
    from meditok import MedITok
    from meditok.data.preprocess import PreprocessConfig, load_images

    files = sorted((shared_data / "isic_cc0_550").glob("ISIC_*.jpg"))[:4]
    x = load_images(files, PreprocessConfig(image_size=64))
    model = MedITok.from_pretrained("meditok-small")
    fp32 = model.tokenize(x)
    assert torch.equal(model.tokenize(x, "fp32"), fp32)
    bf16 = model.tokenize(x, precision="bf16")
    agree = (bf16 == fp32).float().mean().item()
    assert 0.9 < agree < 1.0  # measured ~0.97-0.98: bf16 changes a few percent of tokens
    rec = model.reconstruct(x, precision="bf16")
    assert rec.dtype == torch.float32 and rec.shape == x.shape
    with pytest.raises(ValueError):
        model.tokenize(x, precision="fp16")


def test_onednn_linear_is_opt_in_and_keeps_tokens_on_real_images(shared_data, one_thread):
    from meditok import MedITok
    from meditok.data.preprocess import PreprocessConfig, load_images

    files = sorted((shared_data / "isic_cc0_550").glob("ISIC_*.jpg"))[:4]
    x = load_images(files, PreprocessConfig(image_size=64))
    model = MedITok.from_pretrained("meditok-small")
    keys = list(model.state_dict())
    tokens = model.tokenize(x)
    n = fastpath.enable_onednn_linear(model)
    if n == 0:
        pytest.skip("torch built without oneDNN")
    assert list(model.state_dict()) == keys
    assert torch.equal(model.tokenize(x), tokens)  # measured: 524,288 / 524,288 at 128 px
    lin = next(m for m in model.modules() if isinstance(m, fastpath.OneDNNLinear))
    with torch.enable_grad():  # training keeps F.linear (and its autograd)
        y = lin(torch.randn(3, lin.in_features, requires_grad=True))
    assert y.requires_grad


@pytest.mark.slow
def test_compiled_model_keeps_tokens(tiny_model):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens = tiny_model.tokenize(x)
    fastpath.compile_model(tiny_model)
    assert torch.equal(tiny_model.tokenize(x), tokens)
