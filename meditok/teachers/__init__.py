"""Frozen vision / text teachers behind one interface (:class:`Teacher`), the trainable
:class:`TeacherHead`, and :func:`build_teacher`.

Names: ``efficientnet-lite0`` (offline default vision teacher), ``biomedclip`` (local
open_clip directory), ``minilm`` (offline default text teacher), ``mpnet``, ``pubmedbert`` /
``hf-bert:<dir>`` (CLS pooling, BiomedCLIP's text tower), ``hf-mean:<dir>`` (mean pooling).
"""
from __future__ import annotations

from pathlib import Path

import torch

from meditok.errors import CheckpointError
from meditok.teachers.base import Teacher, TeacherHead

__all__ = ["Teacher", "TeacherHead", "build_teacher", "TEACHER_NAMES"]

TEACHER_NAMES = ("efficientnet-lite0", "biomedclip", "minilm", "mpnet", "pubmedbert",
                 "hf-bert:<dir>", "hf-mean:<dir>")


def build_teacher(name: str, path: str | Path | None = None,
                  device: str | torch.device = "cpu") -> Teacher:
    """Build a frozen teacher by name and move it to ``device``.

    ``path`` overrides the weights location (a file for EfficientNet, a directory otherwise);
    ``biomedclip`` and ``pubmedbert`` require it because they are not available offline.
    """
    key = name.strip().lower()
    teacher: Teacher
    if key in ("efficientnet-lite0", "efficientnet_lite0", "efficientnet"):
        from meditok.teachers.vision import EfficientNetTeacher
        teacher = EfficientNetTeacher(path)
    elif key == "biomedclip":
        from meditok.teachers.vision import load_biomedclip_vision
        teacher = load_biomedclip_vision(_need(path, name, "an open_clip BiomedCLIP directory"))
    elif key == "minilm":
        from meditok.teachers.text import HFTextTeacher, minilm_dir
        teacher = HFTextTeacher(path or minilm_dir(), pooling="mean", max_length=256)
    elif key == "mpnet":
        from meditok.teachers.text import HFTextTeacher, mpnet_dir
        teacher = HFTextTeacher(path or mpnet_dir(), pooling="mean", max_length=384)
    elif key in ("pubmedbert", "hf-bert") or key.startswith("hf-bert:"):
        from meditok.teachers.text import HFTextTeacher
        where = name.split(":", 1)[1] if ":" in name else path
        # BiomedCLIP's text tower pools the CLS token of the last layer; context length 256.
        teacher = HFTextTeacher(_need(where, name, "a Hugging Face BERT directory"),
                                pooling="cls", max_length=256)
    elif key.startswith("hf-mean:"):
        from meditok.teachers.text import HFTextTeacher
        teacher = HFTextTeacher(name.split(":", 1)[1], pooling="mean", max_length=256)
    else:
        raise ValueError(f"unknown teacher {name!r}; choose one of {', '.join(TEACHER_NAMES)}")
    return teacher.to(device)


def _need(path: str | Path | None, name: str, what: str) -> str | Path:
    if not path:
        raise CheckpointError(
            f"teacher {name!r} needs path= pointing to {what}; it is not available offline "
            f"and nothing is downloaded at run time")
    return path
