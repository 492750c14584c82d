"""MedITok network: official layout, tokenizer invariants, numerics of the building blocks."""
from __future__ import annotations

import ast

import pytest
import torch
import torch.nn.functional as F

from meditok import InvalidInputError, MedITok, preset
from meditok.tokenizer.projection import AttnProjection


def _official_keys(reference) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (reference / "official-state-dict-keys.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape, *_ = line.split("\t")
        keys[name] = tuple(ast.literal_eval(shape))
    return keys


def test_large_state_dict_matches_official_layout(shared_reference):
    with torch.device("meta"):  # no memory: shapes only
        model = MedITok(preset("large"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = _official_keys(shared_reference)
    assert len(official) == 1186
    assert ours == official
    assert sum(v.numel() for v in model.state_dict().values()) == 696_683_204


def test_small_preset_budget():
    model = MedITok(preset("small"))
    assert model.num_parameters() <= 15_000_000
    assert model.config.model.num_codebooks == 8 and model.config.model.codebook_size == 4096


def test_detokenize_of_tokenize_equals_reconstruct(tiny_model):
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    tokens = tiny_model.tokenize(x)
    cfg = tiny_model.config.model
    assert tokens.shape == (3, cfg.num_codebooks, 4, 4) and tokens.dtype == torch.int64
    assert int(tokens.max()) < cfg.codebook_size
    rec = tiny_model.reconstruct(x)
    assert torch.equal(tiny_model.detokenize(tokens), rec)
    assert rec.shape == x.shape and rec.min() >= -1 and rec.max() <= 1


def test_tokens_stable_under_reencoding_of_code_vectors(tiny_model):
    tokens = tiny_model.tokenize(torch.rand(2, 3, 32, 32) * 2 - 1)
    latents = tiny_model.codes_to_latents(tokens)
    again = tiny_model.quantizer.latents_to_indices(latents).reshape(tokens.shape)
    assert torch.equal(again, tokens)


def test_code_vectors_are_unit_norm_per_chunk(tiny_model):
    vecs = tiny_model.quantizer.codebook_vectors()
    assert torch.allclose(vecs.norm(dim=-1), torch.ones(vecs.shape[:2]), atol=1e-5)
    latents = tiny_model.quantized_latents(torch.rand(2, 3, 32, 32) * 2 - 1)
    chunks = latents.reshape(*latents.shape[:2], tiny_model.config.model.num_codebooks, -1)
    assert torch.allclose(chunks.norm(dim=-1), torch.ones(chunks.shape[:3]), atol=1e-5)


@pytest.mark.parametrize("name", ["quant_proj", "post_quant_proj"])
def test_projections_are_causal(tiny_model, name):
    proj = getattr(tiny_model, name)
    dim = proj.norm1.normalized_shape[0]
    x = torch.randn(2, 16, dim)
    y = x.clone()
    y[:, -1] += torch.randn(dim) * 3  # perturb the last token only
    with torch.no_grad():
        a, b = proj(x), proj(y)
    assert torch.equal(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_down_projection_numerics_match_spec():
    """h = proj(LN3 x) + attn(LN1 x) with heads averaged; out = h + GeGlu(LN2 h), tanh GELU."""
    torch.manual_seed(1)
    p = AttnProjection(32, 16, num_heads=2)
    for t in p.parameters():
        torch.nn.init.normal_(t, std=0.2)
    x = torch.randn(2, 5, 32)
    a = p.attn
    n1 = F.layer_norm(x, (32,), p.norm1.weight, p.norm1.bias, 1e-5)
    q, k, v = (n1 @ a.qkv.weight.t()).split(32, dim=-1)
    q, v = q + a.q_bias, v + a.v_bias
    heads = [slice(0, 16), slice(16, 32)]
    mask = torch.ones(5, 5).tril().bool()
    outs = []
    for h in heads:
        s = (q[..., h] @ k[..., h].transpose(-1, -2)) / 16 ** 0.5
        outs.append(s.masked_fill(~mask, float("-inf")).softmax(-1) @ v[..., h])
    attn = a.proj(torch.stack(outs).mean(0))
    h = p.proj(F.layer_norm(x, (32,), p.norm3.weight, p.norm3.bias, 1e-5)) + attn
    n2 = F.layer_norm(h, (16,), p.norm2.weight, p.norm2.bias, 1e-5)
    m = F.layer_norm(n2, (16,), p.mlp.norm.weight, p.mlp.norm.bias, 1e-6)
    ref = h + p.mlp.w2(F.gelu(p.mlp.w0(m), approximate="tanh") * p.mlp.w1(m))
    with torch.no_grad():
        assert torch.allclose(p(x), ref, atol=1e-5)


def test_batch_size_one_and_non_square(tiny_model):
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert tiny_model.tokenize(x).shape[0] == 1
    assert torch.equal(tiny_model.tokenize(x[0]), tiny_model.tokenize(x))  # [3,H,W] accepted
    wide = torch.rand(1, 3, 32, 64) * 2 - 1  # grid 4x8: the decoder keeps the grid shape
    tok = tiny_model.tokenize(wide)
    assert tok.shape[-2:] == (4, 8)
    assert tiny_model.detokenize(tok).shape == wide.shape


def test_inference_does_not_touch_usage_buffers(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    tiny_model.tokenize(x), tiny_model.reconstruct(x), tiny_model.embed(x), tiny_model.features(x)
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_training_forward_updates_usage_and_returns_losses(tiny_model):
    tiny_model.train()
    out = tiny_model(torch.rand(4, 3, 32, 32) * 2 - 1)
    assert out.reconstruction.shape == (4, 3, 32, 32)
    assert out.vq_loss.requires_grad and out.vq_loss > 0
    assert out.usage.shape == (tiny_model.config.model.num_codebooks,)
    assert torch.allclose(out.embedding.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert tiny_model.quantizer.codebooks[0].vocab_usage.sum() == pytest.approx(1.0)
    out.reconstruction.mean().backward()
    assert tiny_model.encoder.patch_embed.backbone.stem.conv1.weight.grad is not None  # STE


def test_quantisation_runs_in_fp32_under_autocast(tiny_model):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    seen = {}
    hook = tiny_model.quant_proj.register_forward_hook(lambda m, i, o: seen.update(dtype=o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = tiny_model.tokenize(x)
    hook.remove()
    assert seen["dtype"] == torch.float32 and tokens.dtype == torch.int64


def test_features_and_embed_shapes(tiny_model):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    cfg = tiny_model.config.model
    assert tiny_model.features(x).shape == (2, cfg.width)
    e = tiny_model.embed(x)
    assert e.shape == (2, cfg.embed_dim)
    assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    (torch.zeros(1, 1, 32, 32), "channels"),
    (torch.zeros(1, 4, 32, 32), "channels"),
    (torch.zeros(1, 3, 1, 1), "multiple"),
    (torch.zeros(1, 3, 30, 32), "multiple"),
    (torch.full((1, 3, 32, 32), 255.0), r"\[-1, 1\]"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float"),
])
def test_bad_image_tensors_raise_clear_errors(tiny_model, bad, match):
    with pytest.raises(InvalidInputError, match=match):
        tiny_model.tokenize(bad)


def test_bad_tokens_raise_clear_errors(tiny_model):
    with pytest.raises(InvalidInputError, match="shape"):
        tiny_model.detokenize(torch.zeros(1, 3, 4, 4, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="values"):
        tiny_model.detokenize(torch.full((1, 4, 4, 4), 10_000, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="integer"):
        tiny_model.detokenize(torch.zeros(1, 4, 4, 4))


def test_training_and_inference_paths_give_the_same_tokens(tiny_model):
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    tokens = tiny_model.tokenize(x)
    tiny_model.train()
    with torch.no_grad():
        out = tiny_model(x)
    assert torch.equal(out.indices, tokens)
    # the straight-through output carries exactly the code vectors in the forward pass
    q, _, _, _ = tiny_model.quantizer(tiny_model._encode(x)[0])
    assert torch.allclose(q, tiny_model.codes_to_latents(tokens), atol=1e-6)


def test_lookup_chunks_rows_without_changing_results(tiny_model, monkeypatch):
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    full = tiny_model.tokenize(x)
    monkeypatch.setattr(type(tiny_model.quantizer), "LOOKUP_ROWS", 5)  # 64 rows in 13 chunks
    assert torch.equal(tiny_model.tokenize(x), full)
