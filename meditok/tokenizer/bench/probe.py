"""Linear probing of the tokenizer (paper §4.3, App. C.2, Table 2).

The tokenizer's encoder and quantiser are frozen; a single linear layer
(:func:`meditok.metrics.probe.train_linear_probe`) is trained on the flattened quantised
tokens (``quantized_latents``; alternatives ``features()``/``embed()``) and scored on the test
split (macro one-vs-rest mAP and AUC). Features are extracted once and cached as tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from meditok.metrics.probe import ProbeConfig, ProbeResult, probe_scores, train_linear_probe
from meditok.utils.results import markdown_table, pct

FEATURE_KINDS = ("tokens", "features", "embed")

#: Published MedMNIST v2 ResNet-18 (28) test AUC (Yang et al., 2023, Table 3), quoted as such.
PUBLISHED_BASELINES = {
    "breastmnist": {"model": "ResNet-18 (28), MedMNIST v2 (published)", "auc": 0.901,
                    "map": None},
    "pneumoniamnist": {"model": "ResNet-18 (28), MedMNIST v2 (published)", "auc": 0.944,
                       "map": None},
}


# ----------------------------------------------------------------------------- features
@torch.no_grad()
def model_features(model, images: torch.Tensor, kind: str = "tokens") -> torch.Tensor:
    """Frozen features of a batch ``[B, 3, S, S]``: ``[B, D]`` float32 on the CPU."""
    if kind == "tokens":
        out = model.quantized_latents(images).flatten(1)
    elif kind == "features":
        out = model.features(images)
    elif kind == "embed":
        out = model.embed(images)
    else:
        raise ValueError(f"unknown feature kind {kind!r}; choose from {FEATURE_KINDS}")
    return out.float().cpu()


def extract(model, batch_source: Iterable[torch.Tensor], kind: str,
            device: str | torch.device = "cpu", total: int | None = None,
            desc: str = "features") -> torch.Tensor:
    """Run :func:`model_features` over batches from ``batch_source``; concatenated ``[N, D]``."""
    outs = []
    with tqdm(total=total, desc=desc, unit="img", leave=False) as bar:
        for x in batch_source:
            outs.append(model_features(model, x.to(device), kind))
            bar.update(len(x))
    return torch.cat(outs)


def cached(path: Path | None, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Load ``path`` if it exists, else compute and save it (atomically)."""
    if path is not None and path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    value = compute()
    if path is not None:
        from meditok.utils.io import atomic_path

        with atomic_path(path) as tmp:
            torch.save(value, tmp)
    return value


def fit_and_score(splits: dict[str, tuple[torch.Tensor, np.ndarray]],
                  config: ProbeConfig | None = None, progress: bool = True) -> ProbeResult:
    """Train on ``splits['train']``, early-stop on ``'val'``, score every split."""
    tx, ty = splits["train"]
    vx, vy = splits["val"]
    n_cls = int(max(int(np.max(y)) for _, y in splits.values()) + 1)
    result = train_linear_probe(tx, ty, vx, vy, config, num_classes=n_cls, progress=progress)
    for name, (x, y) in splits.items():
        result.scores[name] = probe_scores(y, result.predict_proba(x))
    return result


def table2_markdown(rows: list[dict[str, Any]], datasets: Sequence[str],
                    labels: dict[str, str] | None = None) -> str:
    """Paper Table 2 layout: one row per model/feature, ``mAP / AUC`` (%) per dataset, AVG."""
    header = ["Model"] + [(labels or {}).get(d, d) for d in datasets] + ["AVG"]
    lines = []
    for row in rows:
        cells, maps, aucs = [row["model"]], [], []
        for d in datasets:
            sc = row["scores"].get(d)
            if sc is None:
                cells.append("–")
                continue
            m, a = sc.get("map"), sc.get("auc")
            maps.append(m)
            aucs.append(a)
            cells.append(f"{pct(m)}/{pct(a)}")
        avg_m = float(np.mean(maps)) if maps and None not in maps else None
        avg_a = float(np.mean(aucs)) if aucs and None not in aucs else None
        cells.append(f"{pct(avg_m)}/{pct(avg_a)}" if len(aucs) == len(datasets) else "–")
        lines.append(cells)
    return markdown_table(header, lines)
