"""The user's 2D paths (issue 9): names that survive bad inputs, a batch that survives any bad
file, one writer per output, bounded token files, explicit token layouts, native resolution."""
from __future__ import annotations

import csv
import io
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meditok.cli import main


@pytest.fixture()
def tiny_ckpt(tmp_path, tiny_model):
    return tiny_model.save_pretrained(tmp_path / "tiny")


def _isic(shared: Path, i: int) -> Path:
    return shared / "isic_cc0_550" / f"ISIC_{i:07d}.jpg"


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def _panel_input(panel: Path) -> np.ndarray:
    """The left third of a panel (the model input as uint8)."""
    a = np.asarray(Image.open(panel))
    return a[:, : a.shape[1] // 3]


def _expected_input(path: Path, size: int = 64) -> np.ndarray:
    from meditok.data.preprocess import PreprocessConfig, uint8_hwc
    from meditok.data.readers import read_image
    from meditok.tokenizer.resolution import Resolution, display, model_input

    x = model_input(read_image(path), PreprocessConfig(), Resolution(size))
    return display(uint8_hwc(x))


# ----------------------------------------------------------------------------- item 2: names
def test_every_output_keeps_its_sources_name_after_a_skipped_file(shared_data, tmp_path, tiny_ckpt, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name, i in (("a.jpg", 0), ("c.jpg", 1), ("d.jpg", 2)):
        shutil.copy(_isic(shared_data, i), src / name)
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # unreadable, sorts second
    out = tmp_path / "recon"
    assert main(["reconstruct", str(src), "--out", str(out), "-c", str(tiny_ckpt), "--size", "64"]) == 0
    assert "skipped b.png" in capsys.readouterr().out
    rows = _rows(out / "metrics.csv")
    assert [(r["source"], r["output"]) for r in rows] == [("a.jpg", "a.png"), ("c.jpg", "c.png"),
                                                          ("d.jpg", "d.png")]
    for r in rows:  # each panel shows its own source, not a neighbour's
        assert np.array_equal(_panel_input(out / r["output"]), _expected_input(src / r["source"]))


def test_colliding_stems_from_different_folders_all_get_panels(shared_data, tmp_path, tiny_ckpt):
    src = tmp_path / "in"
    for rel, i in (("a/x.jpg", 3), ("b/x.jpg", 4), ("a/x_1.jpg", 5), ("a/x.png", 6)):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".png"):
            Image.open(_isic(shared_data, i)).save(src / rel)
        else:
            shutil.copy(_isic(shared_data, i), src / rel)
    out = tmp_path / "recon"
    assert main(["reconstruct", str(src), "--out", str(out), "-c", str(tiny_ckpt), "--size", "64"]) == 0
    rows = _rows(out / "metrics.csv")
    assert len(rows) == 4 and len({r["output"] for r in rows}) == 4
    assert len(list(out.rglob("*.png"))) == 4  # never fewer panels than processed
    for r in rows:
        assert np.array_equal(_panel_input(out / r["output"]), _expected_input(src / r["source"]))
    # the token file stores names relative to the input root, never absolute paths
    npz = tmp_path / "t.npz"
    assert main(["tokenize", str(src), "--out", str(npz), "-c", str(tiny_ckpt), "--size", "64"]) == 0
    with np.load(npz) as data:
        names = sorted(str(p) for p in data["paths"])
    assert names == ["a/x.jpg", "a/x.png", "a/x_1.jpg", "b/x.jpg"]


# ----------------------------------------------------------------------------- item 3: bad files
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A 1 KB PNG whose header claims side x side pixels (Pillow's decompression-bomb case)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * (side + 1) * 4)) + _png_chunk(b"IEND", b""))
    return path


def bad_slope_dicom(path: Path) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.dataelem import DataElement

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds["RescaleSlope"] = DataElement(0x00281053, "LO", "abc")
    ds.save_as(path)
    return path


@pytest.fixture()
def hostile(shared_data, tmp_path):
    """Two good files and the four hostile kinds of the issue (two of which are legal)."""
    nib = pytest.importorskip("nibabel")
    d = tmp_path / "hostile"
    d.mkdir()
    shutil.copy(_isic(shared_data, 7), d / "good.jpg")
    bomb_png(d / "bomb.png")
    bad_slope_dicom(d / "slope.dcm")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 50)).astype(np.float32), np.eye(4)),
             d / "flat2d.nii.gz")
    long_name = "x" * 246 + ".jpg"  # a legal 250-character file name
    shutil.copy(_isic(shared_data, 8), d / long_name)
    return d


