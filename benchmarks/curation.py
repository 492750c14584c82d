"""Curation throughput on 2 cores: volume → slices (CT, MRI) and 2D image reading.

Usage: python benchmarks/curation.py [--shared ../shared/data]
Writes benchmarks/results/curation.json and curation.md. Target: >= 50 slices/s.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from meditok.data.preprocess import PreprocessConfig
from meditok.data.preprocess import to_input
from meditok.data.quality import check_quality
from meditok.data.readers import iter_image_files, read_image, read_volume
from meditok.data.volumes import SliceConfig, slice_volume
from meditok.utils.io import atomic_write_text

HERE = Path(__file__).resolve().parent


def bench_volume(path: Path, modality: str) -> dict:
    t0 = time.perf_counter()
    vol = read_volume(path, modality=modality)
    t_read = time.perf_counter() - t0
    runs = {}
    for step in (5, 1):  # cost should scale with the number of candidate slices
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            kept, rejected = slice_volume(vol, d, "bench", SliceConfig(step=step), modality=modality)
            dt = time.perf_counter() - t0
        n = len(kept) + len(rejected)
        runs[f"step{step}"] = {"candidates": n, "kept": len(kept), "seconds": round(dt, 3),
                               "slices_per_s": round(n / dt, 1), "ms_per_slice": round(1000 * dt / n, 2)}
    ratio = runs["step1"]["ms_per_slice"] / runs["step5"]["ms_per_slice"]
    return {"file": str(path), "shape": list(vol.array.shape), "spacing": list(vol.spacing),
            "read_seconds": round(t_read, 3), **runs, "per_slice_cost_ratio_step1_vs_step5": round(ratio, 2)}


def bench_folder(folder: Path) -> dict:
    files = [f for f in iter_image_files([folder]) if f.suffix == ".png"]
    pre = PreprocessConfig()
    t0 = time.perf_counter()
    for f in files:
        img = read_image(f)
        check_quality(img)
        to_input(img, pre)
    dt = time.perf_counter() - t0
    return {"folder": str(folder), "files": len(files), "seconds": round(dt, 3),
            "images_per_s": round(len(files) / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(HERE.parent.parent / "shared" / "data"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    shared = Path(args.shared)
    res = {"machine": f"{platform.processor() or platform.machine()}, torch threads 2",
           "ct_totalsegmentator": bench_volume(shared / "ct_volume" / "example_ct.nii.gz", "ct"),
           "mri_radiomics_brain1": bench_volume(shared / "radiomics_nrrd" / "brain1_image.nrrd", "mri"),
           "png_folder_sam_med2d": bench_folder(shared / "sam_med2d_demo"),
           "target_slices_per_s": 50}
    out = HERE / "results"
    atomic_write_text(out / "curation.json", json.dumps(res, indent=1))
    lines = ["# Curation throughput (2 CPU cores)", "", "`python benchmarks/curation.py`", "",
             "| input | candidates (step 5) | slices/s (step 5) | slices/s (step 1) | ms/slice ratio step1/step5 |",
             "|---|---|---|---|---|"]
    for k in ("ct_totalsegmentator", "mri_radiomics_brain1"):
        r = res[k]
        lines.append(f"| {k} {r['shape']} | {r['step5']['candidates']} | {r['step5']['slices_per_s']} | "
                     f"{r['step1']['slices_per_s']} | {r['per_slice_cost_ratio_step1_vs_step5']} |")
    f = res["png_folder_sam_med2d"]
    lines += ["", f"PNG folder ({f['files']} files, read + QC + to_input 256 px): "
                  f"{f['images_per_s']} images/s", ""]
    atomic_write_text(out / "curation.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
