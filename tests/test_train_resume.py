"""A run killed with SIGKILL resumes from its last checkpoint and reproduces the losses of an
uninterrupted run exactly (data order, augmentation, drop-path / DiffAug randomness, optimiser
and scheduler state all restored)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meditok.engine.checkpoints import latest_checkpoint, load_checkpoint
from meditok.engine.logs import read_log
from test_train_run import tiny_config, write_manifest

STEPS = 24
KEYS = ("loss_total", "loss_rec", "loss_vq", "loss_align", "align_acc", "loss_g", "w_gan", "loss_d", "lr")


def _command(config: Path) -> list[str]:
    return [sys.executable, "-m", "meditok.cli.train", str(config)]


def _losses(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_log(run / "train_log.jsonl") if "loss_total" in r}


@pytest.mark.slow
def test_sigkill_then_resume_gives_same_losses(shared_data, tmp_path):
    manifest = write_manifest(shared_data, tmp_path, n_train=16, n_val=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same kernels/threads in every run
    configs = {}
    for name in ("straight", "killed"):
        cfg = tiny_config(manifest, tmp_path / name, steps=STEPS, ckpt_every=6, keep_last=10,
                          val_every=0, **{"model.drop_path": 0.1, "align.vision_teacher_size": 32})
        configs[name] = tmp_path / f"{name}.yaml"
        cfg.save(configs[name])

    subprocess.run(_command(configs["straight"]), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_command(configs["killed"]), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "ckpt-step00000006.pt"
    deadline = time.time() + 180
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resumed_at = load_checkpoint(latest_checkpoint(tmp_path / "killed"))["step"]
    assert 6 <= resumed_at < STEPS

    subprocess.run(_command(configs["killed"]), check=True, env=env, capture_output=True)
    straight, killed = _losses(tmp_path / "straight"), _losses(tmp_path / "killed")
    assert sorted(killed) == list(range(1, STEPS + 1))  # no duplicated or missing steps
    for step in range(resumed_at + 1, STEPS + 1):
        for key in KEYS:
            assert killed[step][key] == pytest.approx(straight[step][key], rel=1e-6, abs=1e-7), (step, key)
    # The GAN branch was active, so the comparison covers D and the adaptive weight too.
    assert any(straight[s]["w_gan"] > 0 for s in range(resumed_at + 1, STEPS + 1))
