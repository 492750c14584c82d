"""The VQA pipeline with a tiny randomly initialised causal LM built offline from a config.

Covers the ``<image>`` splice, which parameters train, the exactness of shared-prefix packing
and of batched generation, and one training step of each stage end to end through
``meditok vqa train`` / ``ask`` / ``ask --batch`` / ``eval`` on a small VQA-RAD-shaped folder.
Skips cleanly when the ``vqa`` extra (transformers, peft) is not installed.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the vqa extra (transformers) is not installed")
pytest.importorskip("peft", reason="the vqa extra (peft) is not installed")
pytest.importorskip("tokenizers", reason="the vqa extra (tokenizers) is not installed")

from PIL import Image

from meditok.cli import main as cli_main
from meditok.data.vqa_rad import load_vqa_rad
from meditok.errors import InvalidInputError
from meditok.tokenizer.model import MedITok
from meditok.utils.hub import WEIGHTS_NAME, read_state
from meditok.vqa.bench import evaluate_model, mismatched_images, predict
from meditok.vqa.config import PromptConfig, VQAModelConfig, VQATrainConfig
from meditok.vqa.data import collate, pack_image
from meditok.vqa.lm import load_lm
from meditok.vqa.model import VQAModel
from meditok.vqa.prompt import (
    IMAGE_TOKEN_ID,
    PromptFormat,
    expand_image,
    splice_embeddings,
    split_at_placeholder,
)

def _model(lm_dir: Path, tok_dir: Path, r: int = 4, use_image: bool = True, **kw) -> VQAModel:
    cfg = VQAModelConfig.from_dict({"lm": str(lm_dir), "tokenizer": str(tok_dir), "use_image": use_image,
                                    "lora": {"r": r, "alpha": 2 * r}, **kw})
    return VQAModel(cfg, verbose=False)


# ----------------------------------------------------------------------------- the splice
def test_placeholder_splice_positions(tiny_lm_dir, tiny_tokenizer_dir, one_thread):
    model = _model(tiny_lm_dir, tiny_tokenizer_dir)
    n = model.num_image_tokens
    assert n == 16  # tiny preset: 32 px / 8 → 4x4 grid
    enc = model.prompt.encode_prompt("Is there a fracture?")
    ids = expand_image(enc.ids, n)
    assert len(ids) == len(enc.before) + n + len(enc.after)
    slots = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_ID]
    assert slots == list(range(len(enc.before), len(enc.before) + n))
    img = torch.randn(1, n, model.hidden)
    emb = model.lm.get_input_embeddings()
    out = splice_embeddings(torch.tensor([ids]), emb, img)
    assert out.shape == (1, len(ids), model.hidden)
    assert torch.equal(out[0, slots], img[0])
    text_rows = [i for i in range(len(ids)) if i not in slots]
    with torch.no_grad():
        ref = emb(torch.tensor([ids]).clamp(min=0))[0, text_rows]
    assert torch.equal(out[0, text_rows], ref)
    # the placeholder sits where the chat template put the user content
    assert model.prompt.render("q?").count("<image>") == 1


def test_placeholder_count_errors(tiny_lm_dir, tiny_tokenizer_dir):
    model = _model(tiny_lm_dir, tiny_tokenizer_dir)
    with pytest.raises(InvalidInputError, match="exactly one <image>.*found 0"):
        split_at_placeholder("Question: is it broken? Answer:")
    with pytest.raises(InvalidInputError, match="exactly one <image>.*found 2"):
        model.prompt.encode_prompt("What is shown in <image>?")  # + the template's own one
    with pytest.raises(ValueError, match="exactly one <image>"):
        PromptConfig(template="Question: {question} Answer:").validate()
    with pytest.raises(ValueError, match="exactly one <image>"):
        PromptConfig(template="<image><image>{question}").validate()
    with pytest.raises(InvalidInputError, match="found 0"):
        expand_image([5, 6, 7], 4)
    with pytest.raises(InvalidInputError, match="found 2"):
        expand_image([5, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID], 4)
    ids = torch.tensor([expand_image(model.prompt.encode_prompt("q?").ids, 15)])
    with pytest.raises(InvalidInputError, match="16 image slots"):
        splice_embeddings(ids, model.lm.get_input_embeddings(), torch.randn(1, 16, model.hidden))


def test_explicit_template_for_base_lm(tiny_lm_dir, tiny_tokenizer_dir):
    _, tok = load_lm(str(tiny_lm_dir), verbose=False)
    fmt = PromptFormat(tok, PromptConfig(template="<image>Question: {question}\nAnswer:"))
    enc = fmt.encode_prompt("Is there a fracture?")
    assert tok.decode(enc.after) == "Question: Is there a fracture?\nAnswer:"
    ans = fmt.encode_answer("yes")
    assert ans[-1] == tok.eos_token_id and tok.decode(ans[:-1]) == " yes"


# ----------------------------------------------------------------------------- what trains
def test_projector_and_lora_get_gradients_tokenizer_and_lm_do_not(tiny_lm_dir, tiny_tokenizer_dir, one_thread):
    model = _model(tiny_lm_dir, tiny_tokenizer_dir)
    model.train()
    seqs = pack_image(model.prompt, "img", [("Is there a fracture?", "yes"), ("Which organ?", "liver")],
                      model.num_image_tokens)
    batch = collate(seqs, 3)
    batch["images"] = torch.rand(1, 3, 32, 32) * 2 - 1  # through the frozen tower
    loss, logs = model(batch)
    loss.backward()
    assert torch.isfinite(loss) and logs["answer_tokens"] > 0
    for name, p in model.projector.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    lora_b = [p for n, p in model.lm.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    assert all(p.grad is None and not p.requires_grad for p in model.tower.parameters())
    frozen = [(n, p) for n, p in model.lm.named_parameters() if "lora_" not in n]
    assert frozen and all(p.grad is None and not p.requires_grad for _, p in frozen)
    # the tower stays in eval mode under model.train()
    assert not model.tower.training and not model.tower.tokenizer.training
    # the adapter state is the projector and LoRA only
    keys = set(model.state_dict())
    assert keys and all(k.startswith("projector.") or "lora_" in k for k in keys)


def test_tower_feature_kinds_on_real_images(shared_data, one_thread):
    """``quantized`` / ``codes`` / ``encoder`` are what their names say, on real VQA-RAD images with
    the shipped tokenizer: the encoder tokens quantise to the tokenizer's own codes, their mean is
    the probing feature, and the quantised tokens depend on the image only through its codes."""
    from meditok.data.preprocess import load_image
    from meditok.vqa.model import VisionTower

    tok = MedITok.from_pretrained("meditok-small")
    paths = sorted((shared_data / "vqa_rad" / "images").iterdir())[:3]
    x = torch.stack([load_image(p, tok.config.preprocess) for p in paths])
    towers = {k: VisionTower(tok, k) for k in ("quantized", "codes", "encoder")}
    f = {k: t(x) for k, t in towers.items()}
    m = tok.config.model
    n = m.grid_size() ** 2
    assert f["quantized"].shape == f["encoder"].shape == (3, n, m.width)
    assert f["codes"].shape == (3, n, m.vocab_width) and towers["codes"].dim == m.vocab_width
    codes = tok.tokenize(x)
    idx = tok.quantizer.latents_to_indices(tok.quant_proj(f["encoder"]))
    assert torch.equal(idx.reshape(codes.shape), codes)
    torch.testing.assert_close(f["encoder"].mean(dim=1), tok.features(x))
    torch.testing.assert_close(f["codes"], tok.codes_to_latents(codes))
    torch.testing.assert_close(f["quantized"], tok.post_quant_proj(tok.codes_to_latents(codes)))
    # the continuous features are not the quantised ones (what model.features: encoder adds)
    assert (f["encoder"] - f["quantized"]).abs().mean() > 0.1 * f["encoder"].abs().mean()
    with pytest.raises(InvalidInputError, match="expects \\[-1, 1\\]"):
        towers["encoder"](x * 4)


def test_tower_at_another_size_merges_neighbours_space_to_depth(tiny_tokenizer_dir, one_thread):
    from meditok.vqa.model import VisionTower

    tok = MedITok.from_pretrained(tiny_tokenizer_dir)  # native 32 px, stride 8
    plain, merged = VisionTower(tok, image_size=64), VisionTower(tok, image_size=64, merge=2)
    assert plain.preprocess.image_size == 64 and tok.config.preprocess.image_size == 32
    assert (plain.grid, merged.grid, merged.num_positions, merged.dim) == (8, 4, 16, 4 * plain.dim)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    a, m = plain(x).reshape(2, 8, 8, -1), merged(x)
    # merged token (r, c) = positions (2r+i, 2c+j), i, j in {0, 1}, concatenated row-major
    for r, c in ((0, 0), (1, 2), (3, 3)):
        want = torch.cat([a[:, 2 * r + i, 2 * c + j] for i in (0, 1) for j in (0, 1)], -1)
        torch.testing.assert_close(m[:, 4 * r + c], want)
    for size, merge in ((40, 2), (36, 1)):  # a 5x5 grid cannot merge 2x2; 36 px is no multiple of 8
        with pytest.raises(InvalidInputError, match="multiple of"):
            VisionTower(tok, image_size=size, merge=merge)


def test_text_only_model_has_no_projector(tiny_lm_dir, tiny_tokenizer_dir, one_thread):
    model = _model(tiny_lm_dir, tiny_tokenizer_dir, use_image=False)
    assert model.projector is None and model.num_image_tokens == 0
    seqs = pack_image(model.prompt, None, [("Is there a fracture?", "yes")], 0)
    assert IMAGE_TOKEN_ID not in seqs[0].ids
    loss, _ = model(collate(seqs, 3))
    loss.backward()
    assert all("lora_" in k for k in model.state_dict())


def test_packing_is_exact(tiny_lm_dir, tiny_tokenizer_dir, one_thread):
    model = _model(tiny_lm_dir, tiny_tokenizer_dir).eval()
    with torch.no_grad():
        for n, p in model.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)  # LoRA B starts at zero; make the adapted path matter
    qas = [("Is there a fracture?", "yes"), ("What organ is shown?", "the liver"), ("Big?", "no")]
    n = model.num_image_tokens
    feats = {"img": torch.randn(n, model.tower.dim)}
    packed = pack_image(model.prompt, "img", qas, n, pack=True)
    single = pack_image(model.prompt, "img", qas, n, pack=False)
    assert len(packed) == 1 and len(single) == 3
    assert len(packed[0]) < sum(len(s) for s in single)
    with torch.no_grad():
        lp, _ = model(collate(packed, 3, feats))
        lu, _ = model(collate(single, 3, feats))
    torch.testing.assert_close(lp, lu, rtol=1e-5, atol=1e-5)
    # a length cap splits one image into several packed sequences (each with the prefix)
    capped = pack_image(model.prompt, "img", qas, n, max_tokens=len(packed[0]) - 1)
    assert len(capped) >= 2 and all(IMAGE_TOKEN_ID in s.ids for s in capped)


def test_batched_generation_equals_single(tiny_lm_dir, tiny_tokenizer_dir, one_thread):
    model = _model(tiny_lm_dir, tiny_tokenizer_dir).eval()
    qs = ["Is there a fracture?", "What organ is shown in this image of the chest?", "Big?"]
    feats = torch.randn(3, model.num_image_tokens, model.tower.dim)
    batched = model.generate(qs, features=feats, max_new_tokens=5)
    single = [model.generate([q], features=feats[i:i + 1], max_new_tokens=5)[0] for i, q in enumerate(qs)]
    assert batched == single
    with pytest.raises(InvalidInputError):
        model.generate(qs, features=feats[:2])


# ----------------------------------------------------------------------------- end to end
def _mini_vqa_rad(root: Path) -> Path:
    """A VQA-RAD-shaped folder: 4 images, train QA on all, test QA on two of them + a new one."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(root / "images" / f"img{i}.jpg")

    def qa(qid, img, q, a, kind, qt="PRES"):
        return {"qid": qid, "image_name": f"img{img}.jpg", "image_organ": "CHEST", "answer": a,
                "answer_type": kind, "question_type": qt, "question": q, "phrase_type": "freeform"}
    train = [qa(1, 0, "Is there a fracture?", "yes", "CLOSED"), qa(2, 0, "What modality is this?", "ct", "OPEN", "MODALITY"),
             qa(3, 1, "Is there a fracture?", "No", "CLOSED "), qa(4, 1, "How many ribs?", 2, "OPEN", "COUNT"),
             qa(5, 2, "Is the heart big?", "no", "CLOSED", "SIZE"), qa(6, 3, "Which lung?", "left lung", "OPEN", "POS"),
             qa(7, 3, "Is it normal?", "no", "CLOSED", "ABN")]
    test = [qa(11, 0, "Is a fracture present?", "yes", "CLOSED"), qa(12, 1, "Which side?", "left", "OPEN", "POS"),
            qa(13, 4, "Is there a mass?", "no", "CLOSED")]
    (root / "trainset.json").write_text(json.dumps(train))
    (root / "testset.json").write_text(json.dumps(test))
    return root


