"""Typed configuration of a synthesis run (``meditok synth train CONFIG [--section.key value]``).

A run names token shards (``meditok synth pretokenize``), a GPT preset with optional
architecture overrides, how conditions are drawn from the corpus, the shared training loop's
settings and the default sampling settings recorded in the trained generator.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meditok.engine.loop import LoopConfig
from meditok.utils.config import Config


@dataclass
class DataConfig(Config):
    """Which tokens, which conditions, and how conditions are balanced."""

    #: Folder written by ``meditok synth pretokenize``.
    shards: str = ""
    #: Manifest split the GPT trains on (``val`` tokens give the validation loss).
    split: str = "train"
    #: Conditions to model (canonical modality keys); empty: every modality of the training
    #: split with at least ``min_images`` images (rows of unknown modality are never used).
    conditions: list[str] = field(default_factory=list)
    #: A modality with fewer training images is not modelled (it would be memorised); the
    #: generator records why, and sampling it is a clear error.
    min_images: int = 20
    #: Draw probability of a modality ∝ (its number of images)^balance: 0 = every modality
    #: equally often (class-balanced), 1 = as often as it occurs in the corpus.
    balance: float = 0.0
    #: Draws per epoch; 0: the number of training images.
    epoch_size: int = 0
    #: Datasets whose ``label`` column adds class-within-dataset conditions
    #: (``pneumoniamnist`` → ``pneumoniamnist:normal``, ``pneumoniamnist:pneumonia``).
    class_datasets: list[str] = field(default_factory=list)
    #: Share of the draws of such an image that use its class condition (the rest use its
    #: modality, so one generator serves both kinds of condition).
    class_share: float = 0.5
    #: Validation items scored by the periodic validation loss (0: none).
    val_items: int = 128

    def validate(self) -> None:
        if self.min_images < 1:
            raise ValueError("data.min_images must be >= 1")
        if not 0.0 <= self.class_share <= 1.0:
            raise ValueError("data.class_share must lie in [0, 1]")
        if self.balance < 0:
            raise ValueError("data.balance must be >= 0")
        if self.epoch_size < 0 or self.val_items < 0:
            raise ValueError("data.epoch_size and data.val_items must be >= 0")


@dataclass
class SampleConfig(Config):
    """Default sampling settings recorded in the generator (the CLI can override each)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: float = 1.0

    def validate(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.cfg_scale < 0:
            raise ValueError("sample: temperature >= 0, top_k >= 0, 0 < top_p <= 1, cfg_scale >= 0")


@dataclass
class SynthConfig(Config):
    """One synthesis training run."""

    #: ``tiny``, ``small`` or ``B`` (:func:`meditok.gpt.gpt_preset`).
    preset: str = "small"
    #: Overrides of :class:`meditok.gpt.GPTConfig` fields (``--model.dim 256``); grid, codebooks
    #: and number of classes always come from the shards and the conditions.
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(lr=1e-4, weight_decay=0.05,
                                                                betas=(0.9, 0.95), grad_clip=1.0,
                                                                output_dir="runs/synthesis/run"))
    sample: SampleConfig = field(default_factory=SampleConfig)
    #: Where the final generator is written; empty: ``{loop.output_dir}/final``.
    output: str = ""
    #: Name recorded in the generator's card (``meditok-gpt-small``).
    name: str = ""
    #: torch intra-op threads (0: torch's default). On a shared 2-core machine 1 is often faster.
    threads: int = 0

    def validate(self) -> None:
        fixed = {"grid", "num_codebooks", "codebook_size", "num_classes", "meta"}
        bad = sorted(fixed & set(self.model))
        if bad:
            raise ValueError(f"model.{bad[0]} is set by the shards / conditions, not by the config")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        self.data.validate()
        self.loop.validate()
        self.sample.validate()
