"""The token-space MVG: visual sentences of MedITok tokens in tile order, supervision on the label
tiles only, generation from the three known tiles (tiny tokenizer and GPT)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from meditok.gpt import position_ids
from meditok.incontext.tokens import TokenMVG

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return TokenMVG.create("preset:tiny", "tiny")


def test_sentence_is_the_four_token_images_in_tile_order(model):
    c, g = model.cell, model.g
    x = torch.rand(2, 3, 2 * c, 2 * c) * 2 - 1
    seq = model.sentence(x)
    assert seq.shape == (2, 4 * g * g, model.gpt.config.num_codebooks)
    cells = [x[:, :, :c, :c], x[:, :, :c, c:], x[:, :, c:, :c], x[:, :, c:, c:]]
    for k, cell in enumerate(cells):
        tok = model.tokenizer.tokenize(cell)                       # [B, K, g, g]
        assert torch.equal(seq[:, k * g * g:(k + 1) * g * g], tok.flatten(2).transpose(1, 2))
    # the GPT's 2-D positions follow the same layout: tile k covers canvas quadrant k
    pos = position_ids(model.gpt.config)
    p = g * g
    assert (pos[p:2 * p, 0] < g).all() and (pos[p:2 * p, 1] >= g).all()          # P_y: upper right
    assert (pos[3 * p:, 0] >= g).all() and (pos[3 * p:, 1] >= g).all()           # Y: lower right


def test_only_the_label_tiles_are_supervised(model):
    c, p = model.cell, model.g * model.g
    x = torch.rand(3, 3, 2 * c, 2 * c) * 2 - 1
    task = torch.tensor([0, 1, 2])
    mask = model.label_positions
    assert mask.sum() == 2 * p and mask[p:2 * p].all() and mask[3 * p:].all()
    assert not mask[:p].any() and not mask[2 * p:3 * p].any()
    model.eval()
    torch.nn.init.normal_(model.gpt.output.weight, std=0.5)     # zero-initialised: every loss would be ln V
    loss = model.loss(x, task)
    seq = model.sentence(x)
    logits = model.gpt(seq, task, return_logits=True).logits                    # every position
    sel = mask[None].expand(3, -1)
    manual = F.cross_entropy(logits[sel].reshape(-1, logits.shape[-1]), seq[sel].reshape(-1))
    assert torch.allclose(loss, manual, atol=1e-5)
    everything = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq.reshape(-1))
    assert not torch.allclose(loss, everything, atol=1e-4)


def test_prediction_continues_from_the_three_known_tiles(model, tmp_path):
    model.eval()
    c = model.cell
    x = torch.rand(2, 3, 2 * c, 2 * c) * 2 - 1
    y = model.predict(x)
    assert y.shape == (2, 3, c, c) and y.min() >= -1 and y.max() <= 1
    x2 = x.clone()
    x2[:, :, c:, c:] = -x2[:, :, c:, c:]                        # the Y cell is never read
    assert torch.allclose(model.predict(x2), y)
    model.save_pretrained(tmp_path / "tok")
    back = TokenMVG.load(tmp_path / "tok")
    assert back.tokenizer_spec == "preset:tiny"
    assert torch.equal(back.gpt.state_dict()["output.weight"], model.gpt.state_dict()["output.weight"])
