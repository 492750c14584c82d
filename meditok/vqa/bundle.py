"""Copy a trained, evaluated adapter into the package (``meditok/weights/<name>/``).

The adapter folder written by ``meditok vqa train`` is re-saved under its bundled name, with the
evaluation record (``meditok vqa eval``'s ``<label>.json``) and the reproduce command in its
config's ``meta`` and a regenerated model card, so ``from_pretrained("<name>")`` and
``meditok vqa ask`` find it by name.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from meditok.utils.hub import (
    BUNDLED_DIR,
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    read_config_dict,
)
from meditok.utils.io import atomic_path, atomic_write_text
from meditok.vqa.card import model_card
from meditok.vqa.config import VQAModelConfig
from meditok.vqa.model import VQAModel


def bundle_adapter(src: str | Path, name: str, evaluation: str | Path | None = None,
                   reproduce: str = "bash scripts/train_vqa.sh", dst: str | Path | None = None,
                   notes: str = "") -> Path:
    """Write ``src`` (an adapter folder) to ``dst`` (default ``meditok/weights/<name>``)."""
    src = Path(src)
    out = Path(dst) if dst else BUNDLED_DIR / name
    data = read_config_dict(src, VQAModel.model_type)
    cfg = VQAModelConfig.from_dict(data)
    cfg.meta = dict(cfg.meta, name=name, reproduce=reproduce)
    if notes:
        cfg.meta["notes"] = notes
    if evaluation:
        rec: dict[str, Any] = json.loads(Path(evaluation).read_text())
        s = rec["scores"]
        cfg.meta["evaluation"] = {
            "split": f"VQA-RAD {rec.get('split')} ({rec.get('questions')} questions)",
            "closed_accuracy": s["closed"]["closed_accuracy"], "open_recall": s["open"]["open_recall"],
            "open_accuracy": s["open"]["open_accuracy"], "eval_wall_s": rec.get("eval_wall_s"),
            "eval_load": [rec.get("eval_load_start"), rec.get("eval_load_end")]}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        shutil.copyfile(src / WEIGHTS_NAME, tmp)
    atomic_write_text(out / CONFIG_NAME, json.dumps({"model_type": VQAModel.model_type, **cfg.to_dict()}, indent=2))
    atomic_write_text(out / CARD_NAME, model_card(cfg))
    return out
