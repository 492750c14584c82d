"""Linear probes: one linear layer on frozen features, early-stopped, scored by AUC / mAP.

Adam (lr 1e-4, batch 128, paper App. C.2) until the validation loss stops improving (early
stopping with patience, weights of the best epoch restored; ``monitor="auc"`` stops on
validation AUC); scores are macro one-vs-rest mAP and AUC (scikit-learn) and accuracy.
Inputs are standardised with the training split's per-dimension mean/std before the layer: the
composition is still one affine map of the frozen features, it only makes Adam's fixed
learning rate behave the same for tokens, pooled features and pixels. Shared by the
tokenizer's Table 2 benchmark and the synthesis family's conditional accuracy.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from meditok.utils.device import seed_everything
from meditok.utils.results import batches


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
    gen = seed_everything(cfg.seed)
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


