"""Codebook statistics over a whole set: usage and perplexity per sub-codebook.

Token counts are accumulated per sub-codebook over every batch (``torch.bincount``) before any
statistic is taken, so a code used once anywhere in the set counts as used. Perplexity is
``exp(H)`` of the code frequency distribution (natural log): the effective number of codes
in use. Used by in-training validation and by ``meditok eval codebook`` alike.
"""
from __future__ import annotations

import math
from typing import Any

import torch


class CodeUsage:
    """Accumulates per-sub-codebook token counts over many batches."""

    def __init__(self, num_codebooks: int, codebook_size: int):
        self.counts = torch.zeros(num_codebooks, codebook_size, dtype=torch.long)

    def update(self, tokens: torch.Tensor) -> None:
        """Add a batch of token indices ``[B, K, h, w]`` (or ``[B, K, L]``)."""
        k, size = self.counts.shape
        if tokens.ndim < 2 or tokens.shape[1] != k:
            raise ValueError(f"expected tokens [B, {k}, ...], got {list(tokens.shape)}")
        flat = tokens.detach().cpu().long().transpose(0, 1).reshape(k, -1)
        for i in range(k):
            self.counts[i] += torch.bincount(flat[i], minlength=size)

    def usage(self) -> list[float]:
        """Percent of codes used at least once, per sub-codebook."""
        return [float(v) for v in 100.0 * (self.counts > 0).double().mean(1)]

    def perplexity(self) -> list[float]:
        """``exp(entropy)`` of the code distribution, per sub-codebook."""
        p = self.counts.double() / self.counts.sum(1, keepdim=True).clamp_min(1)
        entropy = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1)
        return [float(v) for v in entropy.exp()]

    def summary(self) -> dict[str, Any]:
        """Per-sub-codebook and mean usage (% of codes used), perplexity and bits per code."""
        usage, ppl = self.usage(), self.perplexity()
        return {"usage_percent": usage, "perplexity": ppl,
                "mean_usage_percent": sum(usage) / len(usage),
                "mean_perplexity": sum(ppl) / len(ppl),
                "bits_per_code": sum(math.log2(max(v, 1.0)) for v in ppl) / len(ppl),
                "tokens_per_codebook": int(self.counts[0].sum()),
                "codebook_size": int(self.counts.shape[1])}
