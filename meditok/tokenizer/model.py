"""The MedITok tokenizer: encoder → causal projection → multi-codebook VQ → projection → decoder.

Public inference API (all inputs ``float [B,3,S,S]`` in ``[-1,1]``):
``tokenize`` → ``[B, K, h, w]`` int64, ``detokenize``, ``reconstruct``, ``features``, ``embed``.
The training forward returns a :class:`MedITokOutput`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from meditok.errors import CheckpointError, InvalidInputError
from meditok.tokenizer.config import MedITokConfig, preset
from meditok.tokenizer.decoder import Decoder
from meditok.tokenizer.encoder import Encoder
from meditok.tokenizer.layers import init_decoder_style
from meditok.tokenizer.projection import AttnProjection
from meditok.tokenizer.quantizer import MultiCodebookQuantizer
from meditok.utils.hub import CONFIG_NAME, PretrainedMixin


@dataclass
class MedITokOutput:
    """Everything the training losses need from one forward pass."""

    reconstruction: torch.Tensor  # [B,3,S,S], not clamped
    vq_loss: torch.Tensor  # scalar
    indices: torch.Tensor  # [B,K,h,w]
    usage: torch.Tensor  # [K] percent of codes used in this batch
    embedding: torch.Tensor  # [B, embed_dim] unit norm
    logit_scale: torch.Tensor  # scalar, exp(logit_scale)


class MedITok(PretrainedMixin, nn.Module):
    """MedITok visual tokenizer. Build with ``MedITok(config)``, ``MedITok.from_preset`` or
    ``MedITok.from_pretrained`` (a directory, its weights file, or a bundled name such as
    ``"meditok-small"``); ``save_pretrained`` writes config + safetensors + model card."""

    config_class = MedITokConfig
    model_type = "meditok-tokenizer"

    def __init__(self, config: MedITokConfig | None = None):
        super().__init__()
        self.config = config or MedITokConfig()
        cfg = self.config.model
        cfg.validate()
        self.encoder = Encoder(cfg)
        self.quant_proj = AttnProjection(cfg.width, cfg.vocab_width, cfg.proj_heads)
        self.quantizer = MultiCodebookQuantizer(cfg.num_codebooks, cfg.codebook_size,
                                                cfg.vocab_width, cfg.vq_beta)
        self.post_quant_proj = AttnProjection(cfg.vocab_width, cfg.width, cfg.proj_heads)
        self.decoder = Decoder(cfg)
        self.fc_norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.projection = nn.Linear(cfg.width, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MedITok":
        """Randomly initialised model of a named preset (``large``, ``small``, ``tiny``)."""
        model = cls(preset(name, **overrides))
        model.init_weights()
        return model

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "MedITok":
        """Load a directory written by :meth:`save_pretrained`, its weights file, or a bundled
        checkpoint by name (``"meditok-small"``)."""
        p = Path(path)
        if p.is_file() and p.suffix in (".pth", ".pt") and not (p.parent / CONFIG_NAME).exists():
            raise CheckpointError(f"{p}: a bare weights file without config.json; for the official "
                                  "release run `meditok convert-official FILE OUT_DIR` first")
        return super().from_pretrained(path, map_location)

    def model_card(self) -> str:
        from meditok.tokenizer.hub import model_card

        return model_card(self.config)

    def init_weights(self) -> None:
        """Training-from-scratch initialisation, as in the release's training code."""
        self.encoder.init_weights()
        for m in (self.quant_proj, self.post_quant_proj, self.decoder):
            init_decoder_style(m)
        for cb in self.quantizer.codebooks:
            cb.init_codebook()
        nn.init.ones_(self.fc_norm.weight)
        nn.init.zeros_(self.fc_norm.bias)
        nn.init.trunc_normal_(self.projection.weight, std=0.02)
        nn.init.zeros_(self.projection.bias)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute transformer activations in backward (less memory for large models)."""
        self.encoder.grad_checkpointing = enabled
        self.decoder.grad_checkpointing = enabled

    # ------------------------------------------------------------------ internals
    def _check_images(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(f"expected a torch.Tensor of images, got {type(x).__name__}")
        if x.ndim == 3:
            x = x.unsqueeze(0)
        d = self.config.model.downsample
        if x.ndim != 4 or x.shape[1] != self.config.model.in_channels:
            raise InvalidInputError(
                f"expected images of shape [B, {self.config.model.in_channels}, H, W], got "
                f"{list(x.shape)}; grey images must be repeated to 3 channels "
                "(meditok.data.preprocess.to_input does this)")
        if x.shape[-1] % d or x.shape[-2] % d or x.shape[-1] < d or x.shape[-2] < d:
            raise InvalidInputError(
                f"image size {tuple(x.shape[-2:])} must be a positive multiple of the "
                f"downsampling factor {d}")
        if not x.is_floating_point():
            raise InvalidInputError(f"expected float images in [-1, 1], got dtype {x.dtype}")
        if not torch.isfinite(x).all():
            raise InvalidInputError("images contain NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.5 or hi > 1.5:
            raise InvalidInputError(
                f"image values span [{lo:.3g}, {hi:.3g}] but the model expects [-1, 1] "
                "(map uint8 images with x / 127.5 - 1)")
        return x

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Encoder then the fp32 down-projection: latents [B, L, vocab_width] and the grid."""
        tokens, grid = self.encoder(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.quant_proj(tokens.float()), grid

    def _post_project(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=latents.device.type, enabled=False):
            return self.post_quant_proj(latents.float())

    def _align(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.fc_norm(tokens.mean(dim=1))), dim=-1)

    def _decode(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.decoder(tokens, grid).float()

    # ------------------------------------------------------------------ training forward
    def forward(self, x: torch.Tensor) -> MedITokOutput:
        """Full pass used for training (updates the codebook-usage statistics)."""
        latents, grid = self._encode(x)
        quantized, indices, vq_loss, usage = self.quantizer(latents)
        tokens = self._post_project(quantized)
        return MedITokOutput(
            reconstruction=self._decode(tokens, grid),
            vq_loss=vq_loss,
            indices=indices.reshape(indices.shape[0], indices.shape[1], *grid),
            usage=usage,
            embedding=self._align(tokens),
            logit_scale=self.logit_scale.exp(),
        )

    def last_decoder_weight(self) -> nn.Parameter:
        """The parameter the adaptive GAN weight differentiates against."""
        return self.decoder.last_layer()

    # ------------------------------------------------------------------ inference API
    @torch.no_grad()
    def tokenize(self, images: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """Images [B,3,H,W] in [-1,1] → token indices ``[B, num_codebooks, H/d, W/d]`` (int64).

        ``precision="bf16"``: encoder under bf16 autocast (opt-in fast mode; the projection and
        the quantiser stay fp32, but ~2 % of tokens differ from the fp32 default)."""
        from meditok.utils.device import autocast

        x = self._check_images(images)
        with autocast(x.device, precision):
            latents, grid = self._encode(x)
        idx = self.quantizer.latents_to_indices(latents)
        return idx.reshape(idx.shape[0], idx.shape[1], *grid)

    @torch.no_grad()
    def detokenize(self, tokens: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """Token indices ``[B, K, h, w]`` → images ``[B,3,h*d,w*d]`` clamped to [-1,1]
        (``precision="bf16"``: decoder under bf16 autocast)."""
        from meditok.utils.device import autocast

        tokens = self._check_tokens(tokens)
        grid = (tokens.shape[2], tokens.shape[3])
        latents = self.quantizer.indices_to_latents(tokens)
        with autocast(tokens.device, precision):
            return self._decode(self._post_project(latents), grid).clamp(-1.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """``detokenize(tokenize(images))`` in one call."""
        return self.detokenize(self.tokenize(images, precision), precision)

    @torch.no_grad()
    def encoder_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation encoder tokens ``[B, h*w, width]`` (fp32), one per grid position."""
        tokens, _ = self.encoder(self._check_images(images))
        return tokens.float()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Mean of the pre-quantisation encoder tokens, ``[B, width]`` (semantic features)."""
        return self.encoder_tokens(images).mean(dim=1)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Aligned, L2-normalised embedding ``[B, embed_dim]`` computed from the quantised tokens."""
        latents = self.quantized_latents(images)
        return self._align(self._post_project(latents)).float()

    @torch.no_grad()
    def quantized_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Quantised code vectors ``[B, h*w, vocab_width]`` (before the up-projection)."""
        return self.codes_to_latents(self.tokenize(images))

    @torch.no_grad()
    def codes_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token indices ``[B, K, h, w]`` → code vectors ``[B, h*w, vocab_width]``."""
        return self.quantizer.indices_to_latents(self._check_tokens(tokens))

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token grids must be ``[B, K, h, w]``: no layout is guessed from a 3-D tensor (the
        official ``[B, K, h·w]`` with ``B == K`` would decode silently as one wrong image)."""
        cfg = self.config.model
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise InvalidInputError("tokens must be an integer tensor of shape [B, K, h, w]")
        if tokens.ndim == 3:
            raise InvalidInputError(
                f"tokens have 3 dimensions {list(tokens.shape)}; expected [B, {cfg.num_codebooks}, h, w]. "
                "For one grid use tokens[None]; for the official flat layout [B, K, h*w] use "
                "meditok.tokenizer.layout.tokens_from_official(indices, (h, w))")
        if tokens.ndim != 4 or tokens.shape[1] != cfg.num_codebooks:
            raise InvalidInputError(
                f"tokens must have shape [B, {cfg.num_codebooks}, h, w], got {list(tokens.shape)}")
        if tokens.shape[2] < 1 or tokens.shape[3] < 1:
            raise InvalidInputError(f"token grids must be at least 1x1, got shape {list(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= cfg.codebook_size):
            raise InvalidInputError(f"token values must lie in [0, {cfg.codebook_size})")
        return tokens.long().to(self.logit_scale.device)

    def num_parameters(self) -> int:
        """Number of parameter elements (buffers excluded)."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        cfg = self.config.model
        grid = cfg.grid_size()
        return (f"preset={self.config.preset}, image_size={cfg.image_size}, grid={grid}x{grid}, "
                f"codebooks={cfg.num_codebooks}x{cfg.codebook_size}x{cfg.code_dim}, "
                f"params={self.num_parameters() / 1e6:.1f}M, vocab_bits/position="
                f"{cfg.num_codebooks * math.log2(cfg.codebook_size):.0f}")
