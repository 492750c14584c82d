"""The benchmark scripts of the speed work run end to end (tiny settings, CPU): the GPU
benchmark's smoke mode writes its JSON/markdown, and says in one line when CUDA is absent."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_benchmark.py"), "--device", "cpu",
                          "--preset", "tiny", "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads((tmp_path / "gpu_benchmark_smoke_cpu.json").read_text())
    assert {r["precision"] for r in data["inference"]} == {"fp32", "bf16"}
    assert all(r["status"] == "ok" and r["round_trip_img_s"] > 0 for r in data["inference"])
    assert data["training"]["status"] == "ok" and data["training"]["one_backward_img_s"] > 0
    assert "gpu_benchmark.py" in data["command"]


def test_gpu_benchmark_without_cuda_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_benchmark.py")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "Traceback" not in res.stderr and "CUDA is not available" in res.stderr
