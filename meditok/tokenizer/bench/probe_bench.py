"""The Table 2 benchmark: linear probes on BreastMNIST, PneumoniaMNIST and ISIC.

MedMNIST uses the official splits of the npz files (28 px images upsampled bilinearly to the
model's input size). ISIC (benign vs malignant) uses a fixed, seeded, stratified 60/20/20
split. Baselines in the same table: a probe on raw pixels (28×28) and the published MedMNIST v2
ResNet-18 (28) AUCs, quoted as published.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from meditok.errors import InvalidInputError

from meditok.utils.device import seed_everything
from meditok.utils.results import write_results
from meditok.data.benchmarks import (MEDMNIST_FILES, isic_samples, isic_split, load_batch,
                                     load_medmnist)
from meditok.data.preprocess import uint8_to_input
from .probe import (FEATURE_KINDS, PUBLISHED_BASELINES, ProbeConfig, cached, extract,
                    fit_and_score, table2_markdown)

DATASETS = ("breastmnist", "pneumoniamnist", "isic")
DATASET_LABELS = {"breastmnist": "BreastMNIST (US)", "pneumoniamnist": "PneumoniaMNIST (X-ray)",
                  "isic": "ISIC b/m (Dermo.)"}
PIXEL_SIZE = 28
RESULT_NAME = "probe"


class ProbeData:
    """One dataset's splits, able to yield model-input batches and raw-pixel features."""

    def __init__(self, name: str, data_root: str | Path, seed: int = 0):
        self.name = name
        root = Path(data_root)
        if name in MEDMNIST_FILES:
            self.arrays = load_medmnist(root / "medmnist", name)
            self.samples = None
            self.labels = {s: a.labels for s, a in self.arrays.items()}
        elif name == "isic":
            self.arrays = None
            self.samples = isic_split(isic_samples(root / "isic_cc0_550"), seed=seed)
            self.labels = {s: np.array([int(x.label == "malignant") for x in v])
                           for s, v in self.samples.items()}
        else:
            raise InvalidInputError(f"unknown probe dataset {name!r}; choose from {DATASETS}")

    def size(self, split: str) -> int:
        return len(self.labels[split])

    def model_batches(self, split: str, preprocess, batch_size: int) -> Iterator[torch.Tensor]:
        """Model inputs ``[B, 3, S, S]`` in ``[-1, 1]``."""
        if self.arrays is not None:
            imgs = self.arrays[split].images
            for i in range(0, len(imgs), batch_size):
                yield uint8_to_input(imgs[i:i + batch_size], preprocess)
            return
        items = self.samples[split]
        for i in range(0, len(items), batch_size):
            x, kept, skipped = load_batch(items[i:i + batch_size], preprocess)
            if skipped:  # labels are fixed per split: a missing image would misalign them
                raise InvalidInputError(f"unreadable probe image(s): {skipped}")
            yield x

    def pixels(self, split: str, preprocess) -> torch.Tensor:
        """Raw-pixel baseline features: the image at 28×28 in ``[-1, 1]``, flattened."""
        if self.arrays is not None:
            imgs = self.arrays[split].images.astype(np.float32) / 127.5 - 1.0
            return torch.from_numpy(imgs.reshape(len(imgs), -1))
        small = replace(preprocess, image_size=PIXEL_SIZE)
        return torch.cat([b.flatten(1) for b in self.model_batches(split, small, 64)])


