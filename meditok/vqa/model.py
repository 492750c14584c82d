"""MedITok as the vision tower of a small causal LM (LLaVA-style, paper §4.5 / spec §3.3).

``image → frozen MedITok → one vector per grid position → 2-layer GELU MLP projector → spliced
at <image> into the LM's input embeddings → (LoRA-adapted) causal LM → answer``.

* :class:`VisionTower` — a frozen MedITok; ``quantized`` features are the paper's: token
  indices → code vectors (``codes_to_latents``) → ``post_quant_proj``, i.e. what the decoder
  and the alignment head see. ``codes`` stops before the up-projection, ``encoder`` takes the
  pre-quantisation encoder tokens.
* :class:`Projector` — optional LayerNorm, ``Linear → GELU → Linear`` into the LM width; its
  output is initialised at the scale of the LM's text embeddings (Gemma multiplies them by
  √d inside its embedding layer, SmolLM2 does not).
* :class:`VQAModel` — the whole pipeline. Its ``state_dict`` is the **adapter** only (projector +
  LoRA): the tokenizer and the LM are frozen and named by the config, so training checkpoints
  and the shipped model are a few MB. The loss is cross-entropy on answer tokens only, and LM
  logits are computed only at the positions that predict them (a 49k–262k-word head on every
  position would dominate the cost).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from meditok.errors import CheckpointError, InvalidInputError
from meditok.tokenizer.hub import load_tokenizer
from meditok.tokenizer.model import MedITok
from meditok.utils.hub import PretrainedMixin
from meditok.utils.lazy import require
from meditok.vqa.config import VQAModelConfig
from meditok.vqa.contrast import contrastive_greedy, noised
from meditok.vqa.lm import EXTRA, lm_identity, load_lm, prompt_template_for
from meditok.vqa.prompt import PromptFormat, expand_image, splice_embeddings

ADAPTER_PREFIXES = ("projector.",)


class VisionTower(nn.Module):
    """A frozen MedITok giving ``[B, h·w, D]`` per-position features (always ``eval``, fp32).

    ``image_size`` (0: the tokenizer's own) runs it at another resolution — its encoder has no
    positional embedding — and ``merge`` k concatenates each k×k block of neighbouring positions
    into one token (space-to-depth): at twice the size and ``merge`` 2 the LM gets the same number
    of image tokens with four times the pixels behind each. :attr:`preprocess` is the contract
    images must be read with."""

    def __init__(self, tokenizer: MedITok, kind: str = "quantized", image_size: int = 0, merge: int = 1):
        super().__init__()
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.kind = kind
        m = tokenizer.config.model
        pre = tokenizer.config.preprocess
        self.preprocess = dataclasses.replace(pre, image_size=image_size or pre.image_size)
        side = m.grid_size(self.preprocess.image_size)
        if side < 1 or side * m.downsample != self.preprocess.image_size or side % merge:
            raise InvalidInputError(f"model.image_size {self.preprocess.image_size} must be a multiple of "
                                    f"{m.downsample * merge} (the tokenizer's stride {m.downsample} x merge {merge})")
        self.side, self.merge = side, merge
        self.grid = side // merge
        self.num_positions = self.grid * self.grid
        self.dim = (m.vocab_width if kind == "codes" else m.width) * merge * merge

    def train(self, mode: bool = True) -> VisionTower:
        return super().train(False)  # frozen: never leaves eval (no quantiser statistics)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tok = self.tokenizer
        with torch.autocast(device_type=images.device.type, enabled=False):
            if self.kind == "encoder":
                feats = tok.encoder_tokens(images.float())
            else:
                latents = tok.codes_to_latents(tok.tokenize(images))
                feats = latents if self.kind == "codes" else tok.post_quant_proj(latents.float())
        if self.merge > 1:  # [B, (g·k)², D] → [B, g², k²·D], each k×k block row-major
            b, k, g = feats.shape[0], self.merge, self.grid
            feats = (feats.reshape(b, g, k, g, k, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1))
        return feats.float()


class Projector(nn.Module):
    """LLaVA's ``mlp2x_gelu`` (``Linear → GELU → Linear``) with an optional input LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0, input_norm: bool = True):
        super().__init__()
        hidden = hidden or out_dim
        self.norm = nn.LayerNorm(in_dim) if input_norm else nn.Identity()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))

    @torch.no_grad()
    def match_scale(self, target_std: float, samples: int = 512) -> None:
        """Rescale the last layer so outputs on unit-variance inputs have std ``target_std``."""
        x = torch.randn(samples, self.fc1.in_features, generator=torch.Generator().manual_seed(0))
        std = float(self(x).std())
        if std > 0:
            self.fc2.weight.mul_(target_std / std)
            self.fc2.bias.mul_(target_std / std)


