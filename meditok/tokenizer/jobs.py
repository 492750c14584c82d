"""Batch jobs over image files: tokenize to an ``.npz``, detokenize, reconstruct with panels.

Bad files are skipped and reported (never abort the batch); outputs are written atomically
and an existing output is never overwritten unless ``overwrite=True``.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from meditok.data.preprocess import load_image, to_unit, uint8_hwc
from meditok.data.tokens import read_token_file, write_token_file
from meditok.errors import ImageReadError, MedITokError
from meditok.metrics.image import psnr, ssim
from meditok.tokenizer.model import MedITok
from meditok.utils.io import atomic_path, atomic_write_text


@dataclass
class BatchReport:
    """What a batch job did: the files it processed and the files it skipped (with reasons)."""

    done: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{len(self.done)} processed, {len(self.skipped)} skipped"]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def _device(model: MedITok) -> torch.device:
    """Inputs go where the model is (callers place the model; jobs never move it)."""
    return model.logit_scale.device


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise MedITokError(f"{path} already exists; pass --overwrite to replace it")


def _batches(paths: Sequence[Path], model: MedITok, batch_size: int, report: BatchReport,
             modality: str | None = None, desc: str = "images") -> Iterable[tuple[list[Path], torch.Tensor]]:
    """Yield (paths, [B,3,S,S] tensors) of readable files; record unreadable ones."""
    pre = model.config.preprocess
    good, tensors = [], []
    for path in tqdm(paths, desc=desc, unit="img"):
        try:
            tensors.append(load_image(path, pre, modality=modality))
            good.append(path)
        except ImageReadError as exc:
            report.skipped.append((str(path), exc.reason))
        if len(good) == batch_size:
            yield good, torch.stack(tensors)
            good, tensors = [], []
    if good:
        yield good, torch.stack(tensors)


def tokenize_files(model: MedITok, paths: Sequence[Path], out: str | Path, batch_size: int = 16,
                   overwrite: bool = False, modality: str | None = None) -> BatchReport:
    """Tokenize files into one token file (:func:`meditok.data.tokens.write_token_file`)."""
    out = Path(out)
    _refuse_overwrite(out, overwrite)
    report, chunks = BatchReport(), []
    for names, x in _batches(paths, model, batch_size, report, modality, desc="tokenize"):
        chunks.append(model.tokenize(x.to(_device(model))).cpu())
        report.done += [str(p) for p in names]
    if not chunks:
        raise MedITokError("no readable image among the inputs:\n" + report.summary())
    write_token_file(out, torch.cat(chunks), report.done, model.config.to_dict())
    return report


def load_tokens(path: str | Path) -> tuple[torch.Tensor, list[str]]:
    """Read a token file → (tokens [N,K,h,w], source names)."""
    tf = read_token_file(path)
    return tf.tokens, tf.names


def save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def detokenize_file(model: MedITok, tokens_path: str | Path, out_dir: str | Path,
                    batch_size: int = 16, overwrite: bool = False) -> list[Path]:
    """Decode every token grid of an ``.npz`` into PNGs named after their source files."""
    tokens, names = load_tokens(tokens_path)
    out_dir = Path(out_dir)
    written = []
    stems = _unique_stems(names or [f"image_{i:05d}" for i in range(len(tokens))])
    for i in tqdm(range(0, len(tokens), batch_size), desc="detokenize", unit="batch"):
        images = model.detokenize(tokens[i:i + batch_size].to(_device(model))).cpu()
        for img, stem in zip(images, stems[i:i + batch_size]):
            path = out_dir / f"{stem}.png"
            _refuse_overwrite(path, overwrite)
            save_png(uint8_hwc(img), path)
            written.append(path)
    return written


def _unique_stems(names: Sequence[str]) -> list[str]:
    """File stems made unique (``a``, ``a_1`` …) so two inputs never write the same file."""
    seen: dict[str, int] = {}
    stems = []
    for name in names:
        stem = Path(name).name.split(".")[0] or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n}")
    return stems


def error_map(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Absolute error (mean over channels) as an 'inferno'-like heat map, HxWx3 uint8."""
    err = (a - b).abs().mean(0).clamp(0, 1).cpu().numpy()  # 0 … 1 == half the [-1,1] range
    # A small fixed colour ramp (black → purple → orange → yellow) keeps matplotlib optional.
    stops = np.array([[0, 0, 4], [120, 28, 109], [237, 105, 37], [252, 255, 164]], np.float32)
    pos = err * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def reconstruct_files(model: MedITok, paths: Sequence[Path], out_dir: str | Path,
                      batch_size: int = 8, overwrite: bool = False,
                      modalities: dict[str, str] | None = None,
                      modality: str | None = None) -> tuple[BatchReport, list[dict]]:
    """Write ``<name>.png`` panels (input | reconstruction | |error|) and ``metrics.csv``.

    PSNR/SSIM are computed on the model-input images mapped to [0, 1] (``data_range=1``).
    ``modalities`` maps a path to its modality (the demo's samples); ``modality`` applies to
    every other path.
    """

    out_dir = Path(out_dir)
    report, rows = BatchReport(), []
    metrics_path = out_dir / "metrics.csv"
    _refuse_overwrite(metrics_path, overwrite)
    modalities = modalities or {}
    groups: dict[str | None, list[Path]] = {}
    for p in paths:
        groups.setdefault(modalities.get(str(p), modality), []).append(Path(p))
    for modality, group in groups.items():
        stems = iter(_unique_stems([str(p) for p in group]))
        for names, x in _batches(group, model, batch_size, report, modality, desc="reconstruct"):
            x = x.to(_device(model))
            rec = model.reconstruct(x)
            p_vals = psnr(to_unit(rec), to_unit(x)).tolist()
            s_vals = ssim(to_unit(rec), to_unit(x)).tolist()
            for src, inp, out, pv, sv in zip(names, x, rec, p_vals, s_vals):
                stem = next(stems)
                panel = np.concatenate([uint8_hwc(inp), uint8_hwc(out), error_map(inp, out)], axis=1)
                target = out_dir / f"{stem}.png"
                _refuse_overwrite(target, overwrite)
                save_png(panel, target)
                report.done.append(str(src))
                rows.append({"source": str(src), "output": target.name,
                             "modality": modality or "", "psnr": round(pv, 3), "ssim": round(sv, 4)})
    if rows:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(metrics_path, text.getvalue())
    return report, rows
