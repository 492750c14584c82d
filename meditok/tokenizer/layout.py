"""Token layout: the ``[B, K, h, w]`` grids MedITok produces ⇄ what sequence models consume.

Each grid position carries K sub-codes (one per sub-codebook, each in ``0 … V-1``). Sequence
models see positions in raster order (row-major, as the causal projections were trained), so a
grid becomes ``[B, h·w, K]``; a model with one flat vocabulary uses per-codebook offsets
``k·V`` so that sub-code ``c`` of codebook ``k`` is the word ``k·V + c`` (vocabulary ``K·V``).
The official code stores indices sub-codebook-major as ``[B, K, h·w]``.
"""
from __future__ import annotations

import torch

from meditok.errors import InvalidInputError


def _check_grid(tokens: torch.Tensor) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 4:
        shape = list(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise InvalidInputError(f"token grids must be [B, K, h, w], got {shape}")


def grid_to_sequence(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, K, h, w]`` → ``[B, h·w, K]`` (raster order, the K sub-codes of a position together)."""
    _check_grid(tokens)
    b, k, h, w = tokens.shape
    return tokens.reshape(b, k, h * w).transpose(1, 2).contiguous()


def sequence_to_grid(seq: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`grid_to_sequence`: ``[B, h·w, K]`` → ``[B, K, h, w]``."""
    if seq.ndim != 3 or seq.shape[1] != grid[0] * grid[1]:
        raise InvalidInputError(f"sequence {list(seq.shape)} does not fit a {grid[0]}x{grid[1]} grid")
    b, _, k = seq.shape
    return seq.transpose(1, 2).reshape(b, k, grid[0], grid[1]).contiguous()


def vocab_offsets(num_codebooks: int, codebook_size: int, device: torch.device | None = None) -> torch.Tensor:
    """``[K]`` offsets ``k·V`` of each sub-codebook in one flat vocabulary."""
    return torch.arange(num_codebooks, device=device) * codebook_size


def to_flat_vocab(seq: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """``[B, L, K]`` sub-codes → ``[B, L·K]`` words of the flat ``K·V`` vocabulary."""
    k = seq.shape[-1]
    return (seq + vocab_offsets(k, codebook_size, seq.device)).flatten(1)


def from_flat_vocab(words: torch.Tensor, num_codebooks: int, codebook_size: int) -> torch.Tensor:
    """Inverse of :func:`to_flat_vocab`: ``[B, L·K]`` → ``[B, L, K]`` (checks the offsets)."""
    b = words.shape[0]
    seq = words.reshape(b, -1, num_codebooks) - vocab_offsets(num_codebooks, codebook_size, words.device)
    if seq.numel() and (int(seq.min()) < 0 or int(seq.max()) >= codebook_size):
        raise InvalidInputError("words do not follow the per-codebook vocabulary layout")
    return seq


def tokens_from_official(indices: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The official flat layout ``[B, K, h·w]`` (``img_to_idx``) → our ``[B, K, h, w]``."""
    if indices.ndim != 3 or indices.shape[2] != grid[0] * grid[1]:
        raise InvalidInputError(f"official indices must be [B, K, {grid[0] * grid[1]}] for a "
                                f"{grid[0]}x{grid[1]} grid, got {list(indices.shape)}")
    return indices.reshape(indices.shape[0], indices.shape[1], grid[0], grid[1])


def tokens_to_official(tokens: torch.Tensor) -> torch.Tensor:
    """Our ``[B, K, h, w]`` → the official ``[B, K, h·w]``."""
    _check_grid(tokens)
    return tokens.flatten(2)
