"""Exported tokenizer halves (ONNX on onnxruntime, TorchScript) give the same tokens as
PyTorch on real images, at other batch sizes and image sizes too; the CLI refuses to overwrite."""
from __future__ import annotations

import json

import pytest
import torch

from meditok.data.preprocess import PreprocessConfig, load_images
from meditok.tokenizer.export import export, load_exported


@pytest.fixture(scope="module")
def shipped():
    from meditok import MedITok

    return MedITok.from_pretrained("meditok-small")


def _real(shared_data, size, n, offset=0):
    files = sorted((shared_data / "isic_cc0_550").glob("ISIC_*.jpg"))[offset:offset + n]
    files += sorted((shared_data / "vqa_rad" / "images").glob("*"))[offset:offset + n]
    if len(files) < 2 * n:
        pytest.skip("ISIC / VQA-RAD images not found in shared data")
    return load_images(files, PreprocessConfig(image_size=size))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_model_gives_pytorch_tokens_on_real_images(fmt, shipped, shared_data, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    x = _real(shared_data, 64, 3)  # 3 dermoscopy + 3 radiology images
    info = export(shipped, tmp_path, fmt=fmt, check_images=x)
    assert info["check"]["tokens_equal"] == info["check"]["tokens"] == x.shape[0] * 8 * 64
    ext = ".onnx" if fmt == "onnx" else ".pt"
    assert json.loads((tmp_path / "export.json").read_text())["format"] == fmt
    # dynamic batch and image size: 2 other images at 128 px
    x2 = _real(shared_data, 128, 1, offset=10)
    enc = load_exported(tmp_path / f"tokenize{ext}")
    want = shipped.tokenize(x2)
    got = enc(x2)
    assert got.dtype == torch.int64 and got.shape == want.shape == (2, 8, 16, 16)
    assert torch.equal(got, want)
    rec = load_exported(tmp_path / f"detokenize{ext}")(want)
    assert rec.shape == (2, 3, 128, 128)
    assert (rec - shipped.detokenize(want)).abs().max().item() < 1e-4
    with pytest.raises(Exception, match="exists"):
        export(shipped, tmp_path, fmt=fmt)


def test_export_cli(tmp_path, shared_data, capsys):
    from meditok.cli import main

    pytest.importorskip("onnxruntime")
    img = sorted((shared_data / "isic_cc0_550").glob("ISIC_*.jpg"))[0]
    out = tmp_path / "ts"
    assert main(["export", "meditok-small", "--format", "torchscript", str(out), "--check", str(img),
                 "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "tokens equal to PyTorch 512/512" in text
    assert (out / "tokenize.pt").is_file() and (out / "detokenize.pt").is_file()
    assert main(["export", "meditok-small", "--format", "torchscript", str(out)]) != 0
    assert "--overwrite" in capsys.readouterr().err
