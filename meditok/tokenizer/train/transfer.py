"""Stage transfer (``model.init_from``): start a run from an earlier stage's weights.

A trainer checkpoint of stage 1 carries the tokenizer and the teacher-side heads; a stage-2 run
keeps the tokenizer and only the heads whose teacher is unchanged (the reference's stage-2
``ignore_text_params``). A pretrained directory / safetensors file gives the tokenizer alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from meditok.engine.checkpoints import is_checkpoint, load_checkpoint

#: Format tag of this trainer's checkpoints.
FORMAT = "meditok-train-v1"
#: State-dict prefixes of the teacher side (trainable heads + an unfrozen text encoder).
TEACHER_PREFIXES = ("heads.", "text_teacher.")


@dataclass
class InitState:
    """Weights to start a run from (``init_from``): model, kept teacher-side tensors, and the
    checkpoint keys deliberately left out."""

    model: dict[str, torch.Tensor]
    teacher_side: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    model_config: dict[str, Any] | None = None
    source_stage: int | None = None


def flat_trainable_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A trainer checkpoint as one flat ``prefix.key → tensor`` dict (model, heads, text teacher)."""
    flat = {f"model.{k}": v for k, v in ckpt["model"].items()}
    for kind, sd in (ckpt.get("heads") or {}).items():
        flat.update({f"heads.{kind}.{k}": v for k, v in sd.items()})
    flat.update({f"text_teacher.{k}": v for k, v in (ckpt.get("text_teacher") or {}).items()})
    return flat


def teacher_heads_to_keep(ckpt: dict[str, Any], target_cfg: Any) -> set[str]:
    """Head kinds whose teacher is the same in the checkpoint and the new run.

    Changing the teacher (stage 1 vision → stage 2 text, or another encoder) makes the old
    head meaningless, so only heads of an identical teacher are carried over.
    """
    src = ckpt.get("config") or {}
    src_align = src.get("align", {})
    keep = set()
    for kind in target_cfg.teacher_kinds():
        name_key, path_key = f"{kind}_teacher", f"{kind}_teacher_path"
        same = (src_align.get(name_key) == getattr(target_cfg.align, name_key)
                and src_align.get(path_key) == getattr(target_cfg.align, path_key))
        if same and kind in (ckpt.get("heads") or {}):
            keep.add(kind)
    return keep


def split_stage_state(ckpt: dict[str, Any], target_cfg: Any) -> InitState:
    """Model weights + the teacher-side weights still valid for ``target_cfg``.

    Everything under :data:`TEACHER_PREFIXES` whose teacher changes is dropped (the
    reference's stage-2 ``ignore_text_params``); the list of dropped keys is returned so
    callers (and tests) can check exactly what was left out.
    """
    flat = flat_trainable_state(ckpt)
    keep_kinds = teacher_heads_to_keep(ckpt, target_cfg)
    keep_text_teacher = "text" in keep_kinds and target_cfg.align.unfreeze_text
    model, side, dropped = {}, {}, []
    for key, value in flat.items():
        if key.startswith("model."):
            model[key[len("model."):]] = value
        elif key.startswith("heads.") and key.split(".")[1] in keep_kinds:
            side[key] = value
        elif key.startswith("text_teacher.") and keep_text_teacher:
            side[key] = value
        else:
            dropped.append(key)
    src = ckpt.get("config") or {}
    return InitState(model, side, sorted(dropped), ckpt.get("model_config"), src.get("stage"))


def dropped_teacher_keys(path_or_ckpt: str | Path | dict[str, Any], target_cfg: Any) -> list[str]:
    """Checkpoint keys a run with ``target_cfg`` drops when it starts from this checkpoint."""
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt, FORMAT)
    return split_stage_state(ckpt, target_cfg).dropped


def load_init_state(path: str | Path, target_cfg: Any) -> InitState:
    """Read ``model.init_from``: a trainer checkpoint or a pretrained dir / weights file."""
    path = Path(path)
    if path.is_file() and path.suffix in (".pt", ".pth") and is_checkpoint(path, FORMAT):
        return split_stage_state(load_checkpoint(path, FORMAT), target_cfg)
    from meditok.tokenizer.model import MedITok

    model = MedITok.from_pretrained(path)
    return InitState(model.state_dict(), model_config=model.config.to_dict())