@pytest.mark.parametrize("verb", ["tokenize", "reconstruct"])
def test_one_bad_file_never_aborts_the_batch(hostile, tmp_path, tiny_ckpt, capsys, verb):
    out = tmp_path / ("t.npz" if verb == "tokenize" else "recon")
    assert main([verb, str(hostile), "--out", str(out), "-c", str(tiny_ckpt), "--size", "64"]) == 0
    text = capsys.readouterr().out
    assert "3 processed, 2 skipped" in text  # good.jpg, the 2-D NIfTI and the long name succeed
    assert "skipped bomb.png: header claims 400 M pixels, above the limit of 100 M" in text
    assert "skipped slope.dcm: DICOM RescaleSlope 'abc' is not a number" in text
    if verb == "reconstruct":
        assert len(_rows(out / "metrics.csv")) == 3 and len(list(out.glob("*.png"))) == 3
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_unexpected_exception_types_are_reported_per_item(shared_data, tmp_path, tiny_ckpt, capsys,
                                                          monkeypatch):
    import meditok.tokenizer.jobs as jobs

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        shutil.copy(_isic(shared_data, 10 + i), src / f"im{i}.jpg")
    real = jobs.read_image

    def flaky(path, **kw):  # a decoder bug on one file: not one of our error types
        if Path(path).name == "im1.jpg":
            raise ZeroDivisionError("decoder bug")
        return real(path, **kw)

    monkeypatch.setattr(jobs, "read_image", flaky)
    out = tmp_path / "recon"
    assert main(["reconstruct", str(src), "--out", str(out), "-c", str(tiny_ckpt), "--size", "64"]) == 0
    text = capsys.readouterr().out
    assert "2 processed, 1 skipped" in text and "im1.jpg: unexpected ZeroDivisionError: decoder bug" in text


def test_data_qc_reports_every_file(hostile, capsys):
    assert main(["data", "qc", str(hostile)]) == 0
    lines = dict(reversed(line.split("\t")) for line in capsys.readouterr().out.strip().splitlines())
    assert len(lines) == 5
    assert lines[str(hostile / "bomb.png")].startswith("unreadable: header claims 400 M pixels")
    assert "RescaleSlope" in lines[str(hostile / "slope.dcm")]


def test_pixel_limit_is_explicit_and_configurable(tmp_path, monkeypatch):
    from meditok.data import readers
    from meditok.errors import ImageReadError

    assert readers.MAX_IMAGE_PIXELS == 100_000_000 and readers.max_image_pixels() == 100_000_000
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((1200, 1000), np.uint8)).save(big)
    assert readers.read_image(big).array.shape == (1200, 1000)
    monkeypatch.setenv("MEDITOK_MAX_IMAGE_PIXELS", "1000000")
    with pytest.raises(ImageReadError, match="1200 x 1000 = 1 M pixels, above the limit of 1 M"):
        readers.read_image(big)


def test_temporary_names_stay_within_255_bytes(tmp_path):
    from meditok.utils.io import atomic_write_text

    name = "é" * 120 + ".txt"  # 244 bytes in UTF-8: legal, but not with a long temp prefix
    atomic_write_text(tmp_path / name, "ok")
    assert (tmp_path / name).read_text() == "ok" and len(list(tmp_path.iterdir())) == 1


# ----------------------------------------------------------------------------- item 5: locks
HOLD_LOCK = textwrap.dedent("""
    import fcntl, os, sys, time
    path = sys.argv[1]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"pid {os.getpid()}: another run".encode())  # what a meditok run records
    print("held", flush=True)
    time.sleep(60)
""")


