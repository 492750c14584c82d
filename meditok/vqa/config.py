"""Typed configuration of the VQA family (``meditok vqa train CONFIG [--section.key value]``).

:class:`VQAModelConfig` describes a trained adapter completely — which tokenizer and LM it
needs, which tokenizer features feed the projector, the projector, LoRA and the prompt — and is
stored as the adapter's ``config.json``. :class:`VQATrainConfig` adds the stage, the data and the
shared training loop's settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meditok.engine.loop import LoopConfig
from meditok.utils.config import Config

#: Which per-position tokenizer features feed the projector.
#: ``quantized``: code vectors → ``post_quant_proj`` (the paper's vision tower, spec §3.3);
#: ``codes``: the code vectors before the up-projection; ``encoder``: pre-quantisation encoder
#: tokens.
FEATURE_KINDS = ("quantized", "codes", "encoder")
IMAGE_PLACEHOLDER = "<image>"
#: Length of the diffusion schedule whose step ``contrast.noise_step`` noises the image.
DIFFUSION_STEPS = 1000


@dataclass
class LoRAConfig(Config):
    """Low-rank adapters on the LM's attention projections (stage B)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def validate(self) -> None:
        if self.r < 0 or self.alpha < 0 or not 0 <= self.dropout < 1:
            raise ValueError("lora: r >= 0, alpha >= 0, 0 <= dropout < 1")
        if self.r and not self.target_modules:
            raise ValueError("lora.target_modules is empty")


@dataclass
class PromptConfig(Config):
    """How a question becomes the LM's input.

    ``template`` empty: the LM's chat template with one user turn ``<image>\\n{question}``
    (and ``system`` as the system turn when given). Otherwise an explicit template holding
    ``{question}`` and exactly one ``<image>`` (base LMs without a chat template), the answer
    following after ``answer_prefix``. The answer ends with the LM's end-of-sequence token.
    """

    template: str = ""
    system: str = "Answer the question about the medical image briefly."
    answer_prefix: str = " "
    caption_question: str = "Describe the image."

    def validate(self) -> None:
        if self.template:
            if self.template.count(IMAGE_PLACEHOLDER) != 1:
                raise ValueError(f"prompt.template must contain exactly one {IMAGE_PLACEHOLDER}")
            if "{question}" not in self.template:
                raise ValueError("prompt.template must contain {question}")


@dataclass
class ContrastConfig(Config):
    """Visual contrastive decoding at inference (:mod:`meditok.vqa.contrast`; ``alpha`` 0: plain
    greedy decoding)."""

    alpha: float = 0.0
    #: Adaptive plausibility cut: keep tokens with ``p ≥ beta·max p`` under the real image.
    beta: float = 0.1
    #: Diffusion step of the noised image (0 < t ≤ 1000).
    noise_step: int = 500
    seed: int = 0

    def validate(self) -> None:
        if self.alpha < 0 or not 0 < self.beta <= 1 or not 0 < self.noise_step <= DIFFUSION_STEPS:
            raise ValueError("contrast: alpha >= 0, 0 < beta <= 1, 0 < noise_step <= 1000")

    @property
    def active(self) -> bool:
        return self.alpha > 0


@dataclass
class VQAModelConfig(Config):
    """A MedITok vision tower + projector + (LoRA-adapted) causal LM."""

    #: Tokenizer spec for :func:`meditok.tokenizer.hub.load_tokenizer` (bundled name, folder).
    tokenizer: str = "meditok-small"
    #: LM spec for :func:`meditok.vqa.lm.resolve_lm_dir` (a packaged name or a local HF folder).
    lm: str = "smollm2-135m"
    features: str = "quantized"
    #: Resolution the tower reads images at (0: the tokenizer's own ``preprocess.image_size``).
    image_size: int = 0
    #: Concatenate each ``merge × merge`` block of neighbouring grid positions into one image token.
    merge: int = 1
    #: ``False``: the text-only baseline (same prompt, no image embeddings spliced in).
    use_image: bool = True
    #: Projector hidden width (0: the LM's hidden size, LLaVA's ``mlp2x_gelu``).
    projector_hidden: int = 0
    #: LayerNorm on the tokenizer features before the MLP (their scale differs per tokenizer).
    projector_input_norm: bool = True
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(r=0))
    prompt: PromptConfig = field(default_factory=PromptConfig)
    max_new_tokens: int = 24
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    #: Filled in by training: identity of the LM and tokenizer (checked at load), provenance.
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.features not in FEATURE_KINDS:
            raise ValueError(f"model.features must be one of {FEATURE_KINDS}, got {self.features!r}")
        if self.projector_hidden < 0 or self.max_new_tokens < 1:
            raise ValueError("model.projector_hidden >= 0 and model.max_new_tokens >= 1")
        if self.image_size < 0 or self.merge < 1:
            raise ValueError("model.image_size >= 0 (0: the tokenizer's own) and model.merge >= 1")
        self.lora.validate()
        self.prompt.validate()
        self.contrast.validate()


