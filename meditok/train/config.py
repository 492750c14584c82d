"""Typed training configuration (YAML on disk, dotted command-line overrides).

One :class:`TrainConfig` describes a whole run: which model to build or resume, the stage
and alignment objective, the loss weights, both optimisers and their schedules, the data and
the bookkeeping (checkpoints, validation, logging). Defaults follow the reference recipe
(paper App. C.1, spec §2.2–2.4); every field is overridable with ``--section.field value``.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

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
class TrainConfig:
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
            raise ValueError(f"device must be cpu, cuda or auto, got {self.device!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        for name in ("steps", "ckpt_every", "val_every", "log_every", "keep_last"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.optim.grad_accum < 1 or self.data.batch_size < 1:
            raise ValueError("optim.grad_accum and data.batch_size must be >= 1")
        if self.align.unfreeze_text and "text" not in self.teacher_kinds():
            raise ValueError("align.unfreeze_text needs a text teacher (stage 2 or align.combined)")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        cfg = _from_dict(cls, data or {}, "")
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> "TrainConfig":
        """Read a YAML file and apply overrides (``["--optim.lr", "1e-4", ...]`` or a dict)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read training config ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: training config must be a mapping")
        cfg = cls.from_dict(data)
        if overrides:
            cfg = apply_overrides(cfg, overrides)
        return cfg

    def save(self, path: str | Path) -> None:
        from meditok.utils.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _from_dict(kind: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config section {where or 'root'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(kind)
    known = {f.name for f in fields(kind)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown training config keys in {where or 'root'!r}: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value or {}, f"{where}{name}")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}{name}")
    return kind(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert YAML / command-line values to the annotated field type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        return None
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null", "~"):
            return None
        return _coerce(value, inner[0], name)
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        return tuple(_coerce(v, args[0], name) for v in value)
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot read {value!r} as {hint.__name__}") from exc
    return value


def apply_overrides(cfg: TrainConfig, overrides: list[str] | dict[str, Any]) -> TrainConfig:
    """Return a copy of ``cfg`` with dotted overrides applied and validated.

    ``overrides`` is a dict ``{"optim.lr": 1e-4}`` or an argv-style list
    ``["--optim.lr", "1e-4", "--data.manifest=corpus/manifest.csv"]``; a ``model.overrides.X``
    key sets one architecture field.
    """
    pairs = _parse_pairs(overrides) if isinstance(overrides, list) else dict(overrides)
    data = cfg.to_dict()
    for key, value in pairs.items():
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"unknown training config key {key!r} (no section {'.'.join(parts[:i + 1])!r})")
            node = node[part]
        leaf = parts[-1]
        free_form = parts[:-1] == ["model", "overrides"]
        if not isinstance(node, dict) or (leaf not in node and not free_form):
            raise ValueError(f"unknown training config key {key!r}")
        if free_form and isinstance(value, str):
            value = yaml.safe_load(value)
        node[leaf] = value
    return TrainConfig.from_dict(data)


def _parse_pairs(argv: list[str]) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise ValueError(f"expected --section.key, got {tok!r}")
        tok = tok[2:]
        if "=" in tok:
            key, value = tok.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ValueError(f"missing value for --{tok}")
            key, value = tok, argv[i + 1]
            i += 2
        pairs[key.replace("-", "_")] = value
    return pairs
