"""Reconstruction benchmark (paper §4.2, Table 1; Fig. 3 grids).

PSNR, SSIM and rFID per modality and overall. ``Avg.`` is the mean of the per-modality
values (the paper's column); ``All`` pools every image (one rFID over the whole set).
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from meditok.data.benchmarks import PAPER_MODALITY_LABELS, Sample, load_batch, order_modalities
from meditok.data.preprocess import to_uint8, to_unit
from meditok.metrics.image import METRIC_CONVENTIONS, fid_states, fid_value, make_fid, psnr, ssim
from meditok.utils.device import seed_everything
from meditok.utils.results import batches, markdown_table, write_results

RESULT_NAME = "recon"


@torch.no_grad()
def evaluate_reconstruction(model, samples: Sequence[Sample], *, batch_size: int = 16,
                            device: str | torch.device = "cpu", compute_fid: bool = True,
                            grid_examples: int = 4, out_dir: str | Path | None = None,
                            label: str = "model", seed: int = 0,
                            progress: bool = True) -> dict[str, Any]:
    """Reconstruct every sample and score it; optionally write JSON/markdown/grids to ``out_dir``.

    Returns a dict with ``modalities`` (per-modality N, PSNR, SSIM 0–1, rFID), ``avg``, ``all``,
    ``skipped`` and ``conventions``.
    """
    seed_everything(seed)
    device = torch.device(device)
    pre = model.config.preprocess
    by_mod: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_mod[s.modality].append(s)
    mods = order_modalities(list(by_mod))

    per_image: list[dict[str, Any]] = []
    skipped = []
    fids = {m: make_fid(device) for m in mods} if compute_fid else {}
    examples: dict[str, list[tuple[np.ndarray, np.ndarray, float, float]]] = defaultdict(list)
    bar = tqdm(total=len(samples), desc="recon", unit="img", disable=not progress)
    for mod in mods:
        for chunk in batches(by_mod[mod], batch_size):
            x, kept, bad = load_batch(chunk, pre)
            skipped.extend(bad)
            bar.update(len(chunk))
            if x is None:
                continue
            x = x.to(device)
            y = model.reconstruct(x).float()
            xu, yu = to_unit(x), to_unit(y)
            p, s = psnr(yu, xu).cpu(), ssim(yu, xu).cpu()
            for smp, pv, sv in zip(kept, p.tolist(), s.tolist()):
                per_image.append({"path": smp.path, "modality": mod, "psnr": pv,
                                  "ssim": sv})
            if compute_fid:
                fids[mod].update(to_uint8(x), real=True)
                fids[mod].update(to_uint8(y), real=False)
            for i in range(min(len(kept), grid_examples - len(examples[mod]))):
                examples[mod].append((xu[i].permute(1, 2, 0).cpu().numpy(),
                                      yu[i].permute(1, 2, 0).cpu().numpy(), p[i].item(),
                                      s[i].item()))
    bar.close()

    result = summarise(per_image, fids, mods, label=label, model=model)
    result["skipped"] = [s.as_dict() for s in skipped]
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result["grids"] = {}
        for mod, ex in examples.items():
            if ex:
                name = f"recon_grid_{_safe(mod)}.png"
                save_grid(ex, out / name, title=f"{label} · {mod}")
                result["grids"][mod] = name
        _write_per_image(per_image, out / "recon_per_image.csv")
        write_results(out, RESULT_NAME, result, to_markdown(result))
    return result


def summarise(per_image: list[dict[str, Any]], fids: dict[str, Any], mods: Sequence[str],
              label: str, model=None) -> dict[str, Any]:
    """Aggregate per-image scores (and FID states) into the Table 1 structure."""
    table: dict[str, dict[str, Any]] = {}
    for mod in mods:
        rows = [r for r in per_image if r["modality"] == mod]
        table[mod] = {"n": len(rows),
                      "psnr": _mean([r["psnr"] for r in rows]),
                      "ssim": _mean([r["ssim"] for r in rows]),
                      "rfid": _safe_fid(fids.get(mod))}
    scored = [m for m in mods if table[m]["n"]]
    avg = {k: _mean([table[m][k] for m in scored if table[m][k] is not None])
           for k in ("psnr", "ssim", "rfid")}
    avg["n"] = sum(table[m]["n"] for m in scored)
    pooled = {"n": len(per_image), "psnr": _mean([r["psnr"] for r in per_image]),
              "ssim": _mean([r["ssim"] for r in per_image]),
              "rfid": _pooled_fid([fids[m] for m in scored if m in fids])}
    info = {"label": label, "modalities": table, "avg": avg, "all": pooled,
            "conventions": dict(METRIC_CONVENTIONS)}
    if model is not None:
        info["downsample"] = int(model.config.model.downsample)
        info["image_size"] = int(model.config.preprocess.image_size)
    return info


def to_markdown(result: dict[str, Any]) -> str:
    """Paper Table 1 layout: metric rows, modality columns, then Avg. and All."""
    mods = list(result["modalities"])
    header = ["Metrics", "Model", "f_d"] + [PAPER_MODALITY_LABELS.get(m, m) for m in mods] \
        + ["Avg.", "All"]
    rows = []
    for key, name in (("rfid", "rFID (↓)"), ("psnr", "PSNR (↑)"), ("ssim", "SSIM (↑)")):
        cells = [result["modalities"][m][key] for m in mods] + [result["avg"][key], result["all"][key]]
        if key == "ssim":  # 0-1 units: three decimals
            cells = [f"{v:.3f}" if isinstance(v, float) else v for v in cells]
        rows.append([name, result["label"], result.get("downsample")] + cells)
    rows.append(["N images", result["label"], result.get("downsample")]
                + [result["modalities"][m]["n"] for m in mods]
                + [result["avg"]["n"], result["all"]["n"]])
    text = "# Reconstruction (paper Table 1 layout)\n\n" + markdown_table(header, rows) + "\n"
    text += "".join(f"* **{k}**: {v}\n" for k, v in result["conventions"].items())
    text += (f"* input size {result.get('image_size')}², Avg. = mean over modalities, "
             "All = pooled over all images\n")
    if result.get("skipped"):
        text += f"* skipped {len(result['skipped'])} unreadable inputs (see recon.json)\n"
    return text


# ----------------------------------------------------------------------------- helpers
def _mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _safe_fid(metric) -> float | None:
    if metric is None or int(metric.real_features_num_samples) < 2:
        return None
    return fid_value(metric)


def _pooled_fid(metrics: Sequence[Any]) -> float | None:
    """rFID over the union of sets: the FID states (sums, cross-products, counts) add up."""
    states = [fid_states(m) for m in metrics]
    if not states:
        return None
    merged = {k: sum(st[k] for st in states) for k in states[0]}
    if int(merged["real_features_num_samples"]) < 2:
        return None
    return fid_value(merged)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "unknown"


def _write_per_image(rows: list[dict[str, Any]], path: Path) -> None:
    from meditok.utils.io import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "modality", "psnr", "ssim"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def save_grid(examples: Sequence[tuple[np.ndarray, np.ndarray, float, float]], path: Path,
              title: str = "") -> None:
    """Fig. 3 style: input | reconstruction | absolute error map, with PSNR/SSIM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meditok.utils.io import atomic_path

    n = len(examples)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n + 0.4), squeeze=False)
    for row, (inp, rec, p, s) in enumerate(examples):
        err = np.abs(inp - rec).mean(axis=-1)
        axes[row, 0].imshow(inp)
        axes[row, 1].imshow(rec)
        im = axes[row, 2].imshow(err, cmap="inferno", vmin=0.0, vmax=max(0.2, float(err.max())))
        axes[row, 1].set_title(f"PSNR {p:.2f} dB / SSIM {s:.3f}", fontsize=8)
        fig.colorbar(im, ax=axes[row, 2], fraction=0.046, pad=0.04)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[0], ("input", "reconstruction", "|error|")):
        ax.set_xlabel(name)
        ax.xaxis.set_label_position("top")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
