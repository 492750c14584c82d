"""The teacher interface and the trainable head that maps teacher features to the
alignment space (spec §2.1)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Teacher(nn.Module):
    """A frozen encoder providing alignment targets.

    Attributes:
        kind: ``"vision"`` (``encode`` takes images ``[B,3,H,W]`` in ``[-1,1]`` and resizes
            them itself) or ``"text"`` (``encode`` takes ``list[str]``).
        dim: width of the returned features.

    ``encode`` runs without gradient, in eval mode, and returns ``FloatTensor [B, dim]`` on the
    teacher's device. ``train()`` is a no-op so a parent's ``.train()`` cannot unfreeze
    dropout or batch-norm statistics.
    """

    kind: str = "vision"
    dim: int = 0

    def freeze(self) -> "Teacher":
        """Disable gradients and switch to eval mode (called at the end of ``__init__``)."""
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Device of the teacher's weights."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @torch.no_grad()
    def encode(self, batch: Any) -> torch.Tensor:
        """Features ``[B, dim]`` for a batch of images or captions."""
        raise NotImplementedError

    def forward(self, batch: Any) -> torch.Tensor:
        return self.encode(batch)

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """Validate a vision batch and move it to the teacher's device as fp32."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{type(self).__name__} expects images [B,3,H,W] in [-1,1], got {got}")
        return images.to(self.device, torch.float32)


class TeacherHead(nn.Module):
    """Trainable ``LayerNorm(dim) → Linear(dim → embed_dim) → L2-normalise``.

    The teacher stays frozen; this head is what learns to place teacher features in the
    tokenizer's alignment space (``text_fc_norm`` / ``text_projection`` in the reference).
    """

    def __init__(self, dim: int, embed_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.proj = nn.Linear(dim, embed_dim)
        nn.init.trunc_normal_(self.proj.weight, std=dim ** -0.5)
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.norm(features.float())), dim=-1)
