"""Synthesis family: real images → token shards → a conditional GPT → sampled images, and the
guards around it (tokenizer identity, unknown / unmodelled conditions, class balance)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meditok.cli import main as cli_main
from meditok.data.token_shards import load_token_shards, pretokenize, save_token_shards
from meditok.errors import CheckpointError, InvalidInputError
from meditok.gpt import GPT, gpt_preset, gumbel_noise, sample_logits
from meditok.synthesis.config import SynthConfig
from meditok.synthesis.data import ConditionedTokens, build_conditions
from meditok.synthesis.model import Synthesizer, gpt_config
from meditok.synthesis.sample import write_samples
from meditok.synthesis.train import train
from meditok.tokenizer.hub import load_tokenizer
from meditok.tokenizer.layout import grid_to_sequence

pytestmark = pytest.mark.usefixtures("one_thread")

FIELDS = ("identifier", "modality", "dataset", "split", "caption", "label", "source_sha256")


def _row(path, modality, dataset, split, label=-1):
    return {"identifier": str(path), "modality": modality, "dataset": dataset, "split": split,
            "caption": "", "label": label, "source_sha256": str(path)}


def _manifest(root: Path, shared: Path, per: int = 6) -> Path:
    """Real images of three modalities (PneumoniaMNIST X-rays with their class, BreastMNIST
    ultrasound, ISIC dermoscopy), one pathology image, one unreadable row."""
    rows = []
    (root / "img").mkdir(parents=True)
    for name, modality in (("pneumoniamnist", "X-ray"), ("breastmnist", "ultrasound")):
        data = np.load(shared / "medmnist" / f"{name}.npz")
        for i in range(per):
            path = root / "img" / f"{name}_{i}.png"
            Image.fromarray(data["train_images"][i]).save(path)
            rows.append(_row(path.relative_to(root), modality, name, "train" if i < per - 2 else "val",
                             int(data["train_labels"][i][0])))
    # some ISIC files of the shared set are vertical-stripe renderings (the corpus drops them)
    isic = [f for f in sorted((shared / "isic_cc0_550").glob("*.jpg"))
            if np.asarray(Image.open(f)).std(axis=0).mean() > 1][:per]
    for i, f in enumerate(isic):
        rows.append(_row(f, "dermoscopy", "isic", "train" if i < per - 2 else "val"))
    rows.append(_row(rows[0]["identifier"], "pathology", "skimage", "train"))
    rows.append(_row("img/missing.png", "CT", "none", "train"))
    path = root / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def _tokenizer(path: Path, seed: int) -> Path:
    from meditok import MedITok

    torch.manual_seed(seed)
    MedITok.from_preset("tiny").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    """A real mini-corpus pretokenised with a tiny tokenizer saved to disk."""
    root = tmp_path_factory.mktemp("synth")
    manifest = _manifest(root, shared_data)
    tok = _tokenizer(root / "tok", 0)
    pretokenize(manifest, load_tokenizer(tok), root / "shards", spec=str(tok), shard_size=8,
                batch_size=4, progress=False)
    return {"root": root, "manifest": manifest, "tok": tok, "shards": root / "shards"}


def _cfg(corpus, out: Path, steps: int = 12, **data) -> SynthConfig:
    cfg = SynthConfig.load(Path(__file__).resolve().parents[1] / "configs" / "synthesis" / "tiny.yaml")
    cfg.data.shards = str(corpus["shards"])
    cfg.loop.output_dir = str(out)
    cfg.loop.steps = steps
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def test_pretokenize_is_resumable_and_records_labels(corpus, tmp_path):
    shards = load_token_shards(corpus["shards"])
    assert shards.index["num_skipped"] == 1 and "missing.png" in (corpus["shards"] / "skipped.csv").read_text()
    assert shards.tokens.dtype == np.uint16 and shards.tokens.shape[1:] == (4, 4, 4)
    assert shards.counts()["xray"] == 6 and shards.counts()["pathology"] == 1
    # the tokens are the tokenizer's tokens of the images
    tok = load_tokenizer(corpus["tok"])
    from meditok.data.preprocess import load_image
    x = torch.stack([load_image(corpus["root"] / p, tok.config.preprocess, "xray")
                     for p in shards.labels["identifier"][:4]])  # the first batch of 4, as written
    assert torch.equal(tok.tokenize(x), torch.from_numpy(shards.tokens[:4].astype(np.int64)))
    # an interrupted run (last shard lost, index not complete) resumes to the same tokens
    copy = tmp_path / "copy"
    pretokenize(corpus["manifest"], tok, copy, spec=str(corpus["tok"]), shard_size=8, batch_size=4,
                progress=False)
    index = json.loads((copy / "index.json").read_text())
    last = index["shards"].pop()
    (copy / last["file"]).unlink()
    index["complete"] = False
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInputError, match="did not finish"):
        load_token_shards(copy)
    pretokenize(corpus["manifest"], tok, copy, spec=str(corpus["tok"]), batch_size=4, progress=False)
    assert np.array_equal(load_token_shards(copy).tokens, shards.tokens)


def test_conditions_balance_and_unmodelled_modalities(corpus):
    train_sh = load_token_shards(corpus["shards"]).split("train")
    conds = build_conditions(train_sh, min_images=3, class_datasets=["pneumoniamnist"])
    assert conds.names[:3] == ["dermoscopy", "ultrasound", "xray"]
    assert "pathology" in conds.excluded and "1 training image" in conds.excluded["pathology"]
    assert conds.id("X-ray") == 2
    with pytest.raises(InvalidInputError, match="not modelled.*Known conditions: dermoscopy"):
        conds.id("pathology")
    with pytest.raises(InvalidInputError, match="unknown condition 'endoscopy'; known"):
        conds.id("endoscopy")
    # class-balanced: every modality drawn equally often, each image of a modality evenly
    ds = ConditionedTokens(train_sh, conds, balance=0.0, epoch_size=3000, class_share=0.5, seed=1)
    mod_of = {conds.names.index(m): m for m in ("dermoscopy", "ultrasound", "xray")}
    shares = {m: 0 for m in mod_of.values()}
    for item, c in zip(ds.items, ds.conds):
        shares[str(train_sh.labels["modality"][item])] += 1
    assert all(abs(v / 3000 - 1 / 3) < 0.04 for v in shares.values()), shares
    fine = [c for c in ds.conds if conds.names[c].startswith("pneumoniamnist:")]
    assert 0.35 < len(fine) / shares["xray"] < 0.65  # class_share of the X-ray draws
    first = (ds.items.copy(), ds.conds.copy())
    ds.set_epoch(1)
    assert not np.array_equal(first[0], ds.items)
    ds.set_epoch(0)  # a resumed epoch draws exactly the same items
    assert np.array_equal(first[0], ds.items) and np.array_equal(first[1], ds.conds)


def test_factorised_head_starts_at_log_vocab_on_real_tokens(corpus):
    shards = load_token_shards(corpus["shards"])
    conds = build_conditions(shards.split("train"), min_images=3)
    cfg = SynthConfig()
    cfg.preset = "tiny"
    gpt = GPT(gpt_config(cfg, shards.tokenizer, conds)).eval()
    tokens = grid_to_sequence(torch.from_numpy(shards.tokens[:8].astype(np.int64)))
    with torch.no_grad():
        loss = float(gpt(tokens, torch.zeros(8, dtype=torch.long)).loss)
    assert loss == pytest.approx(math.log(shards.tokenizer["codebook_size"]), abs=1e-4)


def test_train_sample_detokenize_end_to_end(corpus, tmp_path):
    result = train(_cfg(corpus, tmp_path / "run", min_images=3))
    synth = Synthesizer.load(result["final"])
    assert synth.conditions.names == ["dermoscopy", "ultrasound", "xray"]
    assert synth.needs["spec"] == str(corpus["tok"])
    # KV-cached and recomputing sampling draw the same tokens for a seed
    a = synth.sample_tokens("ultrasound", 3, seed=4, temperature=0.9, top_k=20)
    b = synth.sample_tokens("ultrasound", 3, seed=4, temperature=0.9, top_k=20, use_cache=False)
    assert torch.equal(a, b) and a.shape == (3, 4, 4, 4)
    # CFG scale 1 is plain conditional sampling; another scale changes the draws
    assert torch.equal(a, synth.sample_tokens("ultrasound", 3, seed=4, temperature=0.9, top_k=20,
                                              cfg_scale=1.0))
    assert not torch.equal(a, synth.sample_tokens("ultrasound", 3, seed=4, temperature=0.9, top_k=20,
                                                  cfg_scale=4.0))
    images = synth.sample("xray", 5, seed=1)
    assert images.shape == (5, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    paths = write_samples(images, tmp_path / "out", "xray")
    assert len(paths) == 6 and Image.open(paths[-1]).size[0] > 32 * 2
    with pytest.raises(Exception, match="already exists"):
        write_samples(images, tmp_path / "out", "xray")
    # the CLI: files per sample + grid, and clear errors for unknown conditions
    out = tmp_path / "cli"
    assert cli_main(["synth", "sample", "--generator", result["final"], "--condition", "ultrasound",
                     "--n", "3", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["grid_ultrasound.png", "ultrasound_000.png",
                                                         "ultrasound_001.png", "ultrasound_002.png"]
    again = tmp_path / "cli2"
    cli_main(["synth", "sample", "--generator", result["final"], "--condition", "ultrasound",
              "--n", "3", "--seed", "1", "--out", str(again), "--quiet"])
    assert (out / "ultrasound_001.png").read_bytes() == (again / "ultrasound_001.png").read_bytes()


def test_cli_errors_name_the_known_conditions(corpus, tmp_path, capsys):
    result = train(_cfg(corpus, tmp_path / "run", steps=2, min_images=3))
    code = cli_main(["synth", "sample", "--generator", result["final"], "--condition", "pathology",
                     "--n", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "not modelled" in err and "dermoscopy, ultrasound, xray" in err
    assert "Traceback" not in err


def test_generator_refuses_another_tokenizer(corpus, tmp_path):
    result = train(_cfg(corpus, tmp_path / "run", steps=2, min_images=3))
    other = _tokenizer(tmp_path / "other_tok", 1)  # same architecture, other weights
    with pytest.raises(CheckpointError, match="trained on tokens of tokenizer .* not of"):
        Synthesizer.load(result["final"], tokenizer=other)
    foreign = tmp_path / "foreign_shards"
    pretokenize(corpus["manifest"], load_tokenizer(other), foreign, spec=str(other), progress=False)
    synth = Synthesizer.load(result["final"])
    with pytest.raises(InvalidInputError, match="tokens were made by tokenizer .*other_tok.* needs tokenizer"):
        synth.check_tokens(load_token_shards(foreign))
    with pytest.raises(Exception, match="another input: tokenizer"):  # no silent mixing in one folder
        pretokenize(corpus["manifest"], load_tokenizer(other), corpus["shards"], progress=False)


def test_tiny_gpt_overfits_real_token_maps_and_reproduces_them_greedily(corpus, tmp_path):
    shards = load_token_shards(corpus["shards"])
    keep = np.zeros(len(shards), dtype=bool)
    for m in ("dermoscopy", "ultrasound", "xray"):  # one training image per modality
        keep[np.flatnonzero((shards.labels["modality"] == m) & (shards.labels["split"] == "train"))[0]] = True
    sub = shards.select(keep)
    one = save_token_shards(sub, tmp_path / "one")
    cfg = _cfg(corpus, tmp_path / "run", steps=300, min_images=1)
    cfg.data.shards = str(one)
    cfg.model = {"class_dropout": 0.0, "dropout": 0.0}
    cfg.loop.lr, cfg.loop.batch_size, cfg.loop.warmup_steps, cfg.loop.ckpt_every = 1e-2, 3, 10, 0
    cfg.data.val_items = 0
    synth = Synthesizer.load(train(cfg)["final"])
    for m in ("dermoscopy", "ultrasound", "xray"):
        want = torch.from_numpy(sub.tokens[sub.labels["modality"] == m].astype(np.int64))
        assert torch.equal(synth.sample_tokens(m, 1, temperature=0.0), want), m


def test_gumbel_top_k_equals_masking_first_with_the_same_noise():
    """The fast top-k path (winner kept where it is inside the top-k set, re-drawn over the
    set elsewhere) is the plain "mask, then Gumbel-argmax" draw with the same noise, row for
    row, and its frequencies are the renormalised top-k softmax."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4000, 300, generator=g) * torch.linspace(0.1, 4, 4000)[:, None]  # flat .. peaked
    top_k = 20
    noise = gumbel_noise(logits.shape, torch.Generator().manual_seed(7), logits.device, logits.dtype)
    kth = torch.topk(logits, top_k, -1).values[:, -1:]
    want = (logits + noise).masked_fill(logits < kth, float("-inf")).argmax(-1)
    got = sample_logits(logits, 1.0, top_k, 1.0, torch.Generator().manual_seed(7), sampler="gumbel")
    assert torch.equal(got, want)
    winner = (logits + noise).argmax(-1, keepdim=True)
    outside = (logits > logits.gather(-1, winner)).sum(-1) >= top_k
    assert 0 < int(outside.sum()) < len(outside)  # both branches ran
    row = torch.randn(1, 40, generator=g).repeat(40000, 1)
    draws = sample_logits(row, 0.8, 6, 1.0, g, sampler="gumbel")
    top = torch.topk(row[0], 6)
    want_p = (top.values / 0.8).softmax(-1)
    freq = torch.bincount(draws, minlength=40).float()[top.indices] / len(draws)
    assert float(freq.sum()) == 1.0 and (freq - want_p).abs().max() < 0.01


