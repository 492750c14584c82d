"""Package a trained run as the bundled ``meditok-small`` checkpoint, with its provenance.

    python scripts/bundle_small.py runs/stage2_small/final meditok/weights/meditok-small \
        [--metrics runs/eval/stage2/metrics_summary.json]
    python scripts/bundle_small.py runs/stage1_small/final meditok/weights/meditok-small-s1 --stage1

Writes config.json (architecture + preprocessing contract + ``meta``: both stages' exact
commands, the deviations from the paper's recipe, and the measured metrics when given),
model.safetensors and a model card.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from meditok import MedITok

DEVIATIONS = (
    "Trained on 2 CPU cores in about 45 minutes on the offline corpus (7.9k images, "
    "`meditok data build-corpus`): LPIPS and the adversarial term were switched off "
    "(--loss.lpips 0 --loss.gan 0; they cost ~4.5x the step time on CPU), drop-path 0, "
    "stage-1 peak lr 1e-3, batch 16. Teachers are the offline substitutes: EfficientNet-Lite0 "
    "(stage 1, instead of BiomedCLIP's image tower) and all-MiniLM-L6-v2 (stage 2, instead of "
    "PubMedBERT). Captions are pseudo-captions built from dataset labels."
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_final", help="final/ directory of the stage-2 run")
    ap.add_argument("out", help="destination directory (replaced)")
    ap.add_argument("--metrics", help="JSON file of measured metrics to embed in the config")
    ap.add_argument("--stage1", action="store_true",
                    help="bundle a stage-1-only run (the MedITok-S1 comparison model)")
    args = ap.parse_args()
    model = MedITok.from_pretrained(args.run_final)
    meta = model.config.meta
    if args.stage1:
        stage1 = meta.pop("training", {})
        meta.clear()
        meta.update({
            "name": "meditok-small-s1",
            "trained": True,
            "recipe": "stage 1 only (vision alignment λ=0.1): the paper's MedITok-S1 comparison; "
                      "the exact parent of meditok-small's stage 2",
            "deviations": DEVIATIONS,
            "reproduce": "bash scripts/train_small.sh (its first training command)",
            "stage1_command": stage1.get("command"),
            "stage1_final_val": stage1.get("final_val"),
            "torch": stage1.get("torch"),
        })
        _write(model, args)
        return
    stage2 = meta.pop("training", {})
    stage1_cfg = Path(stage2.get("init_from", "")) / "config.json"
    stage1 = json.loads(stage1_cfg.read_text())["meta"].get("training", {}) if stage1_cfg.exists() else {}
    meta.clear()
    meta.update({
        "name": "meditok-small",
        "trained": True,
        "recipe": "two-stage MedITok (stage 1 vision alignment λ=0.1, stage 2 text alignment λ=1)",
        "deviations": DEVIATIONS,
        "reproduce": "bash scripts/train_small.sh",
        "stage1_command": stage1.get("command"),
        "stage1_final_val": stage1.get("final_val"),
        "stage2_command": stage2.get("command"),
        "stage2_final_val": stage2.get("final_val"),
        "torch": stage2.get("torch"),
    })
    _write(model, args)


def _write(model: MedITok, args: argparse.Namespace) -> None:
    if args.metrics:
        model.config.meta["metrics"] = json.loads(Path(args.metrics).read_text())
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    print(f"bundled {args.run_final} → {out}")


if __name__ == "__main__":
    main()
