"""Task unification on the real data: sources, episodes of every task, colours shared between
prompt and query, the hybrid schedule, degradations and the proportional prompt slice."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from meditok.incontext.degrade import NoiseBank, ldct_noise, rician, void_boxes
from meditok.incontext.episodes import EpisodeDataset, EpisodeSampler, TaskSpec, canvas
from meditok.incontext.infer import proportional_index, proportional_prompt
from meditok.incontext.sources import Item, load_sources, synthetic_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sources(shared_data):
    return load_sources(shared_data)


def test_sources_and_splits(sources):
    d, c = sources["drive"], sources["chase"]
    assert (len(d.train), len(d.test)) == (20, 20)
    assert {it.case for it in d.train}.isdisjoint({it.case for it in d.test})
    assert d.train[0].image.shape == (584, 565, 3) and d.train[0].labels["vessel"].dtype == bool
    assert 0.10 < d.test[0].labels["vessel"][d.test[0].region].mean() < 0.16   # ~12.7 % of the FOV
    assert len(c.train) == 0 and len(c.test) == 27 and [p.case for p in c.prompts] == ["chase_01L"]
    assert sources["sam_ct"].test[0].case == "sam_amos_0004_75"
    assert set(sources["sam_ct"].test[0].labels) == {"aorta", "inferior_vena_cava", "liver"}
    assert [it.index for it in sources["brain_mr"].test] == [8, 9, 10]
    assert [it.index for it in sources["prostate_mr"].test] == [10, 11, 12]
    ct = sources["ct_slices"]
    assert len(ct.test) == 20 and ct.test[0].hu is not None and ct.test[0].hu.min() < -900
    assert sources["mr_slices"].test[0].case == "brain2"


def _sampler(sources, names, scheme="random"):
    specs = [TaskSpec(name=n, source=s, task=t, ct_noise="image") for n, s, t in names]
    return EpisodeSampler(sources, specs, 64, scheme)


def test_segmentation_episodes_share_colours_between_prompt_and_query(sources):
    smp = _sampler(sources, [("drive", "drive", "segmentation"), ("sam_ct", "sam_ct", "segmentation"),
                             ("prostate_mr", "prostate_mr", "segmentation")])
    rng = np.random.default_rng(0)
    for name in ("drive", "sam_ct", "prostate_mr"):
        for _ in range(5):
            ep = smp.sample(rng, name)
            assert ep.cells.shape == (4, 64, 64, 3) and ep.mode == "ar"
            assert 0.0 <= ep.cells.min() and ep.cells.max() <= 1.0
            palette = np.stack([np.zeros(3)] + list(ep.colours.values()))
            for cell in (1, 3):  # every label pixel is background or one of the sample's colours
                px = ep.cells[cell].reshape(-1, 3)
                d = np.abs(px[:, None] - palette[None]).max(-1).min(1)
                assert d.max() < 1e-6
            assert ep.cells[1].any()            # the prompt label shows foreground
            # the query label is its masks painted with the prompt's colours (where masks overlap
            # the later class is on top, so check pixels covered by one class only)
            labs = {k: m for k, m in ep.meta["query_labels"].items() if k in ep.colours}
            for k, m in labs.items():
                alone = m & ~np.any([v for j, v in labs.items() if j != k] or [np.zeros_like(m)], 0)
                if alone.any():
                    assert np.allclose(ep.cells[3][alone], ep.colours[k])


def test_mixture_shares_and_hybrid_schedule(sources):
    smp = _sampler(sources, [("drive", "drive", "segmentation"), ("brain_mr", "brain_mr", "segmentation"),
                             ("ct_denoise", "ct_slices", "denoising"), ("mr_inpaint", "mr_slices", "inpainting")])
    shares = smp.shares()
    assert shares["drive"] + shares["brain_mr"] == pytest.approx(0.5)
    assert shares["ct_denoise"] == pytest.approx(0.25)
    rng = np.random.default_rng(1)
    eps = [smp.sample(rng) for _ in range(300)]
    seg = [e for e in eps if e.task == "segmentation"]
    other = [e for e in eps if e.task != "segmentation"]
    assert all(e.mode == "ar" for e in seg)                                # segmentation: 100 % AR
    assert 0.8 < np.mean([e.mode == "mim" for e in other]) < 0.97         # others: 90 % MIM
    assert 0.4 < len(seg) / len(eps) < 0.6


def test_image_task_episodes(sources):
    smp = _sampler(sources, [("ct_denoise", "ct_slices", "denoising"), ("mr_denoise", "mr_slices", "denoising"),
                             ("ct_inpaint", "ct_slices", "inpainting")])
    rng = np.random.default_rng(2)
    for name in ("ct_denoise", "mr_denoise"):
        ep = smp.sample(rng, name)
        px, py, x, y = ep.cells
        assert np.abs(px - py).mean() > 0.005 and np.abs(x - y).mean() > 0.005   # noisy vs clean
        assert not np.allclose(py, y)                                            # two different slices
    ep = smp.sample(rng, "ct_inpaint")
    hole = ep.meta["hole"]
    assert 0.0 < hole.mean() < 0.5
    assert np.allclose(ep.cells[2][hole], 0.0) and not np.allclose(ep.cells[3][hole], 0.0)


def test_dataset_is_deterministic_per_epoch_and_index(sources):
    smp = _sampler(sources, [("drive", "drive", "segmentation")])
    ds = EpisodeDataset(smp, 10, seed=3)
    a, b = ds[4]["canvas"], ds[4]["canvas"]
    assert torch.equal(a, b) and not torch.equal(a, ds[5]["canvas"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[4]["canvas"])


def test_low_dose_ct_in_the_projection_domain(sources):
    item = sources["ct_slices"].train[50]
    from meditok.incontext.episodes import resize_image
    hu = resize_image(item.hu[..., None], (64, 64))[..., 0]
    mm = item.pixel_mm * max(item.hu.shape) / 64
    rng = np.random.default_rng(0)
    body = hu > -500
    s_hi = ldct_noise(hu, mm, 2e5, rng)[body].std()
    s_lo = ldct_noise(hu, mm, 2e4, rng)[body].std()
    assert 5 < s_hi < s_lo < 200
    assert s_lo / s_hi == pytest.approx(np.sqrt(10), rel=0.25)        # sigma ∝ 1/sqrt(I0)
    bank = NoiseBank([hu], [mm], draws=2, i0_ref=1e5)
    assert bank.sample(0, 2.5e4, rng)[body].std() == pytest.approx(2 * bank.fields[0][0][body].std(), rel=0.3)


def test_rician_and_voids():
    rng = np.random.default_rng(0)
    img = np.zeros((64, 64, 3), np.float32)
    noisy = rician(img, 0.05, rng)
    assert noisy.mean() > 0.04          # the Rician floor: magnitude noise is biased upwards
    out, m = void_boxes(np.ones((64, 64, 3), np.float32), rng)
    assert m.any() and (out[m] == 0).all() and (out[~m] == 1).all()


def test_proportional_prompt_slice():
    assert proportional_index(0, 23, 25) == 0
    assert proportional_index(22, 23, 25) == 23
    assert proportional_index(10, 20, 10) == 5
    # lesions are labelled on few slices: the labelled prompt slice nearest to floor(n·N_TR/N_TE)
    prompts = [Item(np.zeros((4, 4, 3), np.float32), "brain1", {"l": np.ones((4, 4), bool)}, index=z, n_slices=25)
               for z in range(11, 18)]
    q = Item(np.zeros((4, 4, 3), np.float32), "brain2", index=9, n_slices=23)
    assert prompts[proportional_prompt(q, prompts, np.random.default_rng(0))].index == 11


def test_synthesis_code_path_on_synthetic_pairs():
    """No truly paired multi-contrast data exists here: the synthesis path runs on synthetic pairs."""
    from meditok.incontext.model import MVG, mvg_preset, random_token_mask

    src = synthetic_pairs(n=6, size=40)
    smp = EpisodeSampler({"synthetic_pairs": src}, [TaskSpec(name="syn", source="synthetic_pairs",
                                                             task="synthesis", augment="none")], 32)
    ep = smp.sample(np.random.default_rng(0))
    px, py, x, y = ep.cells
    assert np.allclose(py, 1 - px, atol=0.02) and np.allclose(y, 1 - x, atol=0.02)
    torch.manual_seed(0)
    m = MVG(mvg_preset("tiny"))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    rng = np.random.default_rng(1)
    losses = []
    for step in range(40):
        batch = torch.stack([canvas(smp.sample(rng).cells) for _ in range(4)])
        if step % 2:
            loss, _ = m.forward_ar(batch)
        else:
            loss, _ = m.forward_mim(batch, random_token_mask(4, m, 0.5, 0.5))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-6:]) < 0.6 * np.mean(losses[:6])
