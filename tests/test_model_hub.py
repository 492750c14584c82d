"""save_pretrained / from_pretrained and import of official-format checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

from meditok import CheckpointError, MedITok
from meditok.tokenizer.hub import convert_official


def test_save_load_identity(tiny_model, tmp_path):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    tiny_model.config.meta["note"] = "unit test"
    tiny_model.save_pretrained(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= files
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["preprocess"]["input_range"] == [-1.0, 1.0]  # the contract travels with the weights
    assert cfg["preprocess"]["ct_window"] == [-1000.0, 1000.0]
    loaded = MedITok.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == tiny_model.config
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert torch.equal(loaded.tokenize(x), tiny_model.tokenize(x))


def test_fp16_storage_loads_as_fp32(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    loaded = MedITok.from_pretrained(tmp_path / "half")
    w = loaded.decoder.last_layer()
    assert w.dtype == torch.float32
    assert torch.allclose(w, tiny_model.decoder.last_layer().half().float())


def _official_file(model: MedITok, path, raw: bool = False):
    state = model.state_dict()
    if raw:  # the release's training checkpoint: {'trainer': {'model': {'core.' + k: v}}}
        state = {"args": {}, "trainer": {"model": {"core." + k: v for k, v in state.items()}}}
    torch.save(state, path)
    return path


@pytest.mark.parametrize("raw", [False, True])
def test_convert_official_format(tiny_model, tmp_path, raw):
    src = _official_file(tiny_model, tmp_path / "meditok_simple_v1.pth", raw)
    out = convert_official(src, tmp_path / "converted", preset_name="tiny")
    loaded = MedITok.from_pretrained(out)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded.tokenize(x), tiny_model.tokenize(x))
    assert "official release" in loaded.config.meta["source"]


def test_convert_reports_missing_unexpected_and_mismatched(tiny_model, tmp_path):
    state = dict(tiny_model.state_dict())
    state.pop("projection.weight")
    state["extra.weight"] = torch.zeros(1)
    state["fc_norm.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        convert_official(tmp_path / "bad.pth", tmp_path / "out", preset_name="tiny")
    msg = str(err.value)
    assert "bad.pth" in msg and "missing 1: projection.weight" in msg
    assert "unexpected 1: extra.weight" in msg and "fc_norm.bias: checkpoint (7,)" in msg
    assert not (tmp_path / "out").exists()  # nothing written on failure


def test_convert_rejects_non_state_dict_and_garbage(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        convert_official(tmp_path / "garbage.pth", tmp_path / "o")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        convert_official(tmp_path / "list.pth", tmp_path / "o")


def test_from_pretrained_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        MedITok.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config"):
        MedITok.from_pretrained(tmp_path / "empty")
