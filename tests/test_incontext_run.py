"""``meditok incontext run`` end to end on the real data with the bundled model, and its errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from meditok.cli import main
from meditok.incontext.model import MVG, mvg_preset
from meditok.utils.hub import BUNDLED_DIR

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def drive(shared_data):
    d = shared_data / "retina_vessels" / "DRIVE"
    return {"prompt": d / "training" / "images" / "21_training.tif",
            "label": d / "training" / "1st_manual" / "21_manual1.gif",
            "query": d / "testing" / "images" / "01_test.tif",
            "truth": d / "testing" / "1st_manual" / "01_manual1.gif",
            "fov": d / "testing" / "mask" / "01_test_mask.gif"}


@pytest.fixture()
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    m = MVG(mvg_preset("tiny"))
    return str(m.save_pretrained(tmp_path / "tiny"))


@pytest.mark.slow
def test_run_segments_a_drive_test_image_with_the_bundled_model(drive, tmp_path, capsys):
    assert (BUNDLED_DIR / "meditok-mvg-small" / "config.json").exists(), "the shipped model is missing"
    out = tmp_path / "pred" / "01_vessels.png"
    rc = main(["incontext", "run", "--prompt-image", str(drive["prompt"]), "--prompt-label", str(drive["label"]),
               "--query", str(drive["query"]), "--out", str(out), "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    mask = np.asarray(Image.open(out))
    assert mask.shape == (584, 565) and set(np.unique(mask)) <= {0, 255}
    panel = Image.open(out.with_name("01_vessels_overlay.png"))
    assert panel.size[1] == 256 and panel.size[0] > 4 * 200
    truth = np.asarray(Image.open(drive["truth"])) > 127
    fov = np.asarray(Image.open(drive["fov"])) > 127
    pred = mask > 127
    iou = (pred & truth & fov).sum() / ((pred | truth) & fov).sum()
    assert iou > 0.4          # copying the prompt's mask scores ~0.07 here
    # existing outputs are never replaced silently
    rc = main(["incontext", "run", "--prompt-image", str(drive["prompt"]), "--prompt-label", str(drive["label"]),
               "--query", str(drive["query"]), "--out", str(out)])
    assert rc == 1 and "--overwrite" in capsys.readouterr().err


def test_run_restores_a_dicom_ct_slice_at_its_own_size(shared_data, tmp_path, tiny_ckpt, capsys):
    dicoms = sorted((shared_data / "ct_volume" / "example_ct_dicom").iterdir())
    out = tmp_path / "restored.png"
    rc = main(["incontext", "run", "--task", "denoising", "--prompt-image", str(dicoms[0]),
               "--prompt-label", str(dicoms[1]), "--query", str(dicoms[5]), "--out", str(out), "--model", tiny_ckpt])
    assert rc == 0, capsys.readouterr().err
    assert np.asarray(Image.open(out)).shape[:2] == (512, 512)
    assert out.with_name("restored_overlay.png").exists()
    # restoration is decoded in MIM mode by default (its training objective 90 % of the time)
    args = ["incontext", "run", "--task", "denoising", "--prompt-image", str(dicoms[0]), "--prompt-label",
            str(dicoms[1]), "--query", str(dicoms[5]), "--model", tiny_ckpt]
    got = {}
    for mode in ("mim", "ar"):
        o = tmp_path / f"restored_{mode}.png"
        assert main(args + ["--out", str(o), "--inference", mode]) == 0
        got[mode] = np.asarray(Image.open(o))
    assert np.array_equal(np.asarray(Image.open(out)), got["mim"]) and not np.array_equal(got["mim"], got["ar"])


def test_run_segments_a_nifti_slice_in_whole_mode(shared_data, tmp_path, tiny_ckpt, capsys):
    vol = shared_data / "ct_volume" / "example_ct.nii.gz"
    mask = np.zeros((101, 122), np.uint8)       # the middle axial slice of the NIfTI is 101 x 122
    mask[30:60, 40:80] = 3
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = tmp_path / "o.png"
    rc = main(["incontext", "run", "--prompt-image", str(vol), "--prompt-label", str(tmp_path / "m.png"),
               "--query", str(vol), "--out", str(out), "--model", tiny_ckpt, "--mode", "whole", "--modality", "ct"])
    assert rc == 0, capsys.readouterr().err
    assert np.asarray(Image.open(out)).shape == (101, 122)


def test_a_label_of_the_wrong_size_or_mode_gets_a_clear_error(drive, shared_data, tmp_path, tiny_ckpt, capsys):
    base = ["incontext", "run", "--prompt-image", str(drive["prompt"]), "--query", str(drive["query"]),
            "--model", tiny_ckpt]
    chase = shared_data / "retina_vessels" / "CHASE_DB1" / "Image_01L_1stHO.png"
    assert main(base + ["--prompt-label", str(chase), "--out", str(tmp_path / "a.png")]) == 1
    err = capsys.readouterr().err
    assert "999x960" in err and "565x584" in err and "Traceback" not in err
    # a photograph is not a mask
    assert main(base + ["--prompt-label", str(drive["query"]), "--out", str(tmp_path / "b.png")]) == 1
    err = capsys.readouterr().err
    assert "distinct" in err and "mask" in err
    # an empty mask carries no class; the output must be a PNG
    Image.fromarray(np.zeros((584, 565), np.uint8)).save(tmp_path / "empty.png")
    assert main(base + ["--prompt-label", str(tmp_path / "empty.png"), "--out", str(tmp_path / "c.png")]) == 1
    assert "empty" in capsys.readouterr().err
    assert main(base + ["--prompt-label", str(drive["label"]), "--out", str(tmp_path / "d.jpg")]) == 1
    assert ".png" in capsys.readouterr().err
    assert not any(tmp_path.glob("[abcd].png"))


@pytest.mark.slow
def test_train_then_extend_records_both_sessions(shared_data, tmp_path):
    """`meditok incontext train` on the tiny preset with real data, then the same run extended with a
    raised loop.steps: it resumes (no step trained twice), follows the longer schedule, and the model
    states both sessions and their total wall time (the card too)."""
    from meditok.engine.logs import read_log
    from meditok.incontext.card import bundle_model

    out = tmp_path / "run"
    base = ["incontext", "train", "configs/incontext/tiny.yaml", "--data.root", str(shared_data),
            "--loop.output_dir", str(out), "--data.epoch_size", "16", "--data.val_episodes", "2",
            "--loop.ckpt_every", "2", "--loop.log_every", "1"]
    assert main(base + ["--loop.steps", "2"]) == 0
    assert main(base + ["--loop.steps", "4"]) == 0
    meta = json.loads((out / "final" / "config.json").read_text())["meta"]["training"]
    assert meta["steps"] == 4
    assert [(s["from_step"], s["to_step"]) for s in meta["sessions"]] == [(0, 2), (2, 4)]
    assert meta["wall_time_s"] == pytest.approx(sum(s["wall_s"] for s in meta["sessions"]), abs=0.11)
    before = (out / "final" / "config.json").read_bytes()
    assert main(base + ["--loop.steps", "4"]) == 0  # already there: the final model and its record stay
    assert (out / "final" / "config.json").read_bytes() == before
    steps = [r["step"] for r in read_log(out / "train_log.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4]
    card = (bundle_model(out / "final", tmp_path / "bundle", "tiny-mvg") / "README.md").read_text()
    assert "sessions" in card and "wall_time_s" in card
