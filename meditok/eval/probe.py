"""Linear probing (paper §4.3, App. C.2, Table 2).

The tokenizer's encoder and quantiser are frozen; a single linear layer is trained on the
flattened quantised tokens (``quantized_latents``; alternatives ``features()``/``embed()``)
with Adam (lr 1e-4, batch 128) until the validation loss stops improving (early stopping with
patience, weights of the best epoch restored; ``monitor="auc"`` stops on validation AUC), then scored on the test split: macro one-vs-rest
mAP and AUC (scikit-learn). Features are extracted once and cached as tensors.

Inputs are standardised with the training split's per-dimension mean/std before the layer. The
composition is still one affine map of the frozen features; it only makes Adam's fixed learning
rate behave the same for tokens, pooled features and pixels.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .common import batches, markdown_table, set_seed

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


# ----------------------------------------------------------------------------- scoring
def probe_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Macro one-vs-rest mAP and AUC (and accuracy) of class probabilities ``[N, C]``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    onehot = np.eye(n_classes)[labels]
    present = onehot.sum(0) > 0
    if present.sum() < 2:
        return {"map": float("nan"), "auc": float("nan"),
                "acc": float((probs.argmax(1) == labels).mean())}
    if n_classes == 2:
        auc = roc_auc_score(labels, probs[:, 1])
    else:
        auc = roc_auc_score(onehot[:, present], probs[:, present], average="macro")
    ap = average_precision_score(onehot[:, present], probs[:, present], average="macro")
    return {"map": float(ap), "auc": float(auc),
            "acc": float((probs.argmax(1) == labels).mean())}


# ----------------------------------------------------------------------------- probe
@dataclass
class ProbeConfig:
    """Optimisation of the linear layer (paper App. C.2: Adam, lr 1e-4, batch 128)."""

    lr: float = 1e-4
    batch_size: int = 128
    max_epochs: int = 1000
    patience: int = 20
    standardize: bool = True
    seed: int = 0
    #: Early-stopping signal: ``loss`` (validation cross-entropy, the convergence signal) or
    #: ``auc`` (validation AUC, ties broken by the loss).
    monitor: str = "loss"
    #: The validation loss must drop by more than this to count as progress.
    min_delta: float = 1e-3


@dataclass
class ProbeResult:
    """A trained probe, its learning curves and its scores."""

    layer: nn.Module
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> np.ndarray:
        return torch.softmax(self.layer(x.float()), dim=1).numpy()


class _Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def train_linear_probe(train_x: torch.Tensor, train_y: Sequence[int], val_x: torch.Tensor,
                       val_y: Sequence[int], config: ProbeConfig | None = None,
                       num_classes: int | None = None, progress: bool = True) -> ProbeResult:
    """Train one linear layer with early stopping on the validation split (``config.monitor``).

    The layer starts at zero; the weights of the best epoch are restored at the end.
    """
    cfg = config or ProbeConfig()
    gen = set_seed(cfg.seed)
    tx, vx = train_x.float(), val_x.float()
    ty = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    vy = np.asarray(val_y).astype(int)
    n_cls = num_classes or int(max(ty.max().item(), vy.max()) + 1)
    if cfg.standardize:
        mean, std = tx.mean(0), tx.std(0).clamp_min(1e-6)
    else:
        mean, std = torch.zeros(tx.shape[1]), torch.ones(tx.shape[1])
    linear = nn.Linear(tx.shape[1], n_cls)
    # Zero start: with the paper's small fixed lr a random start would dominate for many
    # epochs on small datasets; from zero the first Adam steps already follow the data.
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    layer = nn.Sequential(_Standardize(mean, std), linear)
    opt = torch.optim.Adam(layer.parameters(), lr=cfg.lr)
    best = (-np.inf, np.inf)
    best_state, best_epoch, since, history = copy.deepcopy(layer.state_dict()), 0, 0, []
    bar = tqdm(range(1, cfg.max_epochs + 1), desc="probe", unit="ep", leave=False,
               disable=not progress)
    for epoch in bar:
        layer.train()
        order = torch.randperm(len(tx), generator=gen)
        total = 0.0
        for idx in batches(order, cfg.batch_size):
            loss = F.cross_entropy(layer(tx[idx]), ty[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().item() * len(idx)
        layer.eval()
        with torch.no_grad():
            logits = layer(vx)
            val_loss = float(F.cross_entropy(logits, torch.as_tensor(vy)))
            val = probe_scores(vy, torch.softmax(logits, 1).numpy())
        history.append({"epoch": epoch, "train_loss": total / len(tx), "val_loss": val_loss,
                        "val_auc": val["auc"], "val_map": val["map"]})
        key = (np.nan_to_num(val["auc"], nan=-np.inf), val_loss)
        if cfg.monitor == "loss":
            improved = key[1] < best[1] - cfg.min_delta
        else:
            improved = key[0] > best[0] or (key[0] == best[0] and key[1] < best[1] - cfg.min_delta)
        if improved:
            best, best_state, best_epoch, since = key, copy.deepcopy(layer.state_dict()), epoch, 0
        else:
            since += 1
        bar.set_postfix(val_auc=f"{val['auc']:.4f}", best=best_epoch, refresh=False)
        if since >= cfg.patience:
            break
    layer.load_state_dict(best_state)
    layer.eval()
    return ProbeResult(layer=layer, best_epoch=best_epoch, history=history)


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
            cells.append(f"{_pct(m)}/{_pct(a)}")
        avg_m = float(np.mean(maps)) if maps and None not in maps else None
        avg_a = float(np.mean(aucs)) if aucs and None not in aucs else None
        cells.append(f"{_pct(avg_m)}/{_pct(avg_a)}" if len(aucs) == len(datasets) else "–")
        lines.append(cells)
    return markdown_table(header, lines)


def _pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.2f}"
