"""Early stopping on a held-out validation split (``data.train_split: train-val``).

VQA-RAD ships no validation split; choosing the epoch count on ``test`` would tune on it. With
``train-val`` the run trains without :func:`meditok.data.vqa_rad.validation_split`'s questions,
answers them every ``loop.eval_every`` steps, keeps an adapter snapshot per evaluation in
``{output_dir}/val/``, and at the end writes ``{output_dir}/best``: the snapshot with the highest
validation closed accuracy (the earliest on ties), decided before any test question is answered.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from meditok.data.vqa_rad import VAL_FRACTION, VAL_SEED, VQAItem
from meditok.errors import InvalidInputError
from meditok.metrics.text import vqa_scores
from meditok.utils.hub import WEIGHTS_NAME, read_state
from meditok.utils.io import atomic_write_text
from meditok.vqa.bench import _item_dict, predict

CURVE_NAME = "curve.json"
RULE = "highest validation closed accuracy; the earliest evaluation on ties"


def read_curve(run: str | Path) -> dict[int, dict[str, Any]]:
    """The validation curve ``{step: point}`` of a run folder (empty before any evaluation)."""
    path = Path(run) / "val" / CURVE_NAME
    if not path.is_file():
        return {}
    return {int(k): v for k, v in json.loads(path.read_text())["points"].items()}


def best_point(curve: dict[int, dict[str, Any]]) -> tuple[int, dict[str, Any]] | None:
    """The evaluation ``(step, point)`` of ``curve`` that :data:`RULE` selects, ``None`` if empty."""
    if not curve:
        return None
    step = max(sorted(curve), key=lambda k: curve[k]["closed_accuracy"] or 0.0)  # max keeps the first
    return step, curve[step]


def choose_run(runs: Sequence[str | Path]) -> tuple[Path, float]:
    """Among finished train-val runs (different towers or tokenizers, one recipe), the one whose
    selected evaluation has the highest validation closed accuracy — the first listed on ties —
    and that accuracy. Test answers play no part; it is how the shipped adapter is chosen."""
    scored = []
    for run in map(Path, runs):
        chosen = best_point(read_curve(run))
        if chosen is None or not (run / "best").is_dir():
            raise InvalidInputError(f"{run}: no validation curve and best/ adapter (not a finished "
                                    "data.train_split: train-val run)")
        scored.append((run, chosen[1]["closed_accuracy"] or 0.0))
    if not scored:
        raise InvalidInputError("choose_run: no runs given")
    return max(scored, key=lambda rs: rs[1])  # max keeps the first of equals


class ValidationTracker:
    """The ``evaluate`` hook of :class:`meditok.engine.loop.Loop`: answers the validation split,
    stores the adapter as ``val/step_NNNNNN`` and the curve in ``val/curve.json`` (kept across
    resumed sessions, keyed by step)."""

    def __init__(self, items: list[VQAItem], out_dir: str | Path, batch_size: int = 16):
        if not items:
            raise InvalidInputError("the validation split is empty (too few training questions about "
                                    "test images): train on data.train_split train instead")
        self.items = items
        self.dir = Path(out_dir) / "val"
        self.batch_size = batch_size

    def curve(self) -> dict[int, dict[str, Any]]:
        return read_curve(self.dir.parent)

    def __call__(self, model, step: int) -> dict[str, Any]:
        preds = predict(model, self.items, self.batch_size, progress=False)
        s = vqa_scores([_item_dict(it) for it in self.items], preds)
        point = {"closed_accuracy": s["closed"]["closed_accuracy"], "open_recall": s["open"]["open_recall"],
                 "open_accuracy": s["open"]["open_accuracy"], "snapshot": f"step_{step:06d}"}
        model.save_pretrained(self.dir / point["snapshot"])
        curve = self.curve()
        curve[step] = point
        atomic_write_text(self.dir / CURVE_NAME, json.dumps(
            {"split": "val", "fraction": VAL_FRACTION, "seed": VAL_SEED, "questions": len(self.items),
             "points": {str(k): curve[k] for k in sorted(curve)}}, indent=2) + "\n")
        return {f"val_{k}": v for k, v in point.items() if k != "snapshot"}

    def write_best(self, model, destination: str | Path, per_epoch: float) -> dict[str, Any] | None:
        """Save the selected snapshot's weights as ``destination`` with ``model``'s config, its
        ``meta.training`` re-stated for the selected step plus the whole curve. Call after the
        final adapter is saved: the model's weights are replaced by the snapshot's."""
        curve = self.curve()
        chosen = best_point(curve)
        if chosen is None:
            return None
        step, point = chosen
        model.load_state_dict(read_state(self.dir / point["snapshot"] / WEIGHTS_NAME))
        selection = {"rule": RULE, "selected_step": step, "selected_epochs": round(step / per_epoch, 2),
                     "val_questions": len(self.items), "val_fraction": VAL_FRACTION, "val_seed": VAL_SEED,
                     "curve": [{"step": k, "epochs": round(k / per_epoch, 2),
                                **{m: v for m, v in curve[k].items() if m != "snapshot"}} for k in sorted(curve)]}
        meta = dict(model.config.meta)
        training = dict(meta.get("training", {}))
        training.update({"trained_steps": training.get("steps"), "steps": step,
                         "epochs": round(step / per_epoch, 2), "selection": selection})
        meta["training"] = training
        model.config.meta = meta
        model.save_pretrained(destination)
        return selection
