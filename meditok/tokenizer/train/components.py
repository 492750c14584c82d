"""Building the pieces of a run: the tokenizer, the frozen teachers with their trainable
heads (wrapped with the tokenizer in :class:`TrainModule`), the discriminator and LPIPS."""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
from torch import nn

from meditok.tokenizer.config import MedITokConfig, preset
from meditok.tokenizer.model import MedITok
from meditok.tokenizer.train.transfer import InitState, load_init_state
from meditok.tokenizer.train.config import TrainConfig


def build_model(cfg: TrainConfig) -> tuple[MedITok, InitState | None]:
    """The tokenizer from ``model.init_from`` (weights only) or a randomly initialised preset."""
    init = None
    if cfg.model.init_from:
        init = load_init_state(cfg.model.init_from, cfg)
        mcfg = (MedITokConfig.from_dict(init.model_config) if init.model_config
                else preset(cfg.model.preset))
        if cfg.model.overrides:
            mcfg.model = dataclasses.replace(mcfg.model, **cfg.model.overrides)
        if cfg.model.drop_path is not None:
            mcfg.model.drop_path = cfg.model.drop_path
        # The preprocessing contract follows the architecture: a model rebuilt at a new
        # image_size must be fed (and LPIPS / the discriminator built) at that size.
        mcfg.preprocess.image_size = mcfg.model.image_size
        mcfg.validate()
        mcfg.meta = {}
        model = MedITok(mcfg)
        missing, unexpected = model.load_state_dict(init.model, strict=False)
        if missing or unexpected:
            from meditok.errors import CheckpointError
            raise CheckpointError(f"{cfg.model.init_from}: weights do not fit the model "
                                  f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    else:
        overrides = dict(cfg.model.overrides)
        if cfg.model.drop_path is not None:
            overrides["drop_path"] = cfg.model.drop_path
        model = MedITok.from_preset(cfg.model.preset, **overrides)
    model.set_grad_checkpointing(cfg.model.grad_checkpointing)
    # Parameters the objective never touches would stall DDP's reducer and waste decay.
    if cfg.align.mode == "none":
        for p in (*model.fc_norm.parameters(), *model.projection.parameters(), model.logit_scale):
            p.requires_grad_(False)
    elif cfg.align.mode == "cosine":
        model.logit_scale.requires_grad_(False)
    return model, init


def build_teachers(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Frozen teachers by kind (``vision`` / ``text``) for this run's alignment terms."""
    from meditok.teachers import build_teacher

    teachers: dict[str, Any] = {}
    for kind in cfg.teacher_kinds():
        name = getattr(cfg.align, f"{kind}_teacher")
        path = getattr(cfg.align, f"{kind}_teacher_path")
        teacher = build_teacher(name, path, device=device)
        if teacher.kind != kind:
            raise ValueError(f"align.{kind}_teacher={name!r} is a {teacher.kind} teacher, "
                             f"but the {kind} alignment term needs a {kind} one")
        if kind == "vision" and cfg.align.vision_teacher_size and hasattr(teacher, "image_size"):
            teacher.image_size = int(cfg.align.vision_teacher_size)
        if kind == "text" and cfg.align.unfreeze_text:
            teacher.requires_grad_(True)
        teachers[kind] = teacher
    return teachers


def _encode_with_grad(teacher: nn.Module, batch: Any) -> torch.Tensor:
    # ``Teacher.encode`` is wrapped in no_grad for the frozen case; the unfreeze ablation
    # needs the same computation with gradient, i.e. the undecorated function.
    fn = inspect.unwrap(type(teacher).encode)
    return fn(teacher, batch)


class TrainModule(nn.Module):
    """Everything that receives generator gradients: tokenizer + teacher heads
    (+ the text encoder in the unfreeze ablation). This is what DDP wraps."""

    def __init__(self, model: MedITok, teachers: dict[str, Any], unfreeze_text: bool):
        super().__init__()
        from meditok.teachers import TeacherHead

        self.model = model
        embed_dim = model.config.model.embed_dim
        self.heads = nn.ModuleDict({k: TeacherHead(t.dim, embed_dim) for k, t in teachers.items()})
        self.text_teacher = teachers["text"] if unfreeze_text else None

    def forward(self, images: torch.Tensor, teacher_feats: dict[str, torch.Tensor],
                captions: list[str] | None = None):
        out = self.model(images)
        targets = {}
        for kind, head in self.heads.items():
            if kind == "text" and self.text_teacher is not None:
                feats = _encode_with_grad(self.text_teacher, captions)
            else:
                feats = teacher_feats[kind]
            targets[kind] = head(feats)
        return out, targets

    def teacher_state(self) -> dict[str, Any]:
        heads = {k: h.state_dict() for k, h in self.heads.items()}
        text = self.text_teacher.state_dict() if self.text_teacher is not None else None
        return {"heads": heads, "text_teacher": text}

    def load_teacher_side(self, flat: dict[str, torch.Tensor]) -> None:
        """Load ``heads.<kind>.*`` / ``text_teacher.*`` tensors (from a stage transfer)."""
        for kind, head in self.heads.items():
            sd = {k[len(f"heads.{kind}."):]: v for k, v in flat.items() if k.startswith(f"heads.{kind}.")}
            if sd:
                head.load_state_dict(sd)
        if self.text_teacher is not None:
            sd = {k[len("text_teacher."):]: v for k, v in flat.items() if k.startswith("text_teacher.")}
            if sd:
                self.text_teacher.load_state_dict(sd)


def build_discriminator(cfg: TrainConfig, image_size: int) -> nn.Module | None:
    if cfg.loss.gan <= 0:
        return None
    from meditok.losses import build_discriminator as build

    return build(cfg.disc.name, cfg.disc.weights, image_size=image_size, **cfg.disc.options)


def build_lpips(cfg: TrainConfig, image_size: int) -> nn.Module | None:
    """LPIPS-VGG16 when its weight is positive and images are large enough (spec: H ≥ 48)."""
    if cfg.loss.lpips <= 0 or image_size < cfg.loss.lpips_min_size:
        return None
    from meditok.losses import LPIPS

    return LPIPS(cfg.loss.lpips_weights, precision=cfg.loss.lpips_precision)
