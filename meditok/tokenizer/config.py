"""One typed configuration for a MedITok checkpoint: architecture + preprocessing contract.

The whole :class:`MedITokConfig` is written next to the weights (``config.json`` in a
pretrained directory, YAML for humans) so that a checkpoint always rebuilds its model
and tells callers how images must be prepared (value range, size, channels, CT window).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meditok.data.preprocess import PreprocessConfig
from meditok.errors import CheckpointError
from meditok.utils.config import Config, from_dict


#: Hard bounds of every architecture size (inclusive); the released ``large`` model sits well
#: inside them (width 1024, depth 31, 8 x 4096 codes, 256 px).
BOUNDS: dict[str, tuple[float, float]] = {
    "image_size": (8, 8192), "in_channels": (1, 4), "stem_width": (1, 4096),
    "stage_widths": (1, 4096), "stage_depths": (0, 64), "stage_strides": (1, 2),
    "mbconv_expand": (1, 16), "width": (8, 8192), "encoder_depth": (0, 256),
    "decoder_depth": (0, 256), "num_heads": (1, 256), "mlp_ratio": (0.25, 16.0),
    "drop_path": (0.0, 1.0), "proj_heads": (1, 256), "num_codebooks": (1, 64),
    "codebook_size": (2, 1 << 20), "vocab_width": (1, 8192), "vq_beta": (0.0, 100.0),
    "embed_dim": (1, 16384), "logit_scale_init": (-100.0, 100.0),
}
#: Largest architecture (estimated parameters) a config may describe: 8 B (32 GB in fp32).
MAX_PARAMETERS = 8_000_000_000


@dataclass
class ModelConfig(Config):
    """Architecture hyper-parameters; the defaults are the released ``large`` model."""

    image_size: int = 256
    in_channels: int = 3
    # Conv front end (ViTamin hybrid stem): stem width, MbConv stage widths/depths/strides.
    stem_width: int = 160
    stage_widths: tuple[int, ...] = (160, 320)
    stage_depths: tuple[int, ...] = (2, 4)
    stage_strides: tuple[int, ...] = (2, 2)
    mbconv_expand: int = 4
    # Transformer trunk (encoder and decoder have their own depths).
    width: int = 1024
    encoder_depth: int = 31
    decoder_depth: int = 31
    num_heads: int = 16
    mlp_ratio: float = 2.0
    drop_path: float = 0.0
    # Bottleneck: attention projections + multi-codebook cosine quantiser.
    proj_heads: int = 16
    num_codebooks: int = 8
    codebook_size: int = 4096
    vocab_width: int = 64
    vq_beta: float = 0.25
    # Alignment head.
    embed_dim: int = 768
    logit_scale_init: float = 2.659260036932778  # ln(1 / 0.07)

    @property
    def downsample(self) -> int:
        """Total spatial reduction: stem (2) x stage strides x strided-conv pool (2)."""
        factor = 4
        for s in self.stage_strides:
            factor *= s
        return factor

    @property
    def code_dim(self) -> int:
        """Width of one sub-codebook's vectors (vocab_width / num_codebooks)."""
        return self.vocab_width // self.num_codebooks

    def grid_size(self, image_size: int | None = None) -> int:
        """Token grid side for a square input of ``image_size`` pixels."""
        return (image_size or self.image_size) // self.downsample

    def estimated_parameters(self) -> int:
        """Parameter count from the hyper-parameters alone, without building anything (a
        rough estimate, within a few percent for the presets: transformer blocks, conv stages,
        codebooks, projections) — used to refuse absurd configs before any allocation."""
        w = self.width
        hidden = int(w * self.mlp_ratio)
        block = 4 * w * w + 3 * w * hidden + 8 * w  # attention + gated MLP + norms
        stages = 0
        prev = self.stem_width
        for width, depth in zip(self.stage_widths, self.stage_depths):
            mid = width * self.mbconv_expand
            stages += depth * (prev * mid + 9 * mid + mid * width + 4 * (mid + width)) + prev * width
            prev = width
        conv = 2 * (9 * self.in_channels * self.stem_width + 9 * self.stem_width ** 2 + stages
                    + 9 * prev * w)
        codebooks = self.codebook_size * self.vocab_width
        projections = 8 * w * max(w, self.vocab_width)
        return int((self.encoder_depth + self.decoder_depth) * block + conv + codebooks
                   + projections + w * self.embed_dim)

    def validate(self) -> None:
        """Raise ``ValueError`` on inconsistent or unbounded settings (before any module is
        built): every size has a hard bound (:data:`BOUNDS`) and the estimated parameter count
        must stay below :data:`MAX_PARAMETERS`, so a damaged or hostile config never triggers
        a multi-gigabyte allocation."""
        for name, (lo, hi) in BOUNDS.items():
            values = getattr(self, name)
            for v in (values if isinstance(values, tuple) else (values,)):
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
                    raise ValueError(f"{name} = {values!r} is outside the supported range [{lo}, {hi}]")
        if not 1 <= len(self.stage_widths) <= 6:
            raise ValueError(f"between 1 and 6 conv stages are supported, got {len(self.stage_widths)}")
        n = self.estimated_parameters()
        if n > MAX_PARAMETERS:
            raise ValueError(f"this architecture has about {n / 1e9:.1f} B parameters, above the "
                             f"supported {MAX_PARAMETERS / 1e9:.0f} B (the released model has 0.7 B)")
        if not (len(self.stage_widths) == len(self.stage_depths) == len(self.stage_strides)):
            raise ValueError("stage_widths, stage_depths and stage_strides must have equal length")
        if any(s not in (1, 2) for s in self.stage_strides):
            raise ValueError(f"stage_strides must be 1 or 2, got {self.stage_strides}")
        if self.vocab_width % self.num_codebooks:
            raise ValueError("vocab_width must be divisible by num_codebooks")
        if self.width % self.num_heads or self.width % self.proj_heads:
            raise ValueError("width must be divisible by num_heads and proj_heads")
        if self.width // self.proj_heads != self.vocab_width:
            # the down-projection averages its heads, so each head must already be vocab_width wide
            raise ValueError(f"width / proj_heads ({self.width // self.proj_heads}) must equal "
                             f"vocab_width ({self.vocab_width})")
        if self.image_size % self.downsample:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the downsampling factor "
                f"{self.downsample}"
            )


