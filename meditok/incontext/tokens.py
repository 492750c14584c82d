"""Our extension: the same visual sentences as sequences of MedITok tokens (LVM-style, §5.3 of the
notes), modelled by the shared :class:`meditok.gpt.GPT`.

Each 64-px cell becomes ``8 x 8`` positions of ``K = 8`` sub-codes (``meditok-small``); the
sentence ``[P_x, P_y, X, Y]`` is the 2x2 canvas of token images, ordered tile by tile
(``GPTConfig(grid=(16, 16), tile=(8, 8))``) = the four images' raster sequences one after the
other, 256 positions. Training is teacher-forced next-position cross-entropy with
``loss_mask`` on the label tiles only (``P_y`` and ``Y``), the class token is the task id.
Inference continues the sentence from the three known tiles (``generate(cond, prefix=…)``,
greedy) and decodes the ``Y`` tokens with the MedITok decoder. The tokenizer stays frozen and
is not part of the saved weights (the GPT's config names it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from meditok.errors import CheckpointError, InvalidInputError
from meditok.gpt import GPT, GPTConfig, gpt_preset
from meditok.incontext.episodes import TASK_IDS
from meditok.tokenizer.hub import load_tokenizer
from meditok.tokenizer.layout import grid_to_sequence, sequence_to_grid
from meditok.tokenizer.model import MedITok


def token_gpt_config(tokenizer: MedITok, preset: str = "small", **overrides: Any) -> GPTConfig:
    """A GPT over the 2x2 canvas of this tokenizer's token images, one class per task."""
    m = tokenizer.config.model
    g = m.grid_size()
    base = dict(grid=(2 * g, 2 * g), tile=(g, g), num_codebooks=m.num_codebooks,
                codebook_size=m.codebook_size, num_classes=len(TASK_IDS), class_dropout=0.0)
    base.update(overrides)
    return gpt_preset(preset, **base)


class TokenMVG(nn.Module):
    """GPT over MedITok visual sentences + the frozen tokenizer that reads and writes them."""

    def __init__(self, gpt: GPT, tokenizer: MedITok, tokenizer_spec: str):
        super().__init__()
        self.gpt = gpt
        self._tokenizer = [tokenizer.eval().requires_grad_(False)]  # a list: not a submodule, not saved
        self.tokenizer_spec = tokenizer_spec
        gh, gw = gpt.config.grid
        self.g = gh // 2
        self.cell = tokenizer.config.model.image_size
        if gpt.config.tile != (self.g, self.g) or gh != gw:
            raise InvalidInputError(f"GPT grid {gpt.config.grid} / tile {gpt.config.tile} is not a 2x2 canvas")
        p = self.g * self.g
        mask = torch.zeros(4 * p, dtype=torch.bool)
        mask[p:2 * p] = True      # P_y
        mask[3 * p:] = True       # Y
        self.register_buffer("label_positions", mask, persistent=False)

    @property
    def tokenizer(self) -> MedITok:
        return self._tokenizer[0]

    @classmethod
    def create(cls, tokenizer_spec: str = "meditok-small", preset: str = "small", **overrides: Any) -> TokenMVG:
        tok = load_tokenizer(tokenizer_spec)
        return cls(GPT(token_gpt_config(tok, preset, **overrides)), tok, tokenizer_spec)

    @classmethod
    def load(cls, path: str | Path, tokenizer_spec: str | None = None) -> TokenMVG:
        gpt = GPT.from_pretrained(path)
        spec = tokenizer_spec or (gpt.config.meta or {}).get("tokenizer")
        if not spec:
            raise CheckpointError(f"{path}: the token GPT does not name its tokenizer (meta.tokenizer)")
        return cls(gpt, load_tokenizer(spec), spec).eval()

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        self.gpt.config.meta["tokenizer"] = self.tokenizer_spec
        self.gpt.config.meta["kind"] = "token"
        return self.gpt.save_pretrained(directory, dtype)

    def num_parameters(self) -> int:
        return self.gpt.num_parameters()

    # ------------------------------------------------------------------ layout
    @torch.no_grad()
    def sentence(self, canvas: torch.Tensor) -> torch.Tensor:
        """Canvas ``[B, 3, 2c, 2c]`` → token sentence ``[B, 4·g², K]`` (P_x, P_y, X, Y)."""
        b, c = canvas.shape[0], self.cell
        if canvas.shape[-2:] != (2 * c, 2 * c):
            raise InvalidInputError(f"canvas must be {2 * c}x{2 * c} for this tokenizer, got {tuple(canvas.shape[-2:])}")
        cells = canvas.view(b, 3, 2, c, 2, c).permute(0, 2, 4, 1, 3, 5).reshape(b * 4, 3, c, c)
        tok = self.tokenizer.tokenize(cells)                       # [B*4, K, g, g]
        return grid_to_sequence(tok).view(b, 4 * self.g * self.g, -1)

    def loss(self, canvas: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the label tiles' sub-codes (teacher forcing)."""
        seq = self.sentence(canvas)
        mask = self.label_positions[None].expand(seq.shape[0], -1)
        return self.gpt(seq, task.to(seq.device), loss_mask=mask).loss

    @torch.no_grad()
    def predict(self, canvas: torch.Tensor, mode: str = "ar", task: str = "segmentation") -> torch.Tensor:
        """Y image ``[B, 3, c, c]`` in [-1, 1]: the sentence continued greedily after P_x, P_y, X."""
        seq = self.sentence(canvas)
        p = self.g * self.g
        cond = torch.full((seq.shape[0],), TASK_IDS[task], dtype=torch.long, device=seq.device)
        out = self.gpt.generate(cond, prefix=seq[:, :3 * p], temperature=0.0)
        grid = sequence_to_grid(out[:, 3 * p:], (self.g, self.g))
        return self.tokenizer.detokenize(grid)

    @torch.no_grad()
    def reconstruct_cell(self, canvas: torch.Tensor, cell: int = 3) -> torch.Tensor:
        """A cell pushed through tokenize → detokenize (the quantisation ceiling)."""
        seq = self.sentence(canvas)
        p = self.g * self.g
        return self.tokenizer.detokenize(sequence_to_grid(seq[:, cell * p:(cell + 1) * p], (self.g, self.g)))
