"""The behaviour splits the package redesign removed: one intensity contract, one device
switch, one metric of each kind, one reader, one manifest reader, one checkpoint resolver.

Each test drives the public entry points (CLI verbs, trainer pieces, benchmarks) on real
data and checks that two paths which used to disagree now give the same answer.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meditok import MedITok
from meditok.cli import main
from meditok.data.preprocess import PreprocessConfig, interpret, load_image, to_input, to_uint8
from meditok.data.readers import read_image, read_volume
from meditok.data.volumes import save_ct_png

pytestmark = pytest.mark.usefixtures("one_thread")


def _ct_hu(shared_data: Path) -> np.ndarray:
    dcm = sorted((shared_data / "ct_volume" / "example_ct_dicom").iterdir())[10]
    return np.clip(read_image(dcm).array, -1000, 2000)


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    cols = ["identifier", "modality", "dataset", "split", "caption", "label", "source_sha256"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for i, r in enumerate(rows):
            w.writerow({"dataset": "t", "split": "train", "caption": "", "label": -1,
                        "source_sha256": f"{i:064d}", **r})
    return path


# ----------------------------------------------------------------------------- split 1
def test_ct_png_gets_the_same_input_in_cli_training_and_evaluation(shared_data, tmp_path, tiny_model,
                                                                   capsys):
    """A 16-bit CT PNG (HU + 1024) is CT-windowed by every entry point, not min-max scaled."""
    from meditok.data.benchmarks import load_batch, samples_from_manifest
    from meditok.data.datasets import ManifestDataset

    hu = _ct_hu(shared_data)
    tagged, plain = tmp_path / "tagged.png", tmp_path / "plain.png"
    save_ct_png(tagged, hu)  # the corpus format: records its offset in the PNG
    Image.fromarray((hu + 1024).astype(np.uint16)).save(plain)  # someone else's HU PNG
    ckpt = tiny_model.save_pretrained(tmp_path / "tiny")
    pre = tiny_model.config.preprocess
    want = to_input(interpret(read_image(plain), "ct", pre), pre)

    # soft tissue (40 HU) sits at 0.04 in the [-1000, 1000] window, not near +1
    soft = torch.from_numpy(np.full((8, 8), 40 + 1024, np.float32))
    from meditok.data.readers import MedicalImage
    x_soft = to_input(MedicalImage(soft.numpy(), "uint16"), PreprocessConfig(image_size=8), "ct")
    assert float(x_soft.mean()) == pytest.approx(0.04, abs=1e-6)

    # training / evaluation datasets over a manifest row labelled CT
    manifest = _write_manifest(tmp_path / "m.csv", [{"identifier": "plain.png", "modality": "CT"},
                                                    {"identifier": "tagged.png", "modality": "CT"}])
    ds = ManifestDataset(manifest, pre, train=False)
    assert torch.equal(ds[0]["image"], want) and torch.equal(ds[1]["image"], want)
    x, _, _ = load_batch(samples_from_manifest(manifest), pre)
    assert torch.equal(x[0], want) and torch.equal(x[1], want)

    # the CLI: the tagged corpus PNG needs no flag; a plain one is told with --modality
    # (at the checkpoint's own size: the verbs' default resolution is a separate policy)
    out_a, out_b = tmp_path / "a.npz", tmp_path / "b.npz"
    native = ["--size", str(pre.image_size), "--resize", "squash"]
    assert main(["tokenize", str(tagged), "--out", str(out_a), "-c", str(ckpt), *native]) == 0
    assert main(["tokenize", str(plain), "--out", str(out_b), "-c", str(ckpt), "--modality", "ct",
                 *native]) == 0
    capsys.readouterr()
    expected = MedITok.from_pretrained(ckpt).tokenize(want[None])
    for out in (out_a, out_b):
        with np.load(out) as data:
            assert torch.equal(torch.from_numpy(data["tokens"].astype(np.int64)), expected)


# ----------------------------------------------------------------------------- split 2
def test_init_from_with_a_new_image_size_feeds_the_new_size(tmp_path, tiny_model, shared_data):
    from meditok.tokenizer.train import TrainConfig
    from meditok.tokenizer.train.components import build_lpips, build_model
    from meditok.tokenizer.train.data import build_train_data

    ckpt = tiny_model.save_pretrained(tmp_path / "tiny")
    src = shared_data / "isic_cc0_550" / "ISIC_0000000.jpg"
    for i in range(4):
        shutil.copy(src, tmp_path / f"img{i}.jpg")
    manifest = _write_manifest(tmp_path / "m.csv", [{"identifier": f"img{i}.jpg",
                                                     "modality": "dermoscopy"} for i in range(4)])
    cfg = TrainConfig.from_dict({"model": {"init_from": str(ckpt), "overrides": {"image_size": 64}},
                                 "data": {"manifest": str(manifest), "batch_size": 2,
                                          "num_workers": 0}, "align": {"mode": "none"}})
    model, _ = build_model(cfg)
    assert model.config.model.image_size == 64 and model.config.preprocess.image_size == 64
    data = build_train_data(cfg, model.config.preprocess, 0, 1)
    batch = next(iter(data.epoch_loader(0, 0)))
    assert batch["image"].shape == (2, 3, 64, 64)
    assert build_lpips(cfg, model.config.model.image_size) is not None  # 64 >= lpips_min_size


# ----------------------------------------------------------------------------- split 3
def test_training_without_augmentation_follows_the_resize_policy(shared_data, tmp_path):
    from meditok.data.datasets import ManifestDataset

    # a non-square real image: squash (the default policy) must not become a centre crop
    src = shared_data / "retina_vessels" / "DRIVE" / "training" / "images"
    path = sorted(src.iterdir())[0]
    manifest = _write_manifest(tmp_path / "m.csv", [{"identifier": str(path), "modality": "fundus"}])
    for policy in ("squash", "pad", "center_crop"):
        pre = PreprocessConfig(image_size=32, resize=policy)
        train = ManifestDataset(manifest, pre, train=True, augment=False)[0]["image"]
        evaluation = ManifestDataset(manifest, pre, train=False)[0]["image"]
        assert torch.equal(train, evaluation), policy
        assert torch.equal(train, load_image(path, pre, "fundus")), policy
    assert not torch.equal(ManifestDataset(manifest, PreprocessConfig(image_size=32), train=True)[0]["image"],
                           evaluation)  # augmentation on: a random crop/flip differs


# ----------------------------------------------------------------------------- split 4
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error path")
@pytest.mark.parametrize("argv", [
    ["tokenize", "{img}", "--out", "{tmp}/t.npz", "--device", "cuda"],
    ["reconstruct", "{img}", "--out", "{tmp}/r", "--device", "cuda"],
    ["demo", "--out", "{tmp}/d", "--device", "cuda"],
    ["eval", "recon", "meditok-small", "--images", "{img}", "--no-fid", "--out", "{tmp}/e", "--device", "cuda"],
    ["tokenizer", "eval", "volume", "meditok-small", "{vol}", "--out", "{tmp}/v", "--device", "cuda:1"],
])
def test_cuda_on_a_cpu_machine_is_one_line_from_every_verb(argv, shared_data, tmp_path, capsys):
    img = shared_data / "isic_cc0_550" / "ISIC_0000000.jpg"
    vol = shared_data / "ct_volume" / "example_ct.nii.gz"
    args = [a.format(img=img, tmp=tmp_path, vol=vol) for a in argv]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA is not available" in err and "Traceback" not in err


def test_device_auto_works_in_eval_and_tokenize(shared_data, tmp_path, capsys):
    img = shared_data / "isic_cc0_550" / "ISIC_0000001.jpg"
    assert main(["eval", "recon", "meditok-small", "--images", str(img), "--no-fid", "--quiet",
                 "--out", str(tmp_path / "e"), "--device", "auto"]) == 0
    assert main(["tokenize", str(img), "--out", str(tmp_path / "t.npz"), "--device", "auto"]) == 0
    capsys.readouterr()


# ----------------------------------------------------------------------------- split 5
def test_validation_and_evaluation_report_the_same_numbers(shared_data, tmp_path):
    """In-training validation and ``meditok eval recon`` / ``eval codebook`` on the same images
    with the same checkpoint give the same PSNR, SSIM and code usage."""
    from meditok.data.benchmarks import samples_from_manifest
    from meditok.data.datasets import ManifestDataset, collate
    from meditok.tokenizer.bench.codebook import codebook_usage
    from meditok.tokenizer.bench.reconstruction import evaluate_reconstruction
    from meditok.tokenizer.train.validate import run_validation
    from meditok.utils.device import autocast

    model = MedITok.from_pretrained("meditok-small")
    files = sorted((shared_data / "isic_cc0_550").glob("*.jpg"))[:6]
    manifest = _write_manifest(tmp_path / "m.csv", [{"identifier": str(f), "modality": "dermoscopy"}
                                                    for f in files])
    ds = ManifestDataset(manifest, model.config.preprocess, train=False)
    batches = [collate([ds[i] for i in range(0, 4)]), collate([ds[i] for i in range(4, 6)])]
    val = run_validation(model, batches, torch.device("cpu"), lambda: autocast("cpu", "fp32"))
    samples = samples_from_manifest(manifest)
    ev = evaluate_reconstruction(model, samples, batch_size=4, compute_fid=False, progress=False)
    assert ev["all"]["psnr"] == pytest.approx(val["val_psnr"], abs=1e-4)
    assert ev["all"]["ssim"] == pytest.approx(val["val_ssim"], abs=1e-5)  # one unit (0-1) everywhere
    usage = codebook_usage(model, (b["image"] for b in batches), progress=False).summary()
    assert usage["usage_percent"] == pytest.approx(val["val_usage"])
    assert usage["mean_perplexity"] == pytest.approx(val["val_perplexity_mean"])


def test_one_uint8_convention_for_every_written_image(tmp_path, tiny_model, capsys):
    # the official 127.5·x + 128 (truncated) convention, used by every writer
    assert to_uint8(torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 7.0])).tolist() == [0, 64, 128, 191, 255, 255]
    ckpt = tiny_model.save_pretrained(tmp_path / "tiny")
    tokens = torch.randint(0, tiny_model.config.model.codebook_size, (2, 4, 4, 4))
    from meditok.data.tokens import write_token_file
    write_token_file(tmp_path / "t.npz", tokens, ["a.png", "b.png"], tiny_model.config.to_dict())
    assert main(["detokenize", str(tmp_path / "t.npz"), "--out", str(tmp_path / "d"), "-c", str(ckpt)]) == 0
    capsys.readouterr()
    rec = tiny_model.detokenize(tokens)
    for i, name in enumerate(("a.png", "b.png")):
        png = np.asarray(Image.open(tmp_path / "d" / name))
        assert np.array_equal(png, to_uint8(rec[i]).permute(1, 2, 0).numpy())


def test_volume_benchmark_reads_volumes_with_the_one_reader(shared_data):
    from meditok.tokenizer.bench.volume import load_sliced_volume

    pre = PreprocessConfig()
    for path in (shared_data / "ct_volume" / "example_ct.nii.gz",
                 shared_data / "ct_volume" / "example_ct_dicom"):
        vol = read_volume(path)
        sliced = load_sliced_volume(path, pre)
        assert sliced.unit.shape == vol.array.shape and sliced.modality == "ct"
        want = (np.clip(vol.array, -1000, 1000) + 1000) / 2000
        np.testing.assert_allclose(sliced.unit, want, atol=1e-6)


def test_manifest_modalities_are_canonical_everywhere(tmp_path):
    from meditok.data.benchmarks import order_modalities, samples_from_manifest
    from meditok.data.manifest import read_manifest

    (tmp_path / "x.png").write_bytes(b"")
    manifest = _write_manifest(tmp_path / "m.csv", [{"identifier": "x.png", "modality": "X-ray"},
                                                    {"identifier": "x.png", "modality": "CT"}])
    samples = samples_from_manifest(manifest)
    assert [s.modality for s in samples] == ["xray", "ct"]
    assert order_modalities([s.modality for s in samples]) == ["ct", "xray"]  # paper order
    assert [r["modality"] for r in read_manifest(manifest)] == ["X-ray", "CT"]  # stored as written


def test_bundled_name_works_in_every_verb_that_takes_a_checkpoint(shared_data, tmp_path, capsys):
    vol = shared_data / "radiomics_nrrd" / "prostate_phantom_subvolume.nrrd"
    img = shared_data / "isic_cc0_550" / "ISIC_0000002.jpg"
    assert main(["eval", "volume", "meditok-small", str(vol), "--quiet", "--features", "none",
                 "--out", str(tmp_path / "v")]) == 0
    assert main(["tokenizer", "eval", "recon", "meditok-small", "--images", str(img), "--quiet",
                 "--no-fid", "--out", str(tmp_path / "r")]) == 0
    assert main(["info", "meditok-small"]) == 0
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "recon.json").read_text())["all"]["n"] == 1
    assert '"preset": "small"' in out