def run_probe(model, data_root: str | Path, *, datasets: Sequence[str] = DATASETS,
              kinds: Sequence[str] = ("tokens",), pixel_baseline: bool = True,
              config: ProbeConfig | None = None, batch_size: int = 32,
              device: str | torch.device = "cpu", out_dir: str | Path | None = None,
              label: str = "MedITok", seed: int = 0, max_train: int | None = None,
              cache_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Extract (cached) features, train one probe per dataset × feature kind, write Table 2.

    Features are cached as ``<cache_dir>/<dataset>-<kind>-<split>.pt`` (default
    ``<out_dir>/features``); delete them when the checkpoint changes.
    """
    cfg = replace(config or ProbeConfig(), seed=seed)
    for k in kinds:
        if k not in FEATURE_KINDS:
            raise InvalidInputError(f"unknown feature kind {k!r}; choose from {FEATURE_KINDS}")
    pre = model.config.preprocess if model is not None else None
    cache = Path(cache_dir) if cache_dir is not None else \
        (Path(out_dir) / "features" if out_dir is not None else None)
    runs: list[dict[str, Any]] = []
    rows: dict[str, dict[str, Any]] = {}
    for name in datasets:
        data = ProbeData(name, data_root, seed=seed)
        sources = ([("pixels", "Raw pixels (28×28) + linear")] if pixel_baseline else []) \
            + [(k, f"{label} [{k}] + linear") for k in kinds]
        for kind, row_name in sources:
            splits = {}
            for split in ("train", "val", "test"):
                path = cache / f"{name}-{kind}-{split}.pt" if cache else None
                if kind == "pixels":
                    x = cached(path, lambda s=split: data.pixels(s, pre))
                else:
                    seed_everything(seed)
                    x = cached(path, lambda s=split: extract(
                        model, data.model_batches(s, pre, batch_size), kind, device,
                        total=data.size(s), desc=f"{name}/{s}/{kind}"))
                y = data.labels[split]
                if split == "train" and max_train:
                    x, y = x[:max_train], y[:max_train]
                splits[split] = (x, y)
            res = fit_and_score(splits, cfg, progress=progress)
            runs.append({"dataset": name, "kind": kind, "dim": int(splits["train"][0].shape[1]),
                         "n": {s: int(len(v[1])) for s, v in splits.items()},
                         "best_epoch": res.best_epoch, "epochs_run": len(res.history),
                         "scores": res.scores, "history": res.history})
            rows.setdefault(row_name, {"model": row_name, "scores": {}})
            rows[row_name]["scores"][name] = res.scores["test"]
    for name in datasets:
        if name in PUBLISHED_BASELINES:
            pub = PUBLISHED_BASELINES[name]
            rows.setdefault(pub["model"], {"model": pub["model"], "scores": {},
                                           "published": True})
            rows[pub["model"]]["scores"][name] = {"map": pub["map"], "auc": pub["auc"]}
    result = {"label": label, "datasets": list(datasets), "kinds": list(kinds),
              "probe_config": asdict(cfg), "table": list(rows.values()), "runs": runs,
              "image_size": int(model.config.preprocess.image_size) if model is not None else None,
              "protocol": "frozen encoder+quantiser; one linear layer on standardised "
                          "features; Adam lr 1e-4, batch 128; early stopping on val "
                          f"{cfg.monitor} (best epoch restored); test mAP/AUC macro one-vs-rest (sklearn)"}
    if out_dir is not None:
        out = Path(out_dir)
        result["curves"] = save_probe_curves(runs, out / "probe.curves.png")
        write_results(out, RESULT_NAME, result, to_markdown(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    """Paper Table 2 layout plus a per-run detail table."""
    ds = result["datasets"]
    text = "# Linear probing (paper Table 2 layout), test mAP / AUC in %\n\n"
    text += table2_markdown(result["table"], ds, DATASET_LABELS)
    text += f"\n* {result['protocol']}\n* published rows are quoted, not re-run (AUC only)\n\n"
    text += "| dataset | features | dim | train/val/test | best epoch | val AUC | test AUC |\n"
    text += "|---|---|---|---|---|---|---|\n"
    for r in result["runs"]:
        n = r["n"]
        text += (f"| {r['dataset']} | {r['kind']} | {r['dim']} | {n['train']}/{n['val']}/"
                 f"{n['test']} | {r['best_epoch']} | {r['scores']['val']['auc']:.4f} | "
                 f"{r['scores']['test']['auc']:.4f} |\n")
    return text


def save_probe_curves(runs: Sequence[dict[str, Any]], path: Path) -> str | None:
    """Validation AUC and training loss per epoch for every probe (one PNG)."""
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meditok.utils.io import atomic_path

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in runs:
        ep = [h["epoch"] for h in r["history"]]
        name = f"{r['dataset']}/{r['kind']}"
        ax1.plot(ep, [h["val_auc"] for h in r["history"]], label=name)
        ax2.plot(ep, [h["train_loss"] for h in r["history"]], label=name)
    ax1.set(xlabel="epoch", ylabel="validation AUC", title="probe: validation AUC")
    ax2.set(xlabel="epoch", ylabel="train cross-entropy", title="probe: training loss",
            yscale="log")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path.name
