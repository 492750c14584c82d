"""Ship a trained MVG: weights, config (with provenance) and a model card that states the training
data, their licences (the weights inherit them), the command, machine, wall time and metrics."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meditok.errors import MedITokError
from meditok.incontext.model import MVG
from meditok.utils.hub import CARD_NAME
from meditok.utils.io import atomic_write_text

LICENCE_NOTE = (
    "**Licence of the weights.** They are derived from DRIVE, whose terms allow **research use only**, "
    "and from scans whose origin is not stated (the pyradiomics NRRD test volumes, the TotalSegmentator "
    "example CT); the SAM-Med2D demo slices are CC BY 4.0 (AMOS / TotalSegmentator). The weights inherit "
    "these restrictions: research use only, not for clinical use, not for a public default demo. CHASE_DB1 "
    "(licence unverified, believed CC BY 4.0) was **not** used for training, only held out for evaluation; "
    "anything derived from its images inherits that uncertainty.")


def _results_lines(results: dict[str, Any], label: str) -> list[str]:
    lines = ["", "## Measured (`benchmarks/incontext.py`, see benchmarks/results/incontext/)", ""]
    for r in results.get("segmentation", []):
        row = r["methods"].get(label)
        base = r["methods"].get("copy prompt label")
        unet = r["methods"].get("U-Net specialist")
        if row is None:
            continue
        extra = f"; copy-prompt {base['miou']:.3f}" if base else ""
        extra += f"; U-Net specialist {unet['miou']:.3f}" if unet else ""
        lines.append(f"- {r['source']} (prompts: {r['strategy']}, {r['cases']} cases): mIoU **{row['miou']:.3f}**, "
                     f"Dice {row['mdice']:.3f}{extra}")
    for r in results.get("restoration", []):
        inp = r["methods"].get("corrupted input")
        for mode in ("AR", "MIM"):
            row = r["methods"].get(f"{label} ({mode})")
            if row and inp:
                lines.append(f"- {r.get('name', r['source'])} ({mode} mode): PSNR {row['psnr']:.2f} dB vs corrupted "
                             f"input {inp['psnr']:.2f} dB; SSIM {row['ssim']:.3f} vs {inp['ssim']:.3f}")
    return lines


def _restoration_line(cfg: Any) -> str:
    """How the model predicts restoration labels (``MVGConfig.residual_tasks``), for the card."""
    if not cfg.residual_tasks:
        return ""
    how = ("the plain prediction blended per pixel with the query image by a learned gate" if cfg.residual_blend
           else "the query image plus a gated correction" if cfg.residual_gate else "the query image plus a correction")
    return f" Labels of {', '.join(cfg.residual_tasks)} are {how} (`meditok/incontext/restore.py`)."


def model_card(model: MVG, name: str, results: dict[str, Any] | None = None, label: str | None = None) -> str:
    cfg, meta = model.config, model.config.meta or {}
    tr = meta.get("training") or {}
    lines = ["---", "library_name: meditok", "tags: [medical-imaging, in-context-learning, segmentation, denoising, "
             "inpainting]", "license: other", "---", "", f"# {name}", "",
             f"MVG (in-context medical vision generalist) in pixel space: a {cfg.depth}-block ViT (width {cfg.dim}, "
             f"{cfg.heads} heads, {cfg.patch}-px tokens) over the 2x2 canvas [prompt image | prompt label / query image | "
             f"query label] of {cfg.cell}-px cells, head `{cfg.head}`, {model.num_parameters() / 1e6:.2f} M parameters. "
             "Trained with the paper's hybrid objective (segmentation 100 % autoregressive visual sentences; other "
             "tasks 90 % masked image modelling / 10 % AR) on random in-context colours." + _restoration_line(cfg), "",
             "```bash",
             "meditok incontext run --prompt-image A.tif --prompt-label A_mask.png --query C.tif --out C_mask.png",
             "```", "", LICENCE_NOTE, "", "## Training", ""]
    for key in ("task_shares", "scheme", "segmentation_share", "mim_share", "mask_ratio", "p_full_query_label",
                "steps", "batch_size", "lr", "final_train_loss", "command", "wall_time_s", "sessions", "wall_time_this_session_s",
                "load_average_1min_start_end", "machine", "device", "monitor"):
        if key in tr:
            lines.append(f"- **{key}**: {tr[key]}")
    for src, info in (tr.get("sources") or {}).items():
        lines.append(f"- **data {src}**: {info.get('train_items')} training images/slices from "
                     f"{', '.join(info.get('cases', [])[:6])}{' …' if len(info.get('cases', [])) > 6 else ''} — "
                     f"licence: {info.get('licence')}")
    if results and label:
        lines += _results_lines(results, label)
    lines += ["", "(`monitor`: fixed *training-split* episodes, for watching the run only.)", "",
              "Reproduce: `bash scripts/train_incontext.sh small`, then `unets`, `eval` and `bundle` "
              "(see the script for the stages and their wall times).", ""]
    return "\n".join(lines)


def bundle_model(src: str | Path, dst: str | Path, name: str, results: str | Path | None = None,
                 label: str | None = None, overwrite: bool = False) -> Path:
    """Copy the MVG at ``src`` to ``dst`` (fp32 weights: small enough) with a model card."""
    dst = Path(dst)
    if (dst / "config.json").exists() and not overwrite:
        raise MedITokError(f"{dst} already holds a model; pass --overwrite")
    model = MVG.from_pretrained(src)
    model.config.meta["name"] = name
    data = json.loads(Path(results).read_text()) if results else None
    (dst / CARD_NAME).unlink(missing_ok=True)
    model.save_pretrained(dst)
    if label is None and data:  # the table label the evaluation gave this model (its first model)
        label = next(iter(data.get("models") or {}), None)
    atomic_write_text(dst / CARD_NAME, model_card(model, name, data, label or name))
    return dst
