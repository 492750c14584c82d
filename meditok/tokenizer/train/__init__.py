"""The tokenizer's two-stage trainer: typed config, objective, stage transfer, data and
in-training validation, on the shared engine (checkpoints, optimisers/schedules, DDP, logs).
Entry points: :func:`train` and ``meditok tokenizer train`` (alias ``meditok train``)."""
from __future__ import annotations

from meditok.engine.checkpoints import latest_checkpoint
from meditok.tokenizer.train.transfer import dropped_teacher_keys, split_stage_state
from meditok.tokenizer.train.config import TrainConfig, apply_overrides
from meditok.tokenizer.train.trainer import Trainer, TrainingDiverged, train

__all__ = ["TrainConfig", "apply_overrides", "Trainer", "TrainingDiverged", "train",
           "dropped_teacher_keys", "split_stage_state", "latest_checkpoint"]
