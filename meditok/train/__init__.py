"""Training: typed config, the two-stage trainer, optimisers/schedules, checkpoints, DDP,
logging and in-training validation. Entry points: :func:`train` and ``meditok train``."""
from __future__ import annotations

from meditok.train.checkpoint import dropped_teacher_keys, latest_checkpoint, split_stage_state
from meditok.train.config import TrainConfig, apply_overrides
from meditok.train.trainer import Trainer, TrainingDiverged, train

__all__ = ["TrainConfig", "apply_overrides", "Trainer", "TrainingDiverged", "train",
           "dropped_teacher_keys", "split_stage_state", "latest_checkpoint"]