@dataclass
class VQADataConfig(Config):
    """Training data of one stage."""

    #: VQA-RAD folder (``trainset.json``, ``testset.json``, ``images/``).
    vqa_rad: str = "../shared/data/vqa_rad"
    #: Stage A: corpus manifest whose ``caption`` column gives image–caption pairs.
    manifest: str = ""
    #: Stage A: at most this many corpus pairs per distinct caption (the corpus has few distinct
    #: pseudo-captions; a balanced subset is enough to align the projector).
    per_caption: int = 60
    #: Stage A: add one description per VQA-RAD training image (from its own answers).
    vqa_descriptions: bool = True
    #: Leave out every VQA-RAD test image (by name and content): from stage A's corpus pairs and
    #: descriptions always; from stage B's QA pairs when ``image_disjoint`` is set.
    image_disjoint: bool = False
    #: Stage A always drops VQA-RAD test images (its pairs then carry no test-image leakage).
    stage_a_drop_test_images: bool = True
    #: Stage B's QA: ``train`` (the release) or ``train-val`` (without the validation split of
    #: :func:`meditok.data.vqa_rad.validation_split`, which is then answered every
    #: ``loop.eval_every`` steps and selects ``{output_dir}/best``; see :mod:`meditok.vqa.select`).
    train_split: str = "train"
    #: Longest packed sequence in tokens (an image with more QA is split into several).
    max_tokens: int = 512
    #: Pack all questions of one image into one sequence with a shared-prefix attention mask
    #: (exactly the unpacked loss, ~2.5x cheaper); ``False``: one question per sequence.
    pack: bool = True
    #: Feature extraction batch size.
    feature_batch: int = 64

    def validate(self) -> None:
        if self.per_caption < 0 or self.max_tokens < 16 or self.feature_batch < 1:
            raise ValueError("data: per_caption >= 0, max_tokens >= 16, feature_batch >= 1")
        if self.train_split not in ("train", "train-val"):
            raise ValueError(f"data.train_split must be train or train-val, got {self.train_split!r}")
        if self.train_split == "train-val" and self.image_disjoint:
            raise ValueError("data.train_split train-val holds out questions about test images, which "
                             "data.image_disjoint removes altogether: use one of them")


@dataclass
class VQATrainConfig(Config):
    """One training stage: ``A`` (projector on image–caption pairs) or ``B`` (projector + LoRA
    on VQA-RAD training QA)."""

    stage: str = "B"
    model: VQAModelConfig = field(default_factory=VQAModelConfig)
    data: VQADataConfig = field(default_factory=VQADataConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(
        lr=2e-4, weight_decay=0.0, betas=(0.9, 0.999), grad_clip=1.0, batch_size=1,
        warmup_steps=10, ckpt_every=50, log_every=5, output_dir="runs/vqa/run"))
    #: Adapter folder to start from (stage B: the stage-A projector); LoRA starts fresh.
    init_from: str = ""
    #: Where the trained adapter is written; empty: ``{loop.output_dir}/final``.
    output: str = ""
    #: Name recorded in the adapter's card.
    name: str = ""
    #: torch intra-op threads (0: torch's default).
    threads: int = 0

    def validate(self) -> None:
        if self.stage not in ("A", "B"):
            raise ValueError(f"stage must be A or B, got {self.stage!r}")
        if self.stage == "A" and self.model.lora.r:
            raise ValueError("stage A trains the projector only: set model.lora.r to 0")
        if self.stage == "A" and not self.model.use_image:
            raise ValueError("stage A aligns the projector; it needs model.use_image true")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        self.model.validate()
        self.data.validate()
        self.loop.validate()
