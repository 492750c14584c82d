"""Trainer checkpoints: atomic writes, keep-last-K, auto-resume, stage transfer.

A checkpoint (``ckpt-step00001234.pt``, ``torch.save``) holds everything needed to continue
bit-for-bit: the run config, the model, the teacher heads (and an unfrozen text teacher),
the discriminator, both optimisers and schedulers, every rank's RNG states and the data
position ``(epoch, batches consumed in that epoch)``. It is written to a temporary file and
renamed, so a crash (even SIGKILL) leaves the previous checkpoints intact.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meditok.errors import CheckpointError
from meditok.utils.io import atomic_path

FORMAT = "meditok-train-v1"
_NAME = re.compile(r"^ckpt-step(\d+)\.pt$")
#: State-dict prefixes of the teacher side (trainable heads + an unfrozen text encoder).
TEACHER_PREFIXES = ("heads.", "text_teacher.")


def checkpoint_name(step: int) -> str:
    return f"ckpt-step{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in ``directory`` sorted by step (oldest first)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def save_checkpoint(state: dict[str, Any], directory: str | Path, step: int, keep_last: int) -> Path:
    """Write ``state`` atomically as the step's checkpoint, then prune to ``keep_last``."""
    directory = Path(directory)
    path = directory / checkpoint_name(step)
    state = {"format": FORMAT, "step": step, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    if keep_last > 0:
        for old in list_checkpoints(directory)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        # Checkpoints hold numpy RNG state and python tuples, so full unpickling is needed;
        # they are files this trainer wrote, never downloaded ones.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read training checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a meditok training checkpoint")
    return state


# ---------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- stage transfer
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
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    return split_stage_state(ckpt, target_cfg).dropped


def load_init_state(path: str | Path, target_cfg: Any) -> InitState:
    """Read ``model.init_from``: a trainer checkpoint or a pretrained dir / weights file."""
    path = Path(path)
    if path.is_file() and path.suffix in (".pt", ".pth") and _is_trainer_ckpt(path):
        return split_stage_state(load_checkpoint(path), target_cfg)
    from meditok.model.hub import load_pretrained

    model = load_pretrained(path)
    return InitState(model.state_dict(), model_config=model.config.to_dict())


def _is_trainer_ckpt(path: Path) -> bool:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - anything unreadable is left to load_pretrained's error
        return False
    return isinstance(obj, dict) and obj.get("format") == FORMAT
