"""Visual contrastive decoding (meditok.vqa.contrast): the score rule by hand, the noised copies,
and the KV-cached decoding loop against the LM's own greedy ``generate`` on a tiny offline LM."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the vqa extra (transformers) is not installed")
pytest.importorskip("peft", reason="the vqa extra (peft) is not installed")

from meditok.vqa.config import ContrastConfig, VQAModelConfig
from meditok.vqa.contrast import alpha_bar, combine, contrastive_greedy, noised
from meditok.vqa.model import VQAModel


def _model(lm_dir, tok_dir, alpha: float) -> VQAModel:
    cfg = VQAModelConfig.from_dict({"lm": str(lm_dir), "tokenizer": str(tok_dir), "lora": {"r": 4, "alpha": 8},
                                    "contrast": {"alpha": alpha}})
    return VQAModel(cfg, verbose=False).eval()


def test_combine_hand_case():
    real = torch.tensor([[2.0, 1.0, -5.0]])
    noise = torch.tensor([[2.0, -1.0, -9.0]])
    out = combine(real, noise, alpha=1.0, beta=0.1)
    # p(token 2) / p(token 0) = e^-7 < 0.1: implausible under the real image, never chosen
    assert out[0, 2] == float("-inf")
    assert out[0, :2].tolist() == [2 * 2.0 - 2.0, 2 * 1.0 + 1.0]
    assert int(out.argmax()) == 1  # what the noised image does not explain wins over the prior
    assert int(combine(real, noise, alpha=0.0, beta=0.1).argmax()) == int(real.argmax())
    with pytest.raises(ValueError):
        ContrastConfig(alpha=-1).validate()


def test_noised_copies_follow_the_diffusion_schedule():
    betas = np.linspace(1e-4, 0.02, 1000)
    assert alpha_bar(500) == pytest.approx(float(np.prod(1 - betas[:500])), rel=1e-9)
    assert 0.07 < alpha_bar(500) < 0.09 and alpha_bar(1) == pytest.approx(1 - 1e-4)
    cfg = ContrastConfig(alpha=1.0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = noised(x, cfg, (-1.0, 1.0))
    assert torch.equal(y, noised(x, cfg, (-1.0, 1.0)))  # deterministic
    a = alpha_bar(500)
    assert float(y.min()) == -1.0 and float(y.max()) == 1.0  # clamped to the tokenizer's range
    inside = (y.abs() < 1).all(0)
    # one noise draw for every image: where neither copy is clamped, their difference is the
    # scaled difference of the images
    torch.testing.assert_close((y[0] - y[1])[inside], math.sqrt(a) * (x[0] - x[1])[inside], rtol=0, atol=1e-5)
    eps = (noised(torch.zeros(1, 3, 64, 64), ContrastConfig(noise_step=1000), (-1.0, 1.0)))
    clamped_std = math.sqrt(1 - 2 * math.exp(-0.5) / math.sqrt(2 * math.pi))  # N(0,1) clamped to [-1, 1]
    assert float(eps.std()) == pytest.approx(clamped_std, abs=0.02)
    # another input range: the same copy, expressed in that range
    torch.testing.assert_close(noised((x + 1) / 2, cfg, (0.0, 1.0)), (y + 1) / 2, rtol=0, atol=1e-6)


def test_cached_loop_matches_greedy_generate(tiny_lm_dir, one_thread):
    """With a vanishing alpha the VCD loop (one 2B batch, KV cache, left padding, its own
    position ids) must give exactly the LM's greedy tokens."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    h = lm.config.hidden_size
    real = torch.randn(3, 9, h) * 0.5
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :4] = 0  # left padding of different lengths
    mask[2, :7] = 0
    eos, pad = lm.config.eos_token_id, lm.config.pad_token_id
    want = lm.generate(inputs_embeds=real, attention_mask=mask, max_new_tokens=8, do_sample=False,
                       num_beams=1, eos_token_id=eos, pad_token_id=pad)
    got = contrastive_greedy(lm, real, torch.randn_like(real), mask, ContrastConfig(alpha=1e-9), 8, eos, pad)
    assert want.shape[1] == 8 and torch.equal(got, want)
    strong = contrastive_greedy(lm, real, torch.randn_like(real), mask, ContrastConfig(alpha=5.0), 8, eos, pad)
    assert not torch.equal(strong, want)  # the contrast does change the answers


def test_contrast_uses_the_noised_images(tiny_lm_dir, tiny_tokenizer_dir, one_thread, monkeypatch):
    """generate(images=...) contrasts against the tower's features of the noised copies (what
    predict() pre-computes as contrast_features): the two paths hand the loop the same inputs."""
    import meditok.vqa.model as vqa_model

    seen = []
    real_loop = vqa_model.contrastive_greedy
    monkeypatch.setattr(vqa_model, "contrastive_greedy", lambda lm, real, contrast, *a: (
        seen.append((real, contrast)), real_loop(lm, real, contrast, *a))[1])
    model = _model(tiny_lm_dir, tiny_tokenizer_dir, 3.0)
    size = model.tower.preprocess.image_size
    images = torch.rand(2, 3, size, size) * 2 - 1
    qs = ["Is there a fracture?", "What organ is shown?"]
    feats = model.tower(images)
    pre = model.tower.preprocess
    from_images = model.generate(qs, images=images, max_new_tokens=6)
    explicit = model.generate(qs, features=feats, max_new_tokens=6,
                              contrast_features=model.tower(noised(images, model.config.contrast, pre.input_range)))
    assert from_images == explicit and len(seen) == 2
    (real_a, contrast_a), (real_b, contrast_b) = seen
    torch.testing.assert_close(real_a, real_b)
    torch.testing.assert_close(contrast_a, contrast_b)
    slots = ~torch.isclose(real_a, contrast_a).all(-1)  # only the image slots differ
    assert int(slots.sum(-1).min()) == model.num_image_tokens == int(slots.sum(-1).max())
    with pytest.raises(Exception, match="noised"):
        _model(tiny_lm_dir, tiny_tokenizer_dir, 1.0).generate(qs, features=feats)
