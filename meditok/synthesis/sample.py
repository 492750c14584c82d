"""``meditok synth sample``: generated images as files — one PNG per sample and a grid.

Files are ``{condition}_{index:03d}.png`` (the official sampler's ``{modality}/{index}.png``,
flattened so that several conditions share one folder) and ``grid_{condition}.png``, written
atomically; existing files are never replaced without ``overwrite``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from meditok.data.preprocess import uint8_hwc
from meditok.errors import MedITokError
from meditok.utils.io import atomic_path, atomic_write_text


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "condition"


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """``[N, 3, H, W]`` in ``[-1, 1]`` → one ``H' x W' x 3`` uint8 mosaic (white gaps)."""
    n, _, h, w = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y:y + h, x:x + w] = uint8_hwc(images[i])
    return canvas


def save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def planned_files(out_dir: Path, condition: str, n: int) -> list[Path]:
    stem = safe_name(condition)
    return [out_dir / f"{stem}_{i:03d}.png" for i in range(n)] + [out_dir / f"grid_{stem}.png"]


def write_samples(images: torch.Tensor, out_dir: str | Path, condition: str,
                  overwrite: bool = False, grid_nrow: int | None = None) -> list[Path]:
    """Write one PNG per image and a grid for ``condition``; return the written paths."""
    out = Path(out_dir)
    paths = planned_files(out, condition, images.shape[0])
    clash = [p for p in paths if p.exists()]
    if clash and not overwrite:
        raise MedITokError(f"{clash[0]} already exists ({len(clash)} files would be replaced); "
                           "pass --overwrite or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for img, path in zip(images, paths):
        save_png(uint8_hwc(img), path)
    save_png(image_grid(images, grid_nrow), paths[-1])
    return paths


def condition_seed(seed: int, condition_id: int) -> int:
    """The seed of one condition's draws: the same images for (seed, condition) whatever else
    is sampled in the same call."""
    return int(seed) + 1_000_003 * int(condition_id)


def sample_to_folder(synth, conditions: Sequence[str], n: int, out_dir: str | Path, seed: int = 0,
                     batch_size: int = 64, overwrite: bool = False, progress: bool = True,
                     **settings: Any) -> dict[str, Any]:
    """Sample ``n`` images per condition into ``out_dir`` (+ ``samples.json`` saying how)."""
    out = Path(out_dir)
    for cond in conditions:  # refuse before spending minutes sampling
        clash = [p for p in planned_files(out, cond, n) if p.exists()]
        if clash and not overwrite:
            raise MedITokError(f"{clash[0]} already exists; pass --overwrite or choose another --out")
    record: dict[str, Any] = {"generator": synth.source, "tokenizer": synth.needs.get("spec"),
                              "seed": seed, "n": n, "batch_size": batch_size,
                              "settings": {**synth.sampling_defaults().to_dict(),
                                           **{k: v for k, v in settings.items() if v is not None}},
                              "files": {}}
    for cond in conditions:
        images = synth.sample(cond, n, seed=condition_seed(seed, synth.conditions.id(cond)),
                              batch_size=batch_size, progress=progress, **settings)
        written = write_samples(images, out, cond, overwrite=overwrite)
        record["files"][cond] = [p.name for p in written]
    atomic_write_text(out / "samples.json", json.dumps(record, indent=2))
    return record