@dataclass
class MedITokConfig(Config):
    """Everything needed to rebuild a MedITok model and feed it correctly."""

    preset: str = "large"
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    #: Free-form provenance: where the weights came from, training command, metrics.
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        self.model.validate()
        self.preprocess.validate()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MedITokConfig":
        """Build from a dictionary; unknown keys or invalid values raise :class:`CheckpointError`."""
        data = dict(data or {})
        data.setdefault("preset", "custom")
        data["meta"] = data.get("meta") or {}
        try:
            cfg = from_dict(cls, data)
            cfg.validate()
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"invalid MedITok config: {exc}") from None
        return cfg

    @classmethod
    def load(cls, path: str | Path, overrides: Any = None) -> "MedITokConfig":
        """Read a JSON or YAML config file (errors as :class:`CheckpointError`)."""
        try:
            return super().load(path, overrides)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None


# --------------------------------------------------------------------------- presets
def _large() -> MedITokConfig:
    return MedITokConfig(preset="large")


def _small() -> MedITokConfig:
    # Same structure as the release, narrowed so that it trains on 2 CPU cores: 64 px input,
    # downsampling 8 (8x8 grid, 64 positions x 8 sub-codes), the release's 8x4096x8 codebooks.
    # Measured on 2 cores (benchmarks/results/throughput.md): 128 px / downsampling 16 trains
    # ~4x slower per image; the expensive part of the conv decoder is the full 3x3 conv on the
    # expanded width after upsampling, hence the narrow first stage (16).
    model = ModelConfig(
        image_size=64, stem_width=16, stage_widths=(16, 64), stage_depths=(1, 2),
        stage_strides=(2, 1), width=128, encoder_depth=3, decoder_depth=3, num_heads=4,
        proj_heads=2, embed_dim=256,
    )
    return MedITokConfig(preset="small", model=model, preprocess=PreprocessConfig(image_size=64))


def _tiny() -> MedITokConfig:
    # For tests: builds and runs in well under a second; small codebooks so usage is testable.
    model = ModelConfig(
        image_size=32, stem_width=8, stage_widths=(8, 16), stage_depths=(1, 1),
        stage_strides=(2, 1), width=32, encoder_depth=1, decoder_depth=1, num_heads=2,
        proj_heads=2, num_codebooks=4, codebook_size=64, vocab_width=16, embed_dim=32,
    )
    return MedITokConfig(preset="tiny", model=model, preprocess=PreprocessConfig(image_size=32))


PRESETS = {"large": _large, "small": _small, "tiny": _tiny}


def preset(name: str, **model_overrides: Any) -> MedITokConfig:
    """Return a fresh config for a named preset (``large``, ``small``, ``tiny``).

    Keyword arguments override :class:`ModelConfig` fields (``image_size`` also updates the
    preprocessing size).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    if model_overrides:
        cfg.model = dataclasses.replace(cfg.model, **model_overrides)
        if "image_size" in model_overrides:
            cfg.preprocess.image_size = model_overrides["image_size"]
    cfg.model.validate()
    return cfg
