"""Typed training configuration (YAML on disk, dotted command-line overrides).

One :class:`TrainConfig` describes a whole run: which model to build or resume, the stage
and alignment objective, the loss weights, both optimisers and their schedules, the data and
the bookkeeping (checkpoints, validation, logging). Defaults follow the reference recipe
(paper App. C.1, spec §2.2–2.4); every field is overridable with ``--section.field value``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meditok.utils.config import Config, apply_overrides

__all__ = ["TrainConfig", "apply_overrides", "ALIGN_MODES"]

ALIGN_MODES = ("contrastive", "cosine", "none")


@dataclass
class ModelSection:
    #: Preset to build from scratch (``tiny`` / ``small`` / ``large``), ignored with ``init_from``.
    preset: str = "small"
    #: ``ModelConfig`` field overrides applied to the preset (e.g. ``{image_size: 128}``).
    overrides: dict[str, Any] = field(default_factory=dict)
    #: Pretrained directory / ``.safetensors`` file, or a trainer checkpoint (``.pt``) of an
    #: earlier stage; weights only (optimiser state is not carried across stages).
    init_from: str | None = None
    #: Stochastic depth in the transformer blocks (``None``: keep the preset's value).
    drop_path: float | None = None
    grad_checkpointing: bool = False


@dataclass
class AlignSection:
    #: ``contrastive`` (symmetric InfoNCE, the paper), ``cosine`` (ablation) or ``none``.
    mode: str = "contrastive"
    #: λ of the alignment term; ``None`` → 0.1 in stage 1, 1.0 in stage 2.
    weight: float | None = None
    #: Eq. S4: one stage with both the vision and the text alignment terms.
    combined: bool = False
    #: λ_text of the combined objective (λ_vision is ``weight``).
    text_weight: float = 1.0
    vision_teacher: str = "efficientnet-lite0"
    vision_teacher_path: str | None = None
    #: Resize of the teacher input (``None``: the teacher's own default, 224 for Lite0).
    vision_teacher_size: int | None = None
    text_teacher: str = "minilm"
    text_teacher_path: str | None = None
    #: Ablation (Table S1 row xi): train the text encoder too instead of freezing it.
    unfreeze_text: bool = False


@dataclass
class LossSection:
    l1: float = 0.2
    l2: float = 1.0
    lpips: float = 1.0
    #: LPIPS is used only when the image side is at least this many pixels (reference: 48).
    lpips_min_size: int = 48
    lpips_weights: str | None = None
    #: VGG trunk of LPIPS in ``fp32``, ``bf16`` or ``auto`` (bf16 where native: CUDA, CPUs with
    #: AVX-512 BF16 / AMX). bf16 stays within 1 % of the fp32 value on the LPIPS reference images.
    lpips_precision: str = "auto"
    vq: float = 1.0
    #: Base of the VQGAN adaptive GAN weight (0 disables the GAN branch entirely).
    gan: float = 0.4
    gan_clamp: tuple[float, float] = (0.015, 1e4)
    #: Step at which the discriminator and the GAN term start.
    disc_start: int = 0
    #: Linear warm-up of the GAN term after ``disc_start`` (steps).
    disc_warmup: int = 100
    #: Balanced consistency regularisation weight for D (reference 4.0; 0 turns it off).
    bcr: float = 4.0


@dataclass
class DiscSection:
    #: ``patchgan`` (no weights), ``efficientnet_lite0`` (offline) or ``dinov2_vits14`` (local file).
    name: str = "patchgan"
    weights: str | None = None
    #: Extra keyword arguments of the discriminator class (e.g. ``{base: 32}`` for PatchGAN).
    options: dict[str, Any] = field(default_factory=dict)
    lr: float = 2e-5
    betas: tuple[float, float] = (0.5, 0.9)
    eps: float = 1e-6
    weight_decay: float = 0.2
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    grad_clip: float = 10.0
    #: DiffAug (translation, colour, cutout, warm-up blur) on every discriminator input.
    diffaug: bool = True


@dataclass
class OptimSection:
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-6
    weight_decay: float = 0.02
    warmup_steps: int = 10
    #: Cosine decay ends at ``min_lr_ratio * lr`` at the last step.
    min_lr_ratio: float = 0.1
    grad_clip: float = 10.0
    grad_accum: int = 1


@dataclass
class DataSection:
    #: Corpus manifest (CSV / Parquet) written by ``meditok data build-corpus``.
    manifest: str | None = None
    #: Folder the manifest identifiers are relative to (default: the manifest's folder).
    root: str | None = None
    #: WebDataset shard folder (alternative to ``manifest``; resumes at epoch granularity).
    shards: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    #: Images per process per micro-batch.
    batch_size: int = 16
    num_workers: int = 2
    #: Validation images (taken in manifest order from ``val_split``).
    val_images: int = 64
    val_batch_size: int = 16
    #: Random training augmentation (crop/flip/rotate/grey, CT window).
    augment: bool = True


@dataclass
class TrainConfig(Config):
    """A complete training run."""

    stage: int = 1
    model: ModelSection = field(default_factory=ModelSection)
    align: AlignSection = field(default_factory=AlignSection)
    loss: LossSection = field(default_factory=LossSection)
    disc: DiscSection = field(default_factory=DiscSection)
    optim: OptimSection = field(default_factory=OptimSection)
    data: DataSection = field(default_factory=DataSection)
    steps: int = 1000
    ckpt_every: int = 200
    keep_last: int = 3
    val_every: int = 500
    log_every: int = 10
    seed: int = 0
    #: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
    device: str = "auto"
    #: ``fp32`` or ``bf16`` (autocast; used only on GPU unless ``bf16_on_cpu``).
    precision: str = "bf16"
    bf16_on_cpu: bool = False
    #: Deterministic kernels / algorithms (exact resume on CPU; slower on GPU).
    deterministic: bool = False
    output_dir: str = "runs/meditok"
    tensorboard: bool = True
    progress: bool = True
    #: Resume automatically from the newest checkpoint in ``output_dir``.
    auto_resume: bool = True

    # ------------------------------------------------------------------ derived values
    @property
    def align_weight(self) -> float:
        """λ of the (vision or text) alignment term for this stage."""
        if self.align.weight is not None:
            return float(self.align.weight)
        return 0.1 if self.stage == 1 else 1.0

    def teacher_kinds(self) -> list[str]:
        """Teachers this run needs: ``vision`` (stage 1), ``text`` (stage 2), both if combined."""
        if self.align.mode == "none":
            return []
        if self.align.combined:
            return ["vision", "text"]
        return ["vision"] if self.stage == 1 else ["text"]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field."""
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.align.mode not in ALIGN_MODES:
            raise ValueError(f"align.mode must be one of {ALIGN_MODES}, got {self.align.mode!r}")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        for name in ("steps", "ckpt_every", "val_every", "log_every", "keep_last"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.optim.grad_accum < 1 or self.data.batch_size < 1:
            raise ValueError("optim.grad_accum and data.batch_size must be >= 1")
        if self.align.unfreeze_text and "text" not in self.teacher_kinds():
            raise ValueError("align.unfreeze_text needs a text teacher (stage 2 or align.combined)")
