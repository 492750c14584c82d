"""Typed configuration of an in-context run (``meditok incontext train CONFIG [--section.key v]``).

``kind`` picks what is trained on the same episodes: ``mvg`` (the pixel-space generalist),
``token`` (the same visual sentences as MedITok token sequences, modelled by the shared
``meditok.gpt.GPT``) or ``unet`` (a specialist for one task: X → Y, the prompt ignored).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meditok.engine.loop import LoopConfig
from meditok.incontext.colour import SCHEMES
from meditok.incontext.episodes import TaskSpec
from meditok.utils.config import Config

KINDS = ("mvg", "token", "unet")


def paper_tasks() -> list[dict[str, Any]]:
    """The unified mixture on ../shared/data. Inside the segmentation family (half of the
    draws, §4.1) DRIVE gets most of the weight: it is the only set with more than a handful of
    labelled images; the four image tasks share the other half equally."""
    return [
        {"name": "drive", "source": "drive", "task": "segmentation", "weight": 0.6, "augment": "dihedral"},
        {"name": "sam_ct", "source": "sam_ct", "task": "segmentation", "weight": 0.15},
        {"name": "brain_mr", "source": "brain_mr", "task": "segmentation", "weight": 0.1},
        {"name": "prostate_mr", "source": "prostate_mr", "task": "segmentation", "weight": 0.1},
        {"name": "breast_mr", "source": "breast_mr", "task": "segmentation", "weight": 0.05},
        {"name": "ct_denoise", "source": "ct_slices", "task": "denoising", "weight": 1.0},
        {"name": "mr_denoise", "source": "mr_slices", "task": "denoising", "weight": 1.0},
        {"name": "ct_inpaint", "source": "ct_slices", "task": "inpainting", "weight": 1.0},
        {"name": "mr_inpaint", "source": "mr_slices", "task": "inpainting", "weight": 1.0},
    ]


@dataclass
class DataConfig(Config):
    """Which tasks, how labels are coloured, how MIM masks."""

    #: ``../shared/data`` (DRIVE, CHASE_DB1, SAM-Med2D demo, radiomics NRRD, CT volume).
    root: str = "../shared/data"
    #: ``binary``, ``predefined`` or ``random`` (the paper's best).
    scheme: str = "random"
    #: Share of the segmentation family in the draws (paper: 0.5).
    segmentation_share: float = 0.5
    #: The task mixture: list of :class:`meditok.incontext.episodes.TaskSpec` fields.
    tasks: list[dict[str, Any]] = field(default_factory=paper_tasks)
    #: Episodes per epoch (the data order is exactly resumable per epoch).
    epoch_size: int = 4000
    #: MIM: fraction of the canvas tokens masked (Table 6: 50 % beats 75 %).
    mask_ratio: float = 0.5
    #: MIM: probability that the whole Y cell is masked as well (our addition; SegGPT).
    p_full_query_label: float = 0.5
    #: AR: weight of the P_y term (predicting the prompt label from the prompt image alone; Eq. 2).
    #: It costs a second pass, and with random colours and one prompt its colour is unpredictable.
    ar_prompt_weight: float = 1.0
    #: Smooth-L1 transition point β (pixels in [-1, 1]). The paper says only "smooth l1". Painter's
    #: 0.01 makes it L1, whose per-pixel optimum is the median: "all background" until a vessel
    #: pixel is > 50 % sure — a from-scratch CPU model stays there (notes). 1.0 is Huber: quadratic
    #: for errors below 1, linear above.
    loss_beta: float = 1.0
    #: Validation episodes scored at the end of a run (0: none).
    val_episodes: int = 64

    def validate(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"data.scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if not 0.0 <= self.segmentation_share <= 1.0:
            raise ValueError("data.segmentation_share must lie in [0, 1]")
        if not 0.0 <= self.mask_ratio <= 1.0 or not 0.0 <= self.p_full_query_label <= 1.0:
            raise ValueError("data.mask_ratio and data.p_full_query_label must lie in [0, 1]")
        if self.loss_beta <= 0:
            raise ValueError("data.loss_beta must be > 0")
        if self.epoch_size < 1 or self.val_episodes < 0 or self.ar_prompt_weight < 0:
            raise ValueError("data.epoch_size >= 1, data.val_episodes >= 0, data.ar_prompt_weight >= 0")
        if not self.tasks:
            raise ValueError("data.tasks is empty")
        self.task_specs()

    def task_specs(self) -> list[TaskSpec]:
        specs = []
        for i, t in enumerate(self.tasks):
            try:
                spec = TaskSpec.from_dict(dict(t))
            except ValueError as exc:
                raise ValueError(f"data.tasks[{i}]: {exc}") from None
            spec.name = spec.name or spec.source
            specs.append(spec)
        return specs


@dataclass
class InContextConfig(Config):
    """One training run."""

    kind: str = "mvg"
    #: MVG preset (``tiny``, ``small``, ``base``) / GPT preset for ``token`` / U-Net preset.
    preset: str = "small"
    #: Architecture overrides (``--model.depth 4``).
    model: dict[str, Any] = field(default_factory=dict)
    #: ``token``: the MedITok tokenizer (64 px cells: ``meditok-small``).
    tokenizer: str = "meditok-small"
    data: DataConfig = field(default_factory=DataConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(
        lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=1.0, batch_size=8, warmup_steps=100,
        min_lr_ratio=0.01, ckpt_every=100, log_every=20, output_dir="runs/incontext/run", progress=False))
    #: Where the final model is written; empty: ``{loop.output_dir}/final``.
    output: str = ""
    name: str = ""
    #: torch intra-op threads (0: torch's default).
    threads: int = 0

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        self.data.validate()
        self.loop.validate()
        if self.kind == "unet":
            kinds = {t.task for t in self.data.task_specs() if t.weight > 0}
            if len(kinds) != 1:
                raise ValueError(f"a unet specialist trains on one task type, got {sorted(kinds)}")
            if kinds == {"segmentation"} and self.data.scheme != "binary":
                raise ValueError("a unet segmentation specialist cannot read prompt colours: use data.scheme binary")