def text_embedding_std(lm: Any, rows: int = 4096) -> float:
    """Element std of the LM's input embeddings as the model sees them (incl. any scale)."""
    emb = lm.get_input_embeddings()
    vocab = emb.weight.shape[0]
    ids = torch.linspace(0, vocab - 1, min(rows, vocab)).long()
    with torch.no_grad():
        return float(emb(ids[None])[0].float().std())


class VQAModel(PretrainedMixin, nn.Module):
    """Vision tower + projector + causal LM; see the module docstring.

    Build from a config (loads the tokenizer and the LM it names) or pass ready ``tokenizer``
    / ``lm`` / ``text_tokenizer`` objects (training, tests). ``from_pretrained`` loads an
    adapter folder or a bundled name (``meditok-vqa-small``).
    """

    config_class = VQAModelConfig
    model_type = "meditok-vqa"

    def __init__(self, config: VQAModelConfig, *, tokenizer: MedITok | None = None, lm: Any = None,
                 text_tokenizer: Any = None, verbose: bool = True):
        super().__init__()
        if not config.prompt.template and prompt_template_for(config.lm):
            config.prompt.template = prompt_template_for(config.lm) or ""  # a packaged base LM
        config.validate()
        self.config = config
        if lm is None:
            lm, text_tokenizer = load_lm(config.lm, verbose)
        elif text_tokenizer is None:
            raise ValueError("pass text_tokenizer together with lm")
        lm.requires_grad_(False)
        self.text_tokenizer = text_tokenizer
        self.prompt = PromptFormat(text_tokenizer, config.prompt)
        self.tower = VisionTower(tokenizer if tokenizer is not None else load_tokenizer(config.tokenizer),
                                 config.features, config.image_size, config.merge)
        cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
        self.hidden = int(cfg.hidden_size)
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self._check_identity(lm, text_tokenizer)
        if config.use_image:
            self.projector: Projector | None = Projector(self.tower.dim, self.hidden,
                                                         config.projector_hidden, config.projector_input_norm)
            self.projector.match_scale(text_embedding_std(lm))
        else:
            self.projector = None
        if config.lora.r:
            peft = require("peft", EXTRA)
            lcfg = peft.LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                                   lora_dropout=config.lora.dropout,
                                   target_modules=list(config.lora.target_modules), bias="none")
            lm = peft.inject_adapter_in_model(lcfg, lm)
            for name, p in lm.named_parameters():
                p.requires_grad_("lora_" in name)
        self.lm = lm

    # ------------------------------------------------------------------ identity / adapter state
    def _check_identity(self, lm: Any, tok: Any) -> None:
        want = self.config.meta.get("lm_identity")
        if not want:
            return
        have = lm_identity(self.config.lm, lm, tok)
        for key in ("hidden_size", "vocab_size", "num_layers", "architecture"):
            if key in want and want[key] != have[key]:
                raise CheckpointError(f"this adapter was trained with an LM of {key}={want[key]!r} "
                                      f"({want.get('spec')}); {self.config.lm!r} has {have[key]!r}")

    @staticmethod
    def is_adapter_key(name: str) -> bool:
        return name.startswith(ADAPTER_PREFIXES) or "lora_" in name

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """The adapter only (projector + LoRA); the frozen tokenizer and LM are named by the config."""
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        return type(full)((k, v) for k, v in full.items() if self.is_adapter_key(k[len(prefix):]))

    def load_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True,  # type: ignore[override]
                        assign: bool = False):
        want = set(self.state_dict())
        bad = sorted(set(state) - want)
        missing = sorted(want - set(state))
        if bad or (strict and missing):
            raise CheckpointError(f"adapter state does not match the model: unexpected {bad[:5]}, "
                                  f"missing {missing[:5]}")
        return super().load_state_dict(state, strict=False, assign=assign)

    def load_projector_from(self, other: Mapping[str, torch.Tensor], source: str) -> None:
        """Initialise the projector from a stage-A adapter state (LoRA keeps its fresh init)."""
        if self.projector is None:
            return
        proj = {k: v for k, v in other.items() if k.startswith("projector.")}
        want = {k: v for k, v in self.state_dict().items() if k.startswith("projector.")}
        if set(proj) != set(want) or any(proj[k].shape != want[k].shape for k in want):
            raise CheckpointError(f"{source}: its projector does not fit this model "
                                  "(another tokenizer, feature kind or LM?)")
        self.load_state_dict(proj, strict=False)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ forward pieces
    @property
    def num_image_tokens(self) -> int:
        return self.tower.num_positions if self.config.use_image else 0

    def project(self, features: torch.Tensor) -> torch.Tensor:
        assert self.projector is not None
        return self.projector(features.to(self.projector.fc1.weight.dtype))

    def image_embeddings(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """Projected image tokens ``[B, h·w, H]`` from ``batch["features"]`` (pre-computed
        tower output) or ``batch["images"]`` (run through the frozen tower)."""
        if not self.config.use_image:
            return None
        feats = batch.get("features")
        if feats is None:
            images = batch.get("images")
            if images is None:
                raise InvalidInputError("the batch needs 'features' or 'images'")
            feats = self.tower(images)
        return self.project(feats)

    def _body(self) -> nn.Module:
        return self.lm.base_model if hasattr(self.lm, "base_model") else self.lm.model

    def logits_at(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm.get_output_embeddings()(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of a collated batch (:func:`meditok.vqa.data.collate`): mean
        cross-entropy over answer tokens, logits only at the positions that predict them."""
        device = self.lm.get_input_embeddings().weight.device
        ids = batch["input_ids"].to(device)
        embeds = splice_embeddings(ids, self.lm.get_input_embeddings(), self.image_embeddings(
            {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}))
        out = self._body()(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(device),
                           position_ids=batch["position_ids"].to(device), use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        rows, cols = batch["loss_rows"].to(device), batch["loss_cols"].to(device)
        logits = self.logits_at(hidden[rows, cols]).float()
        targets = batch["targets"].to(device)
        loss = F.cross_entropy(logits, targets)
        acc = float((logits.argmax(-1) == targets).float().mean())
        return loss, {"token_acc": acc, "answer_tokens": float(len(targets))}

    # ------------------------------------------------------------------ inference
    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of a question's prompt with ``h·w`` image slots (none when text-only)."""
        return expand_image(self.prompt.encode_prompt(question).ids, self.num_image_tokens)

    @torch.no_grad()
    def generate(self, questions: list[str], images: torch.Tensor | None = None,
                 features: torch.Tensor | None = None, max_new_tokens: int | None = None,
                 contrast_features: torch.Tensor | None = None) -> list[str]:
        """Greedy answers to ``questions`` about ``images [B,3,S,S]`` (or pre-computed tower
        ``features``); one image per question. Batched with left padding. With
        ``config.contrast.alpha > 0``: visual contrastive decoding against the noised images
        (:mod:`meditok.vqa.contrast`; ``contrast_features``: their pre-computed tower output)."""
        if not questions:
            return []
        device = self.lm.get_input_embeddings().weight.device
        contrast = self.config.contrast
        image_embeds = contrast_embeds = None
        if self.config.use_image:
            if features is None:
                if images is None:
                    raise InvalidInputError("this model needs an image per question")
                features = self.tower(images.to(device))
            if features.shape[0] != len(questions):
                raise InvalidInputError(f"{len(questions)} questions but {features.shape[0]} images")
            image_embeds = self.project(features.to(device))
            if contrast.active:
                if contrast_features is None:
                    if images is None:
                        raise InvalidInputError("contrastive decoding needs the images or their "
                                                "noised copies' features (contrast_features)")
                    pre = self.tower.preprocess
                    contrast_features = self.tower(noised(images.to(device), contrast, pre.input_range))
                contrast_embeds = self.project(contrast_features.to(device))
        seqs = [self.prompt_ids(q) for q in questions]
        width = max(len(s) for s in seqs)
        pad = self.text_tokenizer.pad_token_id
        pad = self.prompt.end_id if pad is None else int(pad)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        ids, mask = ids.to(device), mask.to(device)
        embeds = splice_embeddings(ids, self.lm.get_input_embeddings(), image_embeds)
        steps = max_new_tokens or self.config.max_new_tokens
        if contrast_embeds is not None:
            out = contrastive_greedy(self.lm, embeds, splice_embeddings(ids, self.lm.get_input_embeddings(),
                                                                        contrast_embeds),
                                     mask, contrast, steps, self.prompt.end_id, pad)
        else:
            out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=steps,
                                   do_sample=False, num_beams=1, eos_token_id=self.prompt.end_id,
                                   pad_token_id=pad)
        return [self.prompt.decode(row.tolist()) for row in out]

    def model_card(self) -> str:
        from meditok.vqa.card import model_card

        return model_card(self.config)


def parameter_summary(model: VQAModel) -> dict[str, int]:
    """Trainable / frozen parameter counts (tower, projector, LoRA, LM)."""
    lora = sum(p.numel() for n, p in model.lm.named_parameters() if "lora_" in n)
    return {"tower": sum(p.numel() for p in model.tower.parameters()),
            "projector": sum(p.numel() for p in model.projector.parameters()) if model.projector else 0,
            "lora": lora, "lm_frozen": sum(p.numel() for n, p in model.lm.named_parameters()
                                           if "lora_" not in n),
            "trainable": model.trainable_parameters()}