def _hold(lock_file: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_file)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("verb", ["reconstruct", "tokenize", "detokenize", "build-corpus"])
def test_a_second_run_on_the_same_output_is_refused(shared_data, tmp_path, tiny_ckpt, capsys, verb):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(_isic(shared_data, 20), src / "a.jpg")
    ckpt = ["-c", str(tiny_ckpt), "--size", "64"]
    if verb == "tokenize":
        out = tmp_path / "t.npz"
        lock, argv = tmp_path / ".t.npz.meditok.lock", ["tokenize", str(src), "--out", str(out), *ckpt]
    else:
        out = tmp_path / "out"
        lock = out / ".meditok.lock"
        if verb == "reconstruct":
            argv = ["reconstruct", str(src), "--out", str(out), *ckpt]
        elif verb == "detokenize":
            assert main(["tokenize", str(src), "--out", str(tmp_path / "d.npz"), *ckpt]) == 0
            argv = ["detokenize", str(tmp_path / "d.npz"), "--out", str(out), "-c", str(tiny_ckpt)]
        else:
            argv = ["data", "build-corpus", "--shared", str(tmp_path / "none"), "--sources",
                    "--extra", str(src), "--out", str(out), "--workers", "1", "--quiet"]
    holder = _hold(lock)
    try:
        capsys.readouterr()
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "is being written by another meditok run" in err and f"pid {holder.pid}" in err
        assert not out.exists() or [p.name for p in out.iterdir()] == [".meditok.lock"]
    finally:
        holder.kill()
        holder.wait()
    assert main(argv) == 0  # the lock goes with its process


# ----------------------------------------------------------------------------- item 6: token files
def _token_npz(path: Path, tokens: np.ndarray, paths: list[str], config: dict) -> Path:
    import json

    buf = io.BytesIO()
    np.savez_compressed(buf, tokens=tokens, paths=np.array(paths), config=np.array(json.dumps(config)))
    path.write_bytes(buf.getvalue())
    return path


def test_a_tiny_token_file_cannot_drive_unbounded_work(tmp_path, tiny_model, tiny_ckpt, capsys):
    cfg = tiny_model.config.to_dict()
    big = _token_npz(tmp_path / "big.npz", np.zeros((1, 4, 512, 512), np.uint16), ["a.png"], cfg)
    assert big.stat().st_size < 10_000
    t0 = time.perf_counter()
    assert main(["detokenize", str(big), "--out", str(tmp_path / "o1"), "-c", str(tiny_ckpt)]) == 1
    assert time.perf_counter() - t0 < 20
    assert "512x512 grid, above the 128-per-side limit" in capsys.readouterr().err
    many = _token_npz(tmp_path / "many.npz", np.zeros((12_000, 4, 1, 1), np.uint16),
                      [f"{i}.png" for i in range(12_000)], cfg)
    assert main(["detokenize", str(many), "--out", str(tmp_path / "o2"), "-c", str(tiny_ckpt)]) == 1
    assert "12000 grids to decode, above the limit of 10000" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").glob("*.png"))


def test_token_file_counts_and_values_are_checked_before_decoding(tmp_path, tiny_model, tiny_ckpt, capsys):
    cfg = tiny_model.config.to_dict()
    tok = np.random.default_rng(0).integers(0, 64, (3, 4, 4, 4)).astype(np.uint16)
    short = _token_npz(tmp_path / "short.npz", tok, ["a.png", "b.png"], cfg)
    assert main(["detokenize", str(short), "--out", str(tmp_path / "o"), "-c", str(tiny_ckpt)]) == 1
    assert "2 names for 3 items" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))  # no grid dropped
    wide = _token_npz(tmp_path / "k.npz", np.zeros((1, 8, 4, 4), np.uint16), ["a.png"], cfg)
    assert main(["detokenize", str(wide), "--out", str(tmp_path / "o"), "-c", str(tiny_ckpt)]) == 1
    assert "8 sub-codes per position; this tokenizer has 4 codebooks" in capsys.readouterr().err
    hi = _token_npz(tmp_path / "v.npz", np.full((1, 4, 4, 4), 64, np.uint16), ["a.png"], cfg)
    assert main(["detokenize", str(hi), "--out", str(tmp_path / "o"), "-c", str(tiny_ckpt)]) == 1
    assert "codes outside [0, 64)" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["png", "pickle", "npy"])
