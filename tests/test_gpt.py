"""The shared token GPT: initial loss, KV-cache exactness, guidance, prefixes, masks, overfitting."""
from __future__ import annotations

import math

import pytest
import torch

from meditok.errors import InvalidInputError
from meditok.gpt import GPT, gpt_preset, position_ids

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(gpt_preset("tiny", **kw))


def _data(model: GPT, n: int = 4):
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.codebook_size, (n, cfg.seq_len, cfg.num_codebooks), generator=g)
    return tokens, torch.arange(n) % cfg.num_classes


def test_initial_loss_is_log_vocab_and_presets_have_the_paper_size():
    model = _tiny()
    tokens, cond = _data(model)
    assert float(model(tokens, cond).loss) == pytest.approx(math.log(64), abs=1e-4)
    with torch.device("meta"):
        big = GPT(gpt_preset("B"))
    assert big.config.hidden == 2048
    assert 140e6 < big.num_parameters() < 145e6  # LlamaGen-B multi-codebook: 142.4 M


def test_kv_cache_gives_the_same_tokens_as_recomputing(one_thread):
    model = _tiny().eval()
    tokens, cond = _data(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):  # a non-trivial model, so that sampling depends on the context
        opt.zero_grad()
        model(tokens, cond).loss.backward()
        opt.step()
    model.eval()
    for kwargs in ({"temperature": 1.0}, {"temperature": 0.8, "top_k": 10, "top_p": 0.9},
                   {"cfg_scale": 3.0}):
        a = model.generate(cond, generator=torch.Generator().manual_seed(5), **kwargs)
        b = model.generate(cond, generator=torch.Generator().manual_seed(5), use_cache=False, **kwargs)
        assert torch.equal(a, b), kwargs
    # guidance scale 1 is conditional sampling, whatever the null branch would say
    c = model.generate(cond, generator=torch.Generator().manual_seed(5))
    model._guided = lambda logits, s, b: logits[:b] if logits.shape[0] > b else logits
    d = model.generate(cond, generator=torch.Generator().manual_seed(5), cfg_scale=1.0)
    assert torch.equal(c, d)


def test_tiny_gpt_overfits_and_reproduces_greedily_with_a_prefix():
    model = _tiny(class_dropout=0.0)
    tokens, cond = _data(model, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = model(tokens, cond).loss
        loss.backward()
        opt.step()
    assert float(loss) < 0.05
    model.eval()
    assert torch.equal(model.generate(cond, temperature=0.0), tokens)
    half = model.config.seq_len // 2
    out = model.generate(cond, prefix=tokens[:, :half], temperature=0.0)
    assert torch.equal(out, tokens)


def test_loss_mask_supervises_only_selected_positions():
    model = _tiny().eval()
    torch.nn.init.normal_(model.output.weight, std=0.5)  # non-uniform predictions
    tokens, cond = _data(model, 2)
    mask = torch.zeros(2, model.config.seq_len, dtype=torch.bool)
    mask[:, -4:] = True
    full = model(tokens, cond, return_logits=True).logits  # [B, L, K, V]
    want = torch.nn.functional.cross_entropy(full[mask].reshape(-1, 64), tokens[mask].reshape(-1))
    masked = model(tokens, cond, loss_mask=mask, return_logits=True)
    assert float(masked.loss) == pytest.approx(float(want), rel=1e-5)
    assert float(masked.loss) != pytest.approx(float(model(tokens, cond).loss), rel=1e-3)
    assert torch.count_nonzero(masked.logits[~mask]) == 0  # never computed


def test_tiled_positions_and_bad_inputs():
    cfg = gpt_preset("tiny", grid=(4, 4), tile=(2, 2))
    pos = position_ids(cfg)
    assert pos[:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]  # first tile, raster inside
    assert pos[4].tolist() == [0, 2]
    model = _tiny()
    tokens, cond = _data(model, 2)
    with pytest.raises(InvalidInputError, match="token values"):
        model(tokens + 64, cond)
    with pytest.raises(InvalidInputError, match="tokens must be"):
        model(tokens[:, :3], cond)
    with pytest.raises(ValueError, match="multiple of 4"):
        gpt_preset("tiny", dim=30)


def test_save_and_load_round_trip(tmp_path):
    model = _tiny()
    model.config.meta["tokenizer_id"] = "abc"
    model.save_pretrained(tmp_path / "g")
    back = GPT.from_pretrained(tmp_path / "g")
    tokens, cond = _data(model, 2)
    model.eval()
    assert torch.equal(model(tokens, cond).loss, back(tokens, cond).loss)
    assert back.config.meta["tokenizer_id"] == "abc"


def test_generation_draws_the_tempered_head_distribution():
    """The temperature is applied to the output layer's input (not to the V logits): the first
    sub-code of the first position still follows softmax(logits / T) of the teacher-forced model,
    with and without top-k, for every sampler."""
    model = _tiny().eval()
    torch.nn.init.normal_(model.output.weight, std=0.6)  # a peaked, non-uniform head
    tokens, _ = _data(model, 1)
    n, t = 6000, 0.6
    cond = torch.zeros(n, dtype=torch.long)
    logits = model(tokens, cond[:1], return_logits=True).logits[0, 0, 0]  # position 0, sub-code 0
    want = (logits / t).softmax(-1)
    for sampler in ("gumbel", "multinomial"):
        out = model.generate(cond, temperature=t, generator=torch.Generator().manual_seed(2), sampler=sampler)
        freq = torch.bincount(out[:, 0, 0], minlength=64).float() / n
        assert (freq - want).abs().max() < 0.025, sampler
    top = torch.topk(logits, 5)
    out = model.generate(cond, temperature=t, top_k=5, generator=torch.Generator().manual_seed(3), sampler="gumbel")
    freq = torch.bincount(out[:, 0, 0], minlength=64).float()[top.indices] / n
    assert float(freq.sum()) == 1.0 and (freq - (top.values / t).softmax(-1)).abs().max() < 0.025
