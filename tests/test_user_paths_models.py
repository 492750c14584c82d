"""Checkpoints and runs on the user's paths (issue 9): no pickle ever runs, configs are bounded
before any allocation, damaged weights are refused, torchrun on CPU works or fails clearly,
and SSIM has one unit everywhere."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from meditok.cli import main

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Pickles to "open(marker, 'w')": loading it with weights_only=False creates the marker."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def manifest(shared_data, tmp_path):
    from test_train_run import write_manifest

    return write_manifest(shared_data, tmp_path / "data", n_train=8, n_val=2)


# ----------------------------------------------------------------------------- item 1: pickles
@pytest.mark.parametrize("where", ["init_from", "auto_resume"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused(manifest, tmp_path, capsys, where):
    marker = tmp_path / "PWNED"
    evil = {"format": "meditok-train-v1", "step": 1, "model": {"w": _Payload(marker)}}
    run = tmp_path / "run"
    argv = ["tokenizer", "train", str(ROOT / "configs" / "stage1_tiny.yaml"), "--data.manifest",
            str(manifest), "--output_dir", str(run), "--steps", "1", "--device", "cpu"]
    if where == "init_from":
        torch.save(evil, tmp_path / "evil.pt")
        argv += ["--model.init_from", str(tmp_path / "evil.pt")]
    else:
        run.mkdir()
        torch.save(evil, run / "ckpt-step00000001.pt")
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and not marker.exists()
    assert "refused to load" in err and "could run code" in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if "error" in ln]) == 1


# ----------------------------------------------------------------------------- item 7: configs
MEASURE = textwrap.dedent("""
    import json, resource, sys
    from meditok import MedITok
    from meditok.errors import CheckpointError
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        MedITok.from_pretrained(sys.argv[1])
        msg = "loaded"
    except CheckpointError as exc:
        msg = str(exc)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"message": msg, "grew_mb": (after - before) / 1024}))