@pytest.mark.slow
def test_train_stages_ask_and_eval_end_to_end(tmp_path, tiny_lm_dir, tiny_tokenizer_dir, one_thread, capsys):
    vqa = _mini_vqa_rad(tmp_path / "vqa_rad")
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, ["identifier", "modality", "dataset", "split", "caption", "label"])
        w.writeheader()
        for i in range(5):  # corpus rows of another dataset: kept (only VQA-RAD test images are dropped)
            w.writerow({"identifier": f"vqa_rad/images/img{i}.jpg", "modality": "X-ray", "dataset": "other",
                        "split": "train", "caption": "This is an X-ray image.", "label": -1})
    model_kw = {"lm": str(tiny_lm_dir), "tokenizer": str(tiny_tokenizer_dir)}
    loop = {"steps": 1, "batch_size": 2, "ckpt_every": 1, "progress": False, "device": "cpu", "warmup_steps": 0}
    cfg_a = VQATrainConfig.from_dict({"stage": "A", "model": {**model_kw, "lora": {"r": 0}},
                                      "data": {"vqa_rad": str(vqa), "manifest": str(manifest), "per_caption": 10},
                                      "loop": {**loop, "output_dir": str(tmp_path / "a")}})
    cfg_a.save(tmp_path / "a.yaml")
    assert cli_main(["vqa", "train", str(tmp_path / "a.yaml")]) == 0
    a_cfg = VQAModel.config_from_pretrained(tmp_path / "a" / "final")
    data_a = a_cfg.meta["training"]["data"]
    assert data_a["corpus_pairs"] == 5 and data_a["vqa_descriptions"] == 4 - 2  # test images dropped
    cfg_b = VQATrainConfig.from_dict({"stage": "B", "model": {**model_kw, "lora": {"r": 4, "alpha": 8}},
                                      "data": {"vqa_rad": str(vqa)}, "init_from": str(tmp_path / "a" / "final"),
                                      "loop": {**loop, "output_dir": str(tmp_path / "b")}})
    cfg_b.save(tmp_path / "b.yaml")
    assert cli_main(["vqa", "train", str(tmp_path / "b.yaml"), "--loop.steps", "2"]) == 0
    final = tmp_path / "b" / "final"
    assert (tmp_path / "b" / "train_log.jsonl").exists() and list((tmp_path / "b").glob("ckpt-step*.pt"))
    b = VQAModel.from_pretrained(final)
    a = VQAModel.from_pretrained(tmp_path / "a" / "final")
    # stage B started from the stage-A projector, then trained it further
    assert not torch.equal(a.projector.fc1.weight, b.projector.fc1.weight)
    assert b.config.meta["stage_a"]["stage"] == "A" and b.config.meta["training"]["steps"] == 2
    assert sum(f.stat().st_size for f in final.iterdir()) < 2_000_000  # adapter only
    capsys.readouterr()
    img = vqa / "images" / "img0.jpg"
    assert cli_main(["vqa", "ask", str(img), "Is there a fracture?", "--model", str(final)]) == 0
    answer = capsys.readouterr().out.strip()
    assert answer == b.generate(["Is there a fracture?"], images=_input(b, img))[0]
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join([json.dumps({"image": str(img), "question": "Is there a fracture?", "id": 1}),
                                    json.dumps({"image": str(tmp_path / "missing.png"), "question": "Any mass?", "id": 2}),
                                    "{not json", json.dumps({"image": "images/img1.jpg", "question": "Which side?", "id": 4})]))
    (vqa / "q.jsonl").write_text(questions.read_text())
    out = tmp_path / "answers.jsonl"
    assert cli_main(["vqa", "ask", "--batch", str(vqa / "q.jsonl"), "--out", str(out), "--model", str(final), "--quiet"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r.get("id") for r in rows] == [1, 2, None, 4]  # input order kept
    assert rows[0]["answer"] == answer and "answer" not in rows[1] and "missing.png" in rows[1]["error"]
    assert "not valid JSON" in rows[2]["error"] and "answer" in rows[3]  # relative to the JSONL folder
    assert cli_main(["vqa", "ask", "--batch", str(vqa / "q.jsonl"), "--out", str(out), "--model", str(final)]) == 1
    res = tmp_path / "res"
    assert cli_main(["vqa", "eval", "--model", str(final), "--label", "tiny", "--vqa-rad", str(vqa),
                     "--out", str(res), "--quiet"]) == 0
    table = (res / "vqa_rad.md").read_text()
    assert "majority answer (per answer type)" in table and "| tiny |" in table
    rec = json.loads((res / "tiny.json").read_text())
    assert rec["questions"] == 3 and rec["scores"]["closed"]["n"] == 2
    preds = [json.loads(x) for x in (res / "tiny.predictions.jsonl").read_text().splitlines()]
    assert [p["qid"] for p in preds] == [11, 12, 13]
    # the mismatched-image control: its own row, recorded as such, answers from other images' features
    assert cli_main(["vqa", "eval", "--model", str(final), "--label", "tiny-mismatched", "--vqa-rad", str(vqa),
                     "--out", str(res), "--quiet", "--mismatched-images"]) == 0
    ctl = json.loads((res / "tiny-mismatched.json").read_text())
    assert ctl["image_control"].startswith("mismatched") and rec["image_control"] is None
    assert "| tiny-mismatched |" in (res / "vqa_rad.md").read_text()
    items = load_vqa_rad(vqa, "test")
    swap = mismatched_images(items)
    assert set(swap) == set(swap.values()) and all(k != v for k, v in swap.items())
    want = predict(b, items, progress=False, image_map=swap)
    assert [json.loads(x)["prediction"] for x in (res / "tiny-mismatched.predictions.jsonl").read_text().splitlines()] == want
    # visual contrastive decoding: a record of its own, never mixed up with a greedy one
    with pytest.raises(InvalidInputError, match="decoding"):
        evaluate_model(str(final), "tiny", vqa, res, progress=False, contrast_alpha=1.0)
    vcd = evaluate_model(str(final), "tiny-vcd", vqa, res, progress=False, contrast_alpha=1.0)
    assert vcd["decoding"]["alpha"] == 1.0 and rec["decoding"] == "greedy"
    b.config.contrast.alpha = 1.0
    want = predict(b, items, progress=False)
    assert [json.loads(x)["prediction"] for x in (res / "tiny-vcd.predictions.jsonl").read_text().splitlines()] == want


def _input(model: VQAModel, path: Path) -> torch.Tensor:
    from meditok.data.preprocess import load_image

    return load_image(path, model.tower.preprocess)[None]


@pytest.mark.slow
def test_stage_b_selects_its_epoch_on_the_validation_split(tmp_path, tiny_lm_dir, tiny_tokenizer_dir, one_thread):
    vqa = _mini_vqa_rad(tmp_path / "vqa_rad")
    train = json.loads((vqa / "trainset.json").read_text())
    extra = [{"qid": 100 + k, "image_name": f"img{k % 2}.jpg", "image_organ": "CHEST", "answer": "no" if k % 3 else "yes",
              "answer_type": "CLOSED", "question_type": "PRES", "question": f"Is finding {k} present?",
              "phrase_type": "freeform"} for k in range(24)]  # more questions about the two test images
    (vqa / "trainset.json").write_text(json.dumps(train + extra))
    val = load_vqa_rad(vqa, "val")
    assert val and {it.image_name for it in val} <= {"img0.jpg", "img1.jpg"}
    cfg = VQATrainConfig.from_dict({
        "stage": "B", "model": {"lm": str(tiny_lm_dir), "tokenizer": str(tiny_tokenizer_dir), "lora": {"r": 4, "alpha": 8}},
        "data": {"vqa_rad": str(vqa), "train_split": "train-val"},
        "loop": {"steps": 3, "batch_size": 2, "ckpt_every": 1, "eval_every": 1, "progress": False, "device": "cpu",
                 "warmup_steps": 0, "lr": 1e-2, "output_dir": str(tmp_path / "b")}})
    cfg.save(tmp_path / "b.yaml")
    assert cli_main(["vqa", "train", str(tmp_path / "b.yaml")]) == 0
    final = VQAModel.config_from_pretrained(tmp_path / "b" / "final")
    assert final.meta["training"]["data"]["qa"] == len(train) + len(extra) - len(val)
    curve = json.loads((tmp_path / "b" / "val" / "curve.json").read_text())
    assert sorted(map(int, curve["points"])) == [1, 2, 3] and curve["questions"] == len(val)
    accs = {int(k): v["closed_accuracy"] for k, v in curve["points"].items()}
    best = VQAModel.from_pretrained(tmp_path / "b" / "best")
    sel = best.config.meta["training"]["selection"]
    assert sel["selected_step"] == min(k for k in accs if accs[k] == max(accs.values()))  # earliest of the best
    assert best.config.meta["training"]["steps"] == sel["selected_step"]
    assert best.config.meta["training"]["trained_steps"] == 3
    assert f"step {sel['selected_step']} of 3" in (tmp_path / "b" / "best" / "README.md").read_text()
    snap = read_state(tmp_path / "b" / "val" / f"step_{sel['selected_step']:06d}" / WEIGHTS_NAME)
    assert snap.keys() == best.state_dict().keys()
    assert all(torch.equal(v, best.state_dict()[k]) for k, v in snap.items())
    # the score that chose it is what `meditok vqa eval --split val` measures on the saved adapter
    res = tmp_path / "res"
    assert cli_main(["vqa", "eval", "--model", str(tmp_path / "b" / "best"), "--label", "best", "--vqa-rad", str(vqa),
                     "--out", str(res), "--quiet", "--split", "val"]) == 0
    rec = json.loads((res / "best.json").read_text())
    assert rec["split"] == "val" and rec["questions"] == len(val)
    assert rec["scores"]["closed"]["closed_accuracy"] == accs[sel["selected_step"]]
    assert "val split" in (res / "vqa_rad.md").read_text()
    # an adapter trained on all of train has seen the val questions: refused
    plain = _model(tiny_lm_dir, tiny_tokenizer_dir).save_pretrained(tmp_path / "plain")
    with pytest.raises(InvalidInputError, match="train-val"):
        evaluate_model(str(plain), "plain", vqa, res, split="val", progress=False)
