"""Volume slicing, QC, transforms, manifests, privacy, rejects, shards, datasets, CLI."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meditok.data.preprocess import PreprocessConfig
from meditok.data.corpus import build_corpus
from meditok.data.datasets import ManifestDataset
from meditok.data.manifest import read_manifest
from meditok.data.quality import QCConfig, check_quality
from meditok.data.readers import MedicalImage, Volume, read_image
from meditok.data.transforms import CT_WINDOWS, sample_ct_window, train_transform
from meditok.data.volumes import SliceConfig, iter_volume_slices, read_ct_png, save_ct_png


def _synthetic_ct() -> Volume:
    """40 axial slices 64x64: 0-9 all air, 10-19 almost no body, 20-29 body, 30-39 flat water."""
    v = np.full((40, 64, 64), -1000.0, np.float32)
    v[10:20] = -600.0  # no air (background 0) but lung-like values only...
    v[10:20, 30:34, 30:34] = 40.0  # ...and 16 px of tissue: body ratio 0.004 < 0.1
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 26 ** 2
    v[20:30][:, disc] = 40.0 + 200.0 * ((yy[disc] % 8) < 4)  # body with structure
    v[30:40] = 0.0  # uniform water: background 0, body 1, std 0
    return Volume(v, (1.0, 1.0, 1.0), np.eye(4), "ct")


def test_ct_slicing_rules_on_synthetic_volume():
    cfg = SliceConfig(step=5, planes=("axial",))
    got = {s.index: (s.kept, s.reason) for s in iter_volume_slices(_synthetic_ct(), cfg)}
    assert got == {0: (False, "ct_background"), 5: (False, "ct_background"),
                   10: (False, "ct_no_body"), 15: (False, "ct_no_body"),
                   20: (True, None), 25: (True, None),
                   30: (False, "ct_low_std"), 35: (False, "ct_low_std")}


def test_anisotropic_planes_resampled_to_isotropic():
    v = np.random.default_rng(0).normal(0, 300, (10, 40, 50)).astype(np.float32)
    vol = Volume(v, (4.0, 1.0, 1.0), np.eye(4), "ct")
    shapes = {s.plane: s.array.shape for s in iter_volume_slices(vol, SliceConfig(step=100, min_side=2))
              if s.kept}
    assert shapes == {"axial": (40, 50), "coronal": (40, 50), "sagittal": (40, 40)}


def test_mri_slicing_drops_dark_slices():
    v = np.zeros((20, 32, 32), np.float32)
    v[10:] = np.random.default_rng(1).uniform(0, 1000, (10, 32, 32))
    kept = {s.index: s.kept for s in iter_volume_slices(Volume(v, (1, 1, 1), np.eye(4), "mri"),
                                                        SliceConfig(step=5, planes=("axial",)))}
    assert kept == {0: False, 5: False, 10: True, 15: True}


def test_int16_png_round_trip_exact(tmp_path):
    hu = np.random.default_rng(2).integers(-1000, 2001, (37, 53)).astype(np.float32)
    save_ct_png(tmp_path / "s.png", hu)
    assert Image.open(tmp_path / "s.png").mode.startswith("I")
    assert np.array_equal(read_ct_png(tmp_path / "s.png"), hu)
    # what the official reader does: np.int16 then subtract the bias
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png")).astype(np.int16) - 1024, hu)


def _good() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (160, 200), dtype=np.uint8)


@pytest.mark.parametrize("reason,img", [
    ("low_range", (np.random.default_rng(4).integers(100, 140, (160, 160))).astype(np.uint8)),
    ("small", np.random.default_rng(5).integers(0, 256, (100, 300)).astype(np.uint8)),
    ("low_std", np.where(np.arange(160 * 160).reshape(160, 160) % 500 == 0, 255,
                         np.random.default_rng(6).integers(100, 105, (160, 160)))),
    ("few_values", np.tile(np.array([0, 128, 255], np.uint8), (160, 60))[:, :170]),
])
def test_each_qc_rule(reason, img):
    assert check_quality(_good()).passed
    res = check_quality(np.asarray(img, np.uint8))
    assert not res.passed and reason in res.reasons


def test_qc_rgb_unique_colours():
    rgb = np.zeros((150, 150, 3), np.uint8)
    rgb[:, :50] = (255, 0, 0)
    rgb[:, 50:100] = (0, 255, 0)
    rgb[:, 100:] = (0, 0, 255)
    assert "few_values" in check_quality(MedicalImage(rgb.astype(np.float32), "uint8")).reasons


def test_ct_window_probabilities():
    g = torch.Generator().manual_seed(0)
    n = 20000
    counts = {name: 0 for name, *_ in CT_WINDOWS}
    for _ in range(n):
        counts[sample_ct_window(g)[0]] += 1
    for name, _, p in CT_WINDOWS:
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(counts[name] / n - p) < 4 * sd, (name, counts[name] / n, p)


def test_rotation_both_directions_and_determinism():
    x = torch.arange(16.0).reshape(1, 4, 4).expand(3, 4, 4) / 16 * 2 - 1
    from meditok.data.transforms import AugmentConfig
    aug = AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), p_hflip=0, p_vflip=0, p_rotate=1, p_grayscale=0)
    outs = set()
    for seed in range(40):
        y = train_transform(x, PreprocessConfig(image_size=4), aug=aug,
                            gen=torch.Generator().manual_seed(seed))
        for k in (1, -1):
            if torch.allclose(y, torch.rot90(x, k, (-2, -1)), atol=1e-5):
                outs.add(k)
    assert outs == {1, -1}
    pre8 = PreprocessConfig(image_size=8)
    a = train_transform(x, pre8, aug=AugmentConfig(), gen=torch.Generator().manual_seed(7))
    b = train_transform(x, pre8, aug=AugmentConfig(), gen=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (3, 8, 8)


def _patient_dicom(shared: Path, folder: Path, secret: str) -> Path:
    import pydicom
    src = sorted((shared / "ct_volume" / "example_ct_dicom").iterdir())[5]
    ds = pydicom.dcmread(src)
    ds.PatientName = secret
    ds.PatientID = secret + "ID"
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / f"scan_{len(list(folder.iterdir()))}.dcm")
    return folder


def test_corpus_privacy_rejects_and_resume(shared_data, tmp_path, caplog):
    secret = "Zyxwvut^Qqqpatient"
    extra = _patient_dicom(shared_data, tmp_path / "in", secret)
    data = (sorted((shared_data / "ct_volume" / "example_ct_dicom").iterdir())[0]).read_bytes()
    (extra / "broken.dcm").write_bytes(data[: len(data) // 3])
    (extra / "empty.png").write_bytes(b"")
    shutil.copy(shared_data / "isic_cc0_550" / "ISIC_0000003.jpg", extra / "skin.jpg")
    out = tmp_path / "corpus"
    summary = build_corpus(None, out, workers=1, extra=[extra], progress=False)
    assert summary["images"] == 1  # the CT slice; the jpg has no known modality in a folder
    rejects = (out / "rejects.csv").read_text()
    # user files are named by content hash in the curated outputs; their paths stay local
    assert "broken.dcm" not in rejects and "empty.png" not in rejects and str(extra) not in rejects
    assert rejects.count("sha256:") == 3 and "unreadable" in rejects
    local = (out / "_local" / "sources.csv").read_text()
    assert "broken.dcm" in local and "empty.png" in local
    # no trace of the patient anywhere: file contents, file names, logs
    for f in out.rglob("*"):
        assert secret.split("^")[0] not in f.name
        if f.is_file():
            blob = f.read_bytes()
            assert secret.split("^")[0].encode() not in blob and b"Qqqpatient" not in blob
    assert "Zyxwvut" not in caplog.text
    rows = read_manifest(out / "manifest.csv")
    assert rows[0]["modality"] == "CT" and rows[0]["caption"] == "This is a CT image."
    hu = read_ct_png(out / rows[0]["identifier"])
    assert hu.min() >= -1000 and hu.max() <= 2000
    before = (out / "manifest.csv").read_text()
    assert build_corpus(None, out, workers=1, extra=[extra], progress=False) == summary  # resumable
    assert (out / "manifest.csv").read_text() == before


def _small_corpus(shared: Path, out: Path) -> list[dict]:
    build_corpus(shared, out, workers=1, sources=["sam_med2d", "fundus"], progress=False)
    return read_manifest(out / "manifest.parquet")


def test_shards_round_trip_and_rank_split(shared_data, tmp_path):
    rows = _small_corpus(shared_data, tmp_path / "c")
    assert {r["dataset"] for r in rows} == {"sam_med2d", "drive", "chase_db1"}
    from meditok.data.shards import ShardDataset, write_shards
    write_shards(tmp_path / "c" / "manifest.csv", tmp_path / "s", samples_per_shard=10)
    pre = PreprocessConfig(image_size=32)
    ref = ManifestDataset(tmp_path / "c" / "manifest.csv", pre, train=False)
    by_id = {ref[i]["identifier"]: ref[i] for i in range(len(ref))}
    seen = []
    for rank in range(2):
        for it in ShardDataset(tmp_path / "s", pre, train=False, rank=rank, world_size=2):
            assert torch.allclose(it["image"], by_id[it["identifier"]]["image"], atol=1e-6)
            assert it["caption"] == by_id[it["identifier"]]["caption"]
            seen.append(it["identifier"])
    assert sorted(seen) == sorted(by_id)  # disjoint and complete across ranks
    halves = [ManifestDataset(tmp_path / "c" / "manifest.csv", pre, False, rank=r, world_size=2)
              for r in range(2)]
    ids = [h.rows[i]["identifier"] for h in halves for i in range(len(h))]
    assert sorted(ids) == sorted(by_id)


def test_manifest_dataset_ct_and_bad_file(shared_data, tmp_path):
    hu = read_image(sorted((shared_data / "ct_volume" / "example_ct_dicom").iterdir())[9]).array
    save_ct_png(tmp_path / "ct.png", np.clip(hu, -1000, 2000))
    rows = [{"identifier": "ct.png", "modality": "CT", "dataset": "t", "split": "train",
             "caption": "This is a CT image.", "label": -1, "source_sha256": "a"},
            {"identifier": "missing.png", "modality": "CT", "dataset": "t", "split": "train",
             "caption": "x", "label": 3, "source_sha256": "b"}]
    pre = PreprocessConfig(image_size=64)
    ev = ManifestDataset(rows, pre, train=False, root=tmp_path)
    item = ev[0]
    assert item["image"].shape == (3, 64, 64) and item["label"] == -1 and item["modality"] == "CT"
    # eval window (-1000, 1000): HU 0 → 0.0, so the mean tracks the HU mean
    assert float(item["image"].min()) >= -1 and float(item["image"].max()) <= 1
    tr = ManifestDataset(rows, pre, train=True, root=tmp_path)
    assert tr[1]["identifier"] == "ct.png" and len(tr.failures) == 1  # skipped, counted
    from meditok.errors import ImageReadError
    with pytest.raises(ImageReadError):
        ev[1]


def test_cli_register_builds_parser(tmp_path):
    from meditok.cli.data import register
    parser = argparse.ArgumentParser(prog="meditok")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "build-corpus", "--out", str(tmp_path), "--workers", "1"])
    assert args.data_command == "build-corpus" and args.workers == 1
    args = parser.parse_args(["data", "slice", "vol.nii.gz", "--out", "x", "--modality", "ct"])
    assert args.step == 5 and callable(args.func)


def test_cli_slice_real_mri(shared_data, tmp_path, capsys):
    from meditok.cli.data import register
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "slice", str(shared_data / "radiomics_nrrd" / "brain1_image.nrrd"),
                              "--out", str(tmp_path), "--modality", "mri"])
    assert args.func(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["kept"] > 10 and len(list(tmp_path.glob("*.png"))) == res["kept"]


def test_qc_rejects_real_stripe_images_and_keeps_real_lesions(shared_data):
    """ISIC_0000000 is a vertical-stripe rendering (all rows identical); ISIC_0000150 is a lesion."""
    from meditok.data.readers import read_image

    cfg = QCConfig(min_side=128)
    stripes = check_quality(read_image(shared_data / "isic_cc0_550" / "ISIC_0000000.jpg"), cfg)
    lesion = check_quality(read_image(shared_data / "isic_cc0_550" / "ISIC_0000150.jpg"), cfg)
    assert stripes.reasons == ["stripes"]  # the paper's four rules alone would keep it
    assert lesion.passed
    assert check_quality(read_image(shared_data / "isic_cc0_550" / "ISIC_0000000.jpg"),
                         QCConfig(reject_stripes=False)).passed