""")


def _shipped_with(tmp_path: Path, **changes) -> Path:
    from meditok.utils.hub import BUNDLED_DIR

    d = tmp_path / "ckpt"
    shutil.copytree(BUNDLED_DIR / "meditok-small", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"].update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_a_deep_config_is_refused_before_any_allocation(tmp_path):
    d = _shipped_with(tmp_path, encoder_depth=3000)
    res = json.loads(subprocess.run([sys.executable, "-c", MEASURE, str(d)], capture_output=True,
                                    text=True, check=True, cwd=tmp_path).stdout)
    assert "encoder_depth = 3000 is outside the supported range [0, 256]" in res["message"]
    assert res["grew_mb"] < 150, res   # was 2.3 GB before the check


@pytest.mark.parametrize("changes,message", [
    # consistent heads, so only the size is absurd: the old code tried to allocate 51.5 GB
    ({"width": 65536, "num_heads": 1024, "proj_heads": 1024}, "width = 65536 is outside the supported range"),
    ({"codebook_size": 1_000_000_000}, "codebook_size = 1000000000 is outside"),   # was 32 GB
    ({"embed_dim": 10 ** 7}, "embed_dim = 10000000 is outside"),                    # was 4.9 GB
    ({"encoder_depth": 200}, "describes a model of about"),   # in range, but not these weights
])
def test_absurd_configs_never_build_a_model(tmp_path, monkeypatch, changes, message):
    from meditok import MedITok
    from meditok.errors import CheckpointError

    d = _shipped_with(tmp_path, **changes)
    built = []
    real_init = MedITok.__init__

    def counting(self, *a, **k):
        built.append(1)
        real_init(self, *a, **k)

    monkeypatch.setattr(MedITok, "__init__", counting)
    with pytest.raises(CheckpointError, match=message):
        MedITok.from_pretrained(d)
    assert not built


def test_weights_full_of_nan_are_refused(tiny_model, tmp_path, capsys):
    from meditok import MedITok
    from meditok.errors import CheckpointError

    with torch.no_grad():
        for p in tiny_model.parameters():
            p.fill_(float("nan"))
    ckpt = tiny_model.save_pretrained(tmp_path / "nan")
    with pytest.raises(CheckpointError, match=r"weight tensors contain NaN or infinite values"):
        MedITok.from_pretrained(ckpt)
    assert main(["info", str(ckpt)]) == 1
    assert "NaN" in capsys.readouterr().err


# ----------------------------------------------------------------------------- item 14
def _torchrun(args: list[str], tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("torchrun")
    if not exe.exists():
        pytest.skip("torchrun not installed next to this python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), "--nproc_per_node", "2", "-m", "meditok.cli", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)


@pytest.mark.slow
def test_torchrun_asking_for_cuda_on_a_cpu_machine_fails_clearly(manifest, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = _torchrun(["tokenizer", "train", str(ROOT / "configs" / "stage1_tiny.yaml"), "--device", "cuda",
                     "--data.manifest", str(manifest), "--output_dir", str(tmp_path / "r"), "--steps", "1"],
                    tmp_path)
    assert res.returncode != 0
    assert "CUDA is not available on this machine" in res.stderr and "--device cpu" in res.stderr
    assert "AttributeError" not in res.stderr


@pytest.mark.slow
def test_torchrun_on_cpu_trains_the_tiny_config(manifest, tmp_path):
    res = _torchrun(["tokenizer", "train", str(ROOT / "configs" / "stage1_tiny.yaml"), "--device", "cpu",
                     "--data.manifest", str(manifest), "--output_dir", str(tmp_path / "r"), "--steps", "2",
                     "--ckpt_every", "2", "--val_every", "2", "--data.batch_size", "4"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "r" / "final" / "model.safetensors").exists()


def test_ssim_has_one_unit_in_metrics_csv_and_eval_tables(shared_data, tmp_path, tiny_model, one_thread):
    from meditok.data.benchmarks import Sample
    from meditok.tokenizer.bench.reconstruction import evaluate_reconstruction

    ckpt = tiny_model.save_pretrained(tmp_path / "tiny")
    files = [shared_data / "isic_cc0_550" / f"ISIC_{i:07d}.jpg" for i in (120, 121)]
    ev = evaluate_reconstruction(tiny_model, [Sample(str(f), "dermoscopy") for f in files],
                                 compute_fid=False, progress=False, out_dir=tmp_path / "ev")
    src = tmp_path / "in"
    src.mkdir()
    for f in files:
        shutil.copy(f, src / f.name)
    assert main(["reconstruct", str(src), "--out", str(tmp_path / "r"), "-c", str(ckpt),
                 "--size", "32", "--resize", "squash"]) == 0   # the checkpoint's own input
    rows = list(csv.DictReader((tmp_path / "r" / "metrics.csv").open()))
    csv_mean = sum(float(r["ssim"]) for r in rows) / len(rows)
    assert 0 < ev["all"]["ssim"] <= 1 and ev["all"]["ssim"] == pytest.approx(csv_mean, abs=1e-4)
    table = (tmp_path / "ev" / "recon.md").read_text()
    assert "SSIM (↑)" in table and "SSIM %" not in table


def test_two_trainings_on_one_output_dir_are_refused(manifest, tmp_path, capsys):
    from test_user_paths import _hold

    run = tmp_path / "run"
    holder = _hold(run / ".meditok.lock")
    try:
        rc = main(["tokenizer", "train", str(ROOT / "configs" / "stage1_tiny.yaml"), "--data.manifest",
                   str(manifest), "--output_dir", str(run), "--steps", "1", "--device", "cpu"])
        assert rc == 1 and "is being written by another meditok run" in capsys.readouterr().err
        assert [p.name for p in run.iterdir()] == [".meditok.lock"]
    finally:
        holder.kill()
        holder.wait()
