"""``meditok incontext run`` end to end on the real data with the bundled model, and its errors."""
from __future__ import annotations

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
