"""Causal attention projections around the quantiser (``quant_proj`` / ``post_quant_proj``).

The released weights were trained with *causal* attention over the raster token order
(kept for compatibility with autoregressive use), so perturbing a later token never changes
an earlier output. In the down-projection the heads are averaged instead of concatenated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meditok.tokenizer.layers import GeGluMlp


class CausalAttention(nn.Module):
    """Multi-head causal attention from ``in_dim`` to ``out_dim`` with BEiT-style biases.

    ``qkv`` has no bias; learned ``q_bias`` / ``v_bias`` and a zero key bias are added instead
    (a key bias cancels in softmax, so it is fixed at zero).
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int):
        super().__init__()
        inner = max(in_dim, out_dim)
        if inner % num_heads:
            raise ValueError(f"attention width {inner} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = inner // num_heads
        self.average_heads = out_dim < in_dim
        if self.average_heads and self.head_dim != out_dim:
            raise ValueError(
                f"down-projection averages heads: in_dim/heads ({self.head_dim}) must equal out_dim ({out_dim})"
            )
        self.qkv = nn.Linear(in_dim, inner * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(inner))
        self.v_bias = nn.Parameter(torch.zeros(inner))
        self.register_buffer("zero_k_bias", torch.zeros(inner))
        self.proj = nn.Linear(out_dim if self.average_heads else inner, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, heads, N, head_dim]
        out = out.mean(1) if self.average_heads else out.transpose(1, 2).reshape(b, n, -1)
        return self.proj(out)


class AttnProjection(nn.Module):
    """``h = proj(LN3(x)) + CausalAttn(LN1(x)); out = h + GeGluMlp(LN2(h))``.

    These three LayerNorms use PyTorch's default eps (1e-5), unlike the rest of the model.
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        self.attn = CausalAttention(in_dim, out_dim, num_heads)
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm3 = nn.LayerNorm(in_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = GeGluMlp(out_dim, out_dim * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.norm3(x)) + self.attn(self.norm1(x))
        return h + self.mlp(self.norm2(h))
