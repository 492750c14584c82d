"""Codebook analysis (paper App. D.4): usage, perplexity and a t-SNE of the code vectors.

Usage and perplexity come from :class:`meditok.metrics.codebook.CodeUsage`, accumulated over
the whole dataset before any statistic is taken.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from meditok.metrics.codebook import CodeUsage
from meditok.utils.device import seed_everything
from meditok.utils.results import markdown_table, write_results

RESULT_NAME = "codebook"


@torch.no_grad()
def codebook_usage(model, batch_source: Iterable[torch.Tensor],
                   device: str | torch.device = "cpu", total: int | None = None,
                   progress: bool = True) -> CodeUsage:
    """Tokenise every batch and accumulate code counts."""
    cfg = model.config.model
    acc = CodeUsage(cfg.num_codebooks, cfg.codebook_size)
    with tqdm(total=total, desc="codebook usage", unit="img", disable=not progress) as bar:
        for x in batch_source:
            acc.update(model.tokenize(x.to(device)))
            bar.update(len(x))
    return acc


def tsne_codebook(vectors: torch.Tensor, per_codebook: int = 512, seed: int = 0,
                  perplexity: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE (scikit-learn) of code vectors ``[K, N, d]``; subsampled per sub-codebook.

    Returns the embedding ``[M, 2]`` and the sub-codebook index of every point.
    """
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    k, n, _ = vectors.shape
    pts, owner = [], []
    for i in range(k):
        idx = np.sort(rng.choice(n, size=min(per_codebook, n), replace=False))
        pts.append(vectors[i, idx].detach().cpu().double().numpy())
        owner.append(np.full(len(idx), i))
    data, owner_arr = np.concatenate(pts), np.concatenate(owner)
    perp = float(min(perplexity, max(2.0, (len(data) - 1) / 3.0)))
    emb = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed,
               metric="cosine").fit_transform(data)
    return emb, owner_arr


def plot_codebook(summary: dict[str, Any], emb: np.ndarray | None, owner: np.ndarray | None,
                  out_dir: Path, title: str = "") -> dict[str, str]:
    """Write ``codebook_usage.png`` and ``codebook_tsne.png``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meditok.utils.io import atomic_path

    files = {}
    k = len(summary["usage_percent"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    a1.bar(range(k), summary["usage_percent"], color="tab:blue")
    a1.set(xlabel="sub-codebook", ylabel="codes used (%)", ylim=(0, 100), title="usage")
    a2.bar(range(k), summary["perplexity"], color="tab:orange")
    a2.axhline(summary["codebook_size"], color="grey", ls="--", lw=0.8)
    a2.set(xlabel="sub-codebook", ylabel="perplexity", title="perplexity (dashed: size)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out_dir / "codebook_usage.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    files["usage"] = "codebook_usage.png"
    if emb is not None:
        fig, ax = plt.subplots(figsize=(5, 5))
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=owner, cmap="tab10", s=3, alpha=0.7)
        ax.legend(*sc.legend_elements(), title="sub-codebook", fontsize=7, loc="best",
                  markerscale=0.8)
        ax.set(xticks=[], yticks=[], title=f"t-SNE of code vectors {title}".strip())
        fig.tight_layout()
        with atomic_path(out_dir / "codebook_tsne.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        files["tsne"] = "codebook_tsne.png"
    return files


def analyse_codebook(model, batch_source: Iterable[torch.Tensor], *, out_dir: str | Path,
                     total: int | None = None, device: str | torch.device = "cpu",
                     tsne_points: int = 512, label: str = "model", seed: int = 0,
                     dataset: str = "", progress: bool = True) -> dict[str, Any]:
    """Usage/perplexity over the dataset + t-SNE; writes ``codebook.json/.md`` and PNGs."""
    seed_everything(seed)
    acc = codebook_usage(model, batch_source, device, total, progress)
    summary = acc.summary()
    emb = owner = None
    if tsne_points > 0:
        emb, owner = tsne_codebook(model.quantizer.codebook_vectors(), tsne_points, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = plot_codebook(summary, emb, owner, out, title=label)
    result = {"label": label, "dataset": dataset, **summary, "plots": files,
              "conventions": {"usage": "% of the codes of each sub-codebook used at least once "
                                       "over the whole dataset",
                              "perplexity": "exp(entropy) of the dataset-wide code frequencies",
                              "tsne": f"scikit-learn t-SNE (cosine, PCA init, seed {seed}) of "
                                      f"up to {tsne_points} code vectors per sub-codebook"}}
    k = len(summary["usage_percent"])
    rows = [[f"codebook {i}", summary["usage_percent"][i], summary["perplexity"][i]]
            for i in range(k)]
    rows.append(["mean", summary["mean_usage_percent"], summary["mean_perplexity"]])
    md = (f"# Codebook analysis (App. D.4): {label}\n\n"
          f"{summary['tokens_per_codebook']} tokens per sub-codebook from {dataset or 'the data'}"
          f"; codebook size {summary['codebook_size']}\n\n"
          + markdown_table(["Sub-codebook", "Usage %", "Perplexity"], rows))
    write_results(out, RESULT_NAME, result, md)
    return result


def batches_from_samples(samples: Sequence[Any], preprocess, batch_size: int,
                         skipped: list | None = None):
    """Model-input batches from :class:`~meditok.data.benchmarks.Sample` items.

    Unreadable files are left out and appended to ``skipped`` (a warning is printed).
    """
    from meditok.data.benchmarks import load_batch

    for i in range(0, len(samples), batch_size):
        x, _, bad = load_batch(samples[i:i + batch_size], preprocess)
        for b in bad:
            print(f"warning: skipped {b.item}: {b.reason}", file=sys.stderr)
        if skipped is not None:
            skipped.extend(bad)
        if x is not None:
            yield x