def test_detokenize_on_a_non_token_file_says_so(shared_data, tmp_path, tiny_ckpt, capsys, kind):
    path = tmp_path / "x.npz"
    if kind == "png":
        shutil.copy(_isic(shared_data, 0), path)
    elif kind == "pickle":
        np.savez(path, tokens=np.array([{"a": 1}], dtype=object))
    else:
        np.save(tmp_path / "x.npy", np.zeros((1, 4, 4, 4), np.uint16))
        (tmp_path / "x.npy").rename(path)
    assert main(["detokenize", str(path), "--out", str(tmp_path / "o"), "-c", str(tiny_ckpt)]) == 1
    err = capsys.readouterr().err
    assert "not a meditok token file" in err and "allow_pickle" not in err and "Traceback" not in err


# ----------------------------------------------------------------------------- item 8: layouts
def test_detokenize_takes_batched_grids_only(tiny_model):
    from meditok.errors import InvalidInputError
    from meditok.tokenizer.layout import tokens_from_official, tokens_to_official

    grids = torch.randint(0, 64, (4, 4, 3, 5))  # batch 4 == K 4: the ambiguous case
    official = tokens_to_official(grids)          # [B, K, h*w] = [4, 4, 15]
    with pytest.raises(InvalidInputError, match="tokens_from_official"):
        tiny_model.detokenize(official)
    with pytest.raises(InvalidInputError, match=r"tokens\[None\]"):
        tiny_model.detokenize(grids[0])
    with pytest.raises(InvalidInputError, match="tokens_from_official"):
        tiny_model.codes_to_latents(grids[0])
    via = tiny_model.detokenize(tokens_from_official(official, (3, 5)))
    assert via.shape == (4, 3, 24, 40) and torch.equal(via, tiny_model.detokenize(grids))


# ----------------------------------------------------------------------------- item 10: resolution
def test_default_resolution_keeps_aspect_and_is_reported(shared_data, tmp_path, tiny_ckpt, capsys):
    from meditok.tokenizer.resolution import DEFAULT_SIZE

    img = shared_data / "vqa_rad" / "images" / "synpic25534.jpg"  # 1024 x 421 radiograph
    out = tmp_path / "t.npz"
    assert main(["tokenize", str(img), "--out", str(out), "-c", str(tiny_ckpt)]) == 0
    text = capsys.readouterr().out
    assert DEFAULT_SIZE == 256
    assert "keep-aspect, longer side 256 px" in text
    assert "model input: 1 at 104x256 px (grid 13x32)" in text   # 421/1024*256 = 105 → 104
    with np.load(out) as data:
        assert data["tokens"].shape == (1, 4, 13, 32)
    native = tmp_path / "n.npz"
    assert main(["tokenize", str(img), "--out", str(native), "-c", str(tiny_ckpt), "--size", "native"]) == 0
    assert "1 at 424x1024 px (grid 53x128)" in capsys.readouterr().out
    assert main(["tokenize", str(img), "--out", str(tmp_path / "x.npz"), "-c", str(tiny_ckpt),
                 "--size", "2048"]) == 1
    assert "above the 1024-px limit; pass --allow-large" in capsys.readouterr().err


def test_small_panels_are_enlarged_for_display_only(shared_data, tmp_path, tiny_ckpt):
    out = tmp_path / "r"
    assert main(["reconstruct", str(_isic(shared_data, 1)), "--out", str(out), "-c", str(tiny_ckpt),
                 "--size", "64"]) == 0
    row = _rows(out / "metrics.csv")[0]
    assert row["model_size"] == "64x64" and row["grid"] == "8x8" and row["source_size"] == "250x250"
    assert Image.open(out / row["output"]).size == (3 * 256, 256)  # 4x nearest-neighbour


def test_shipped_model_is_better_at_the_default_size_than_squashed_to_64(shared_data):
    """The measurement behind the default: the same radiograph at 256 px vs 64 px."""
    from meditok import MedITok
    from meditok.data.preprocess import to_unit
    from meditok.data.readers import read_image
    from meditok.metrics.image import psnr
    from meditok.tokenizer.resolution import DEFAULT_SIZE, Resolution, model_input

    model = MedITok.from_pretrained("meditok-small")
    img = read_image(shared_data / "vqa_rad" / "images" / "synpic42157.jpg")
    scores = {}
    for size in (64, DEFAULT_SIZE):
        x = model_input(img, model.config.preprocess, Resolution(size))[None]
        scores[size] = float(psnr(to_unit(model.reconstruct(x)), to_unit(x))[0])
    assert scores[DEFAULT_SIZE] > scores[64] + 2.0, scores
