"""Ship a trained generator: fp16 weights, its config (conditions, tokenizer, provenance) and a
model card with the measured numbers (``meditok synth bundle SRC DST``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from meditok.errors import MedITokError
from meditok.gpt import GPT
from meditok.utils.hub import CARD_NAME
from meditok.utils.io import atomic_write_text


def model_card(gpt: GPT, name: str, metrics: dict[str, Any] | None = None, label: str | None = None) -> str:
    cfg, meta = gpt.config, gpt.config.meta or {}
    tr, tok = meta.get("training") or {}, meta.get("tokenizer") or {}
    lines = ["---", "library_name: meditok", "tags: [medical-imaging, image-generation, autoregressive]", "---", "",
             f"# {name}", "",
             f"Modality-conditioned LlamaGen-style GPT over MedITok tokens (paper §4.4): {cfg.depth} layers, "
             f"{cfg.heads} heads, width {cfg.dim}, factorised head over {cfg.num_codebooks} sub-codes of "
             f"{cfg.codebook_size} per position, {cfg.grid[0]}x{cfg.grid[1]} positions, "
             f"{gpt.num_parameters() / 1e6:.1f} M parameters (stored as fp16).", "",
             f"Needs the tokenizer **{tok.get('spec')}** (config {tok.get('tokenizer_id')}, weights "
             f"{tok.get('weights')}); it is loaded automatically and any other tokenizer is refused.", "",
             "```python", "from meditok.synthesis import Synthesizer",
             f"synth = Synthesizer.load('{name}')",
             f"images = synth.sample('ultrasound', 16, seed=1)   # [16, 3, {tok.get('image_size')}, "
             f"{tok.get('image_size')}] in [-1, 1]", "```", "",
             "```bash", "meditok synth sample --condition ultrasound --n 64 --seed 1 --out samples/", "```", "",
             f"- **conditions**: {', '.join(meta.get('conditions', []))}"]
    for k, v in (meta.get("excluded_conditions") or {}).items():
        lines.append(f"- **not modelled**: {k} — {v}")
    lines.append(f"- **default sampling**: {meta.get('sampling')}")
    for key in ("manifest", "split", "train_images", "draw_shares_epoch0", "steps", "batch_size", "lr",
                "final_train_loss", "final_val_loss", "command", "wall_time_s", "sessions", "wall_time_this_session_s",
                "machine", "device"):
        if key in tr:
            lines.append(f"- **{key}**: {tr[key]}")
    if metrics:
        summary = metrics["summary"][label] if label else None
        floor = metrics["summary"].get("real-vs-real floor")
        if summary:
            lines += ["", "## Measured (`meditok synth eval`, see benchmarks/results/synthesis/)", "",
                      f"Sampling {metrics.get('sampling')}, N generated = N real per condition (table), "
                      f"manifest {metrics.get('manifest')}.", "",
                      f"- gFID Avg. over modalities {summary['gfid_avg']:.2f} (real-vs-real floor "
                      f"{floor['gfid_avg']:.2f} at the same N), pooled {summary['gfid_all']:.2f} "
                      f"(floor {floor['gfid_all']:.2f})",
                      f"- diversity {summary['diversity_avg']:.4f} (real {floor['diversity_avg']:.4f}); "
                      f"{metrics['msssim']['text']}",
                      f"- conditional accuracy {summary['cond_acc_avg']:.3f} averaged over modalities, with the "
                      "classifier trained on the tokenizer's round trip of the real reference images (its "
                      f"accuracy on the real floor set after the same round trip, the ceiling: "
                      f"{_fmt(summary.get('cond_acc_ceiling_avg'))}); with the classifier trained on the original "
                      f"images {_fmt(summary.get('cond_acc_raw_avg'))} (on real images: {_fmt(floor['cond_acc_avg'])})"]
            per = metrics["table"][label]
            lines += ["", "| condition | N | gFID | floor | diversity | cond. acc. | ceiling | original-image classifier |",
                      "|---|---|---|---|---|---|---|---|"]
            for c in metrics["conditions"]:
                r, f = per[c], metrics["table"]["real-vs-real floor"][c]
                lines.append(f"| {c} | {r['n']} | {r['gfid']:.1f} | {f['gfid']:.1f} | {r['diversity']:.3f} | "
                             f"{_fmt(r['cond_acc'])} | {_fmt(r.get('cond_acc_ceiling'))} | {_fmt(r.get('cond_acc_raw'))} |")
    lines += ["", "Reproduce: `bash scripts/train_synthesis.sh`.", ""]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def bundle_generator(src: str | Path, dst: str | Path, name: str, metrics: str | Path | None = None,
                     label: str | None = None, overwrite: bool = False,
                     sampling: dict[str, Any] | None = None) -> Path:
    """Copy generator ``src`` to ``dst`` with fp16 weights and a model card; ``sampling``
    replaces recorded default sampling settings (temperature, top_k, top_p, cfg_scale)."""
    from meditok.synthesis.config import SampleConfig

    dst = Path(dst)
    if (dst / "config.json").exists() and not overwrite:
        raise MedITokError(f"{dst} already holds a model; pass --overwrite")
    gpt = GPT.from_pretrained(src)
    gpt.config.meta["name"] = name
    if sampling:
        merged = {**(gpt.config.meta.get("sampling") or {}), **{k: v for k, v in sampling.items() if v is not None}}
        gpt.config.meta["sampling"] = SampleConfig.from_dict(merged).to_dict()
    data = json.loads(Path(metrics).read_text()) if metrics else None
    (dst / CARD_NAME).unlink(missing_ok=True)  # save_pretrained keeps an existing card
    gpt.save_pretrained(dst, dtype=torch.float16)
    atomic_write_text(dst / CARD_NAME, model_card(gpt, name, data, label))
    return dst
