"""The pixel MVG: canvas layout, colour sharing, MIM masking, AR supervision and causality, and a
tiny model that overfits one prompt/query pair."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from meditok.incontext import colour as colouring
from meditok.incontext.episodes import canvas, cells_of
from meditok.incontext.model import MVG, mvg_preset, random_token_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**kw) -> MVG:
    torch.manual_seed(0)
    return MVG(mvg_preset("tiny", **kw))


def test_canvas_puts_each_image_in_its_quadrant_and_round_trips():
    c = 8
    cells = np.stack([np.full((c, c, 3), v, np.float32) for v in (0.0, 0.25, 0.5, 1.0)])
    x = canvas(cells)
    assert x.shape == (3, 2 * c, 2 * c)
    # P_x upper left, P_y upper right, X lower left, Y lower right; values mapped to [-1, 1]
    assert torch.allclose(x[:, :c, :c], torch.tensor(-1.0))
    assert torch.allclose(x[:, :c, c:], torch.tensor(-0.5))
    assert torch.allclose(x[:, c:, :c], torch.tensor(0.0))
    assert torch.allclose(x[:, c:, c:], torch.tensor(1.0))
    assert np.allclose(cells_of(x), cells)
    m = _tiny()
    big = torch.stack([canvas(np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32))])
    assert torch.allclose(m.to_cells(big)[0, 2], big[0, :, 32:, :32])


def test_random_colours_are_shared_between_prompt_and_query_and_decode_back():
    rng = np.random.default_rng(3)
    a = np.zeros((16, 16), bool)
    a[2:6, 2:6] = True
    b = np.zeros((16, 16), bool)
    b[8:12, 1:15] = True
    cols = colouring.assign_colours(["liver", "spleen"], "random", rng)
    assert not np.allclose(cols["liver"], cols["spleen"])
    prompt = colouring.paint({"liver": a, "spleen": b}, cols)
    query = colouring.paint({"liver": b, "spleen": a}, cols)   # other shapes, same colours
    assert np.allclose(prompt[3, 3], query[9, 5]) and np.allclose(prompt[3, 3], cols["liver"])
    assert np.allclose(prompt[0, 0], 0.0)                       # background black
    noisy = np.clip(query + np.random.default_rng(0).normal(0, 0.05, query.shape), 0, 1)
    dec = colouring.decode(noisy, cols)
    assert (dec[b] == 1).all() and (dec[a] == 2).all() and (dec[~(a | b)] == 0).all()
    # the scheme draws new colours for every sample
    other = colouring.assign_colours(["liver", "spleen"], "random", rng)
    assert not all(np.allclose(cols[k], other[k]) for k in cols)
    with pytest.raises(ValueError):
        colouring.assign_colours(["a", "b"], "binary", rng)
    pre = colouring.predefined_colours(["drive/vessel", "sam_ct/liver"])
    assert np.allclose(colouring.assign_colours(["sam_ct/liver"], "predefined", rng, pre)["sam_ct/liver"],
                       pre["sam_ct/liver"])


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_mim_masking_ratio_is_honoured_and_only_masked_pixels_count(ratio):
    m = _tiny()
    n = m.cell_id.numel()
    mask = random_token_mask(64, m, ratio, 0.0, generator=torch.Generator().manual_seed(0))
    assert (mask.sum(1) == round(ratio * n)).all()
    # masked tokens are spread over all four cells (prompts included)
    assert all(mask[:, m.cell_id == k].any() for k in range(4))
    full = random_token_mask(200, m, ratio, 0.5, generator=torch.Generator().manual_seed(1))
    whole_y = full[:, m.cell_id == 3].all(1)
    assert 0.3 < whole_y.float().mean() < 0.7
    # the loss is the smooth-L1 averaged over the pixels of the masked tokens only
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    tm = random_token_mask(2, m, ratio, 0.0, generator=torch.Generator().manual_seed(2))
    pm = m.pixel_mask(tm)
    assert pm.shape == (2, 4, 1, 32, 32)
    assert abs(float(pm.mean()) - round(ratio * n) / n) < 1e-6
    loss, pred = m.forward_mim(x, tm)
    cells = m.to_cells(x)
    manual = (torch.nn.functional.smooth_l1_loss(pred, cells, beta=0.01, reduction="none") * pm).sum() / (pm.sum() * 3)
    assert torch.allclose(loss, manual, atol=1e-6)


def test_ar_objective_supervises_only_the_label_images_and_is_causal():
    m = _tiny().eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    loss, pred = m.forward_ar(x)
    # targets of the image cells do not enter the loss
    t = x.clone()
    t[:, :, :32, :32] = torch.rand(2, 3, 32, 32)      # P_x target changed
    t[:, :, 32:, :32] = torch.rand(2, 3, 32, 32)      # X target changed
    assert torch.allclose(m.forward_ar(x, target=t)[0], loss)
    t2 = x.clone()
    t2[:, :, 32:, 32:] = 0.0                          # Y target changed
    assert not torch.allclose(m.forward_ar(x, target=t2)[0], loss)
    # causality: Y's prediction never sees Y; P_y's never sees P_y but Y's sees P_y
    x2 = x.clone()
    x2[:, :, 32:, 32:] = torch.rand(2, 3, 32, 32)
    _, p2 = m.forward_ar(x2)
    assert torch.allclose(pred, p2, atol=1e-5)
    x3 = x.clone()
    x3[:, :, :32, 32:] = 0.3
    _, p3 = m.forward_ar(x3)
    assert torch.allclose(pred[:, 0], p3[:, 0], atol=1e-5)
    assert not torch.allclose(pred[:, 1], p3[:, 1], atol=1e-5)
    assert torch.allclose(m.predict(x), pred[:, 1].clamp(-1, 1), atol=1e-5)


@pytest.mark.parametrize("head", ["unet", "painter"])
def test_both_heads_build_and_predict(head):
    m = _tiny(head=head, dec_dim=8)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    assert m.predict(x, "ar").shape == (3, 3, 32, 32)
    assert m.predict(x, "mim").shape == (3, 3, 32, 32)


def test_tiny_model_overfits_one_prompt_query_pair():
    """A hand-made pair (a bright disc → its mask): AR training drives the prediction to the label."""
    c = 32
    yy, xx = np.mgrid[0:c, 0:c]
    disc = lambda cy, cx, r: ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r
    pm, qm = disc(12, 14, 7), disc(20, 17, 9)
    img = lambda m: np.repeat((0.2 + 0.6 * m)[..., None], 3, -1).astype(np.float32)
    col = {"x": np.array([0.9, 0.3, 0.1], np.float32)}
    cells = np.stack([img(pm), colouring.paint({"x": pm}, col), img(qm), colouring.paint({"x": qm}, col)])
    x = canvas(cells)[None]
    m = _tiny()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for step in range(150):
        loss, _ = m.forward_ar(x)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    pred = ((m.predict(x)[0] + 1) / 2).permute(1, 2, 0).numpy()
    dec = colouring.decode(pred, col) == 1
    iou = (dec & qm).sum() / (dec | qm).sum()
    assert float(loss.detach()) < 0.1 * first
    assert iou > 0.9


def test_save_and_load_round_trip(tmp_path):
    m = _tiny()
    m.config.meta["name"] = "t"
    m.save_pretrained(tmp_path / "m")
    back = MVG.from_pretrained(tmp_path / "m")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert torch.allclose(m.eval().predict(x), back.predict(x))
    assert back.config.preprocess.ct_window == (-100.0, 200.0)


def test_residual_tasks_add_the_visible_image_cell_to_restoration_labels_only():
    """``residual_tasks``: a denoising / inpainting label is the image cell plus the network's
    correction (AR and MIM, where a masked image pixel is not added); segmentation is untouched,
    and a model without the field predicts the same as before for every task."""
    plain, res = _tiny(), _tiny(residual_tasks=("denoising", "inpainting"))
    x = torch.rand(4, 3, 64, 64) * 1.6 - 0.8
    cells = plain.to_cells(x)
    ids = torch.tensor([0, 1, 2, 0])  # segmentation, denoising, inpainting, segmentation
    base = plain.predict(x)
    assert torch.allclose(plain.predict(x, task=ids), base)
    corr = res.next_image(cells, 3)  # the same weights without the residual rows
    assert torch.allclose(res.next_image(cells, 3, "segmentation"), corr)
    out = res.next_image(cells, 3, ids)
    assert torch.allclose(out[[0, 3]], corr[[0, 3]])
    assert torch.allclose(out[[1, 2]], corr[[1, 2]] + cells[[1, 2], 2], atol=1e-6)
    assert torch.allclose(res.predict(x, task="denoising"), (corr + cells[:, 2]).clamp(-1, 1), atol=1e-6)
    # MIM: the label cells add only the unmasked pixels of their image cells
    tm = random_token_mask(4, res, 0.5, generator=torch.Generator().manual_seed(0))
    _, p0 = res.forward_mim(x, tm)
    _, p1 = res.forward_mim(x, tm, task=ids)
    vis = cells * (1 - res.pixel_mask(tm))
    assert torch.allclose(p1[[0, 3]], p0[[0, 3]])
    assert torch.allclose(p1[[1, 2]][:, [1, 3]], p0[[1, 2]][:, [1, 3]] + vis[[1, 2]][:, [0, 2]], atol=1e-6)
    assert torch.allclose(p1[:, [0, 2]], p0[:, [0, 2]])
    with pytest.raises(ValueError, match="segmentation label"):
        _tiny(residual_tasks=("segmentation",))
    with pytest.raises(Exception, match="unknown task"):
        res.predict(x, task="colourise")


def test_residual_gate_starts_restoration_as_the_identity_and_learns():
    """``residual_gate``: at init a denoising label is exactly its image cell (segmentation rows
    unchanged), and the gate receives a gradient."""
    plain = _tiny(residual_tasks=("denoising",))
    gated = _tiny(residual_tasks=("denoising",), residual_gate=True)
    x = torch.rand(2, 3, 64, 64) * 1.6 - 0.8
    cells = gated.to_cells(x)
    ids = torch.tensor([1, 0])
    out = gated.next_image(cells, 3, ids)
    assert torch.allclose(out[0], cells[0, 2])
    assert torch.allclose(out[1], plain.next_image(cells, 3, ids)[1], atol=1e-6)
    loss, _ = gated.forward_ar(x, task=ids)
    loss.backward()
    assert gated.restore.gate.grad is not None and float(gated.restore.gate.grad.abs()) > 0


def test_residual_blend_mixes_the_plain_prediction_with_the_image_cell_per_pixel():
    """``residual_blend``: a restoration label is ``x + α(p − x)`` with ``α`` = 0.5 at init, ``p``
    the plain prediction (the same network without the rule); a pixel hidden from the network
    is ``p`` alone; segmentation rows and image cells are ``p``; the plain prediction is
    supervised too, and the blend head learns."""
    plain = _tiny(residual_tasks=("denoising",))
    blend = _tiny(residual_tasks=("denoising",), residual_blend=True)
    x = torch.rand(2, 3, 64, 64) * 1.6 - 0.8
    cells = blend.to_cells(x)
    ids = torch.tensor([1, 0])  # denoising, segmentation
    p = plain.next_image(cells, 3)  # same weights: the blend head is extra
    out = blend.next_image(cells, 3, ids)
    assert out.shape == p.shape
    assert torch.allclose(out[0], 0.5 * (p[0] + cells[0, 2]), atol=1e-6)
    assert torch.allclose(out[1], p[1], atol=1e-6)
    tm = random_token_mask(2, blend, 0.5, generator=torch.Generator().manual_seed(0))
    _, q0 = plain.forward_mim(x, tm)
    _, q1 = blend.forward_mim(x, tm, task=ids)
    m = blend.pixel_mask(tm)
    vis = cells * (1 - m)
    want = torch.where(m[0, [0, 2]].bool(), q0[0, [1, 3]], 0.5 * (q0[0, [1, 3]] + vis[0, [0, 2]]))
    assert torch.allclose(q1[0, [1, 3]], want, atol=1e-6)
    assert torch.allclose(q1[:, [0, 2]], q0[:, [0, 2]], atol=1e-6) and torch.allclose(q1[1], q0[1], atol=1e-6)
    # the loss is the plain model's plus the blended term: larger, and both heads get gradients
    l0, _ = plain.forward_ar(x, task=ids)
    l1, _ = blend.forward_ar(x, task=ids)
    assert float(l1.detach()) > float(l0)
    l1.backward()
    assert float(blend.restore.blend.weight.grad.abs().sum()) > 0
    assert float(blend.out.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="residual_blend"):
        _tiny(residual_tasks=("denoising",), residual_blend=True, residual_gate=True)
