"""`meditok tokenize / detokenize / reconstruct / info / convert-official` on real files."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from meditok import MedITok
from meditok.cli import main
from meditok.data.preprocess import load_image
from meditok.tokenizer.jobs import load_tokens


@pytest.fixture()
def tiny_ckpt(tmp_path, tiny_model):
    return tiny_model.save_pretrained(tmp_path / "tiny")


@pytest.fixture()
def inputs(tmp_path, shared_data):
    """Two real dermoscopy JPEGs, one real CT DICOM slice, and two broken files."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("ISIC_0000000.jpg", "ISIC_0000001.jpg"):
        shutil.copy(shared_data / "isic_cc0_550" / name, folder / name)
    dicom = sorted((shared_data / "ct_volume" / "example_ct_dicom").iterdir())[0]
    shutil.copy(dicom, folder / "slice.dcm")
    good = (folder / "ISIC_0000000.jpg").read_bytes()
    (folder / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + good[:100])
    (folder / "empty.png").write_bytes(b"")
    return folder


def test_tokenize_skips_bad_files_and_round_trips(tiny_ckpt, inputs, tmp_path, capsys):
    out = tmp_path / "tokens.npz"
    # at the checkpoint's own size, so the stored tokens can be compared with the library's
    assert main(["tokenize", str(inputs), "--out", str(out), "-c", str(tiny_ckpt), "--batch-size", "2",
                 "--size", "32", "--resize", "squash"]) == 0
    printed = capsys.readouterr().out
    assert "3 processed, 2 skipped" in printed
    assert "truncated.png" in printed and "empty.png" in printed
    tokens, names = load_tokens(out)
    assert tokens.shape == (3, 4, 4, 4) and len(names) == 3
    # the stored tokens are exactly what the library gives for the same file
    model = MedITok.from_pretrained(tiny_ckpt)
    assert sorted(names) == ["ISIC_0000000.jpg", "ISIC_0000001.jpg", "slice.dcm"]  # relative names
    isic = names.index("ISIC_0000001.jpg")
    x = load_image(inputs / "ISIC_0000001.jpg", model.config.preprocess).unsqueeze(0)
    assert torch.equal(tokens[isic], model.tokenize(x)[0])

    dec = tmp_path / "decoded"
    assert main(["detokenize", str(out), "--out", str(dec), "-c", str(tiny_ckpt)]) == 0
    pngs = sorted(p.name for p in dec.glob("*.png"))
    assert pngs == ["ISIC_0000000.png", "ISIC_0000001.png", "slice.png"]
    img = np.asarray(Image.open(dec / "ISIC_0000001.png"))
    expected = model.reconstruct(x)[0].clamp(-1, 1).mul(127.5).add(127.5).round().byte()
    assert np.array_equal(img, expected.permute(1, 2, 0).numpy())


def test_outputs_are_never_overwritten_silently(tiny_ckpt, inputs, tmp_path, capsys):
    out = tmp_path / "tokens.npz"
    out.write_bytes(b"precious")
    assert main(["tokenize", str(inputs), "--out", str(out), "-c", str(tiny_ckpt)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"


def test_reconstruct_writes_panels_and_metrics(tiny_ckpt, inputs, tmp_path, capsys):
    out = tmp_path / "recon"
    assert main(["reconstruct", str(inputs), "--out", str(out), "-c", str(tiny_ckpt)]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 3
    for row in rows:
        panel = Image.open(out / row["output"])
        # default policy: longer side 256 (250² ISIC and 512² CT both → 256², grid 32x32)
        assert panel.size == (256 * 3, 256) and row["model_size"] == "256x256"  # in | rec | err
        assert row["grid"] == "32x32"
        assert 0 < float(row["psnr"]) < 100 and -1 <= float(row["ssim"]) <= 1
    assert "2 skipped" in capsys.readouterr().out


def test_missing_input_and_checkpoint_give_one_line_errors(tiny_ckpt, tmp_path, capsys):
    assert main(["tokenize", str(tmp_path / "nope.png"), "--out", str(tmp_path / "t.npz"),
                 "-c", str(tiny_ckpt)]) == 1
    assert "nope.png" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing_ckpt")]) == 1
    err = capsys.readouterr().err
    assert "missing_ckpt" in err and "Traceback" not in err


def test_info_and_convert(tiny_model, tiny_ckpt, tmp_path, capsys):
    assert main(["info", str(tiny_ckpt)]) == 0
    assert '"preset": "tiny"' in capsys.readouterr().out
    # convert-official refuses a file that is not the large release, naming what is wrong
    torch.save(tiny_model.state_dict(), tmp_path / "small.pth")
    assert main(["convert-official", str(tmp_path / "small.pth"), str(tmp_path / "conv")]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "small.pth" in err


def test_speed_modes_from_the_command_line(tiny_ckpt, inputs, tmp_path):
    """`--precision bf16` runs the encoder under bf16 autocast (tokens mostly, not all, equal to
    fp32); `--fast-decoder` keeps the tokens and changes reconstructions only at rounding level."""
    args = [str(inputs / "ISIC_0000000.jpg"), str(inputs / "ISIC_0000001.jpg"), "-c", str(tiny_ckpt),
            "--size", "32", "--resize", "squash"]
    outs = {}
    for mode, extra in (("fp32", []), ("bf16", ["--precision", "bf16"])):
        outs[mode] = tmp_path / f"{mode}.npz"
        assert main(["tokenize", *args, "--out", str(outs[mode]), *extra]) == 0
    fp32, _ = load_tokens(outs["fp32"])
    bf16, _ = load_tokens(outs["bf16"])
    model = MedITok.from_pretrained(tiny_ckpt)
    x = load_image(inputs / "ISIC_0000000.jpg", model.config.preprocess).unsqueeze(0)
    assert torch.equal(bf16[0], model.tokenize(x, "bf16")[0])  # the flag reaches the model
    assert (fp32 == bf16).float().mean() > 0.8
    assert not torch.equal(fp32, bf16)  # bf16 rounding moves a few near-tie codes (97 % equal here)

    for name, extra in (("eager", []), ("fast", ["--fast-decoder"])):
        assert main(["reconstruct", *args, "--out", str(tmp_path / name), *extra]) == 0
    rows = {n: list(csv.DictReader(open(tmp_path / n / "metrics.csv"))) for n in ("eager", "fast")}
    for a, b in zip(rows["eager"], rows["fast"]):
        assert float(a["psnr"]) == pytest.approx(float(b["psnr"]), abs=0.05)