@pytest.mark.parametrize("sampler", ["gumbel", "inverse_cdf"])
def test_fast_samplers_draw_the_distribution_and_respect_top_k(sampler):
    """The family's sampler (Gumbel-max) and inverse-CDF: the softmax distribution (as
    multinomial), never a code that top-k / top-p removed."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 50, generator=g).repeat(20000, 1) * 2
    probs = logits[0].softmax(-1)
    draws = sample_logits(logits, 1.0, 0, 1.0, g, sampler=sampler)
    freq = torch.bincount(draws, minlength=50).float() / len(draws)
    assert (freq - probs).abs().max() < 0.015
    kept = torch.topk(logits[0], 5).indices
    draws = sample_logits(logits, 0.7, 5, 1.0, g, sampler=sampler)
    assert set(draws.unique().tolist()) <= set(kept.tolist())
    nucleus = sample_logits(logits, 1.0, 0, 0.5, g, sampler=sampler)
    order = probs.argsort(descending=True)
    allowed = order[:int((probs[order].cumsum(0) < 0.5).sum()) + 1]
    assert set(nucleus.unique().tolist()) <= set(allowed.tolist())
    with pytest.raises(InvalidInputError, match="sampler"):
        GPT(gpt_preset("tiny")).generate(torch.zeros(1, dtype=torch.long), sampler="argmax")
