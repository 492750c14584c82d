"""One readable decoder-only transformer over MedITok token grids (LlamaGen style), shared by
the synthesis and in-context families.

A sequence is ``[B, L, K]``: L grid positions in order, each carrying K sub-codes (one per
sub-codebook, each in ``0 … V-1``). The model has three parts:

* **Conditioning**: one class token (``LabelEmbedder``, ``num_classes + 1`` rows, the last is
  the null class used for label dropout and classifier-free guidance).
* **Trunk**: RMSNorm, SwiGLU, bias-free linears, 2-D rotary embeddings over the positions'
  (row, col) coordinates (the class token gets no rotation). The embedding of a position is the
  sum of K per-sub-codebook embeddings. The trunk sees ``[class, pos 0 … L-2]`` and its output
  at input index i predicts position i (teacher forcing).
* **Factorised head**: for each position a small causal transformer runs over
  ``[h_p, E'_0(c_p0), …, E'_{K-2}(c_p,K-2)]`` and a shared ``Linear(dim → V)`` (zero-initialised,
  so the loss starts at ``ln V``) predicts sub-code j at step j — the vocabulary per step is V,
  not V^K.

Sampling uses KV caches in trunk and head, temperature / top-k / top-p, CFG
``uncond + s·(cond − uncond)`` per sub-code, and an optional prefix of known positions (the
in-context family prompts with three images and generates the fourth).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from meditok.errors import InvalidInputError
from meditok.gpt.sampling import SAMPLERS, sample_logits
from meditok.utils.config import Config, choose_preset
from meditok.utils.hub import PretrainedMixin


@dataclass
class GPTConfig(Config):
    """Architecture of a token GPT (``gpt_preset`` gives the named sizes)."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    #: Transformer blocks of the factorised head.
    head_depth: int = 1
    #: SwiGLU hidden width; ``None``: LlamaGen's rule (2/3 · 4 · dim, rounded up to 256).
    ffn_hidden: int | None = None
    num_codebooks: int = 8
    codebook_size: int = 4096
    #: Extent of the (row, col) coordinates and, with ``tile``, the position order.
    grid: tuple[int, int] = (16, 16)
    #: ``None``: raster order over ``grid``. ``(th, tw)``: the grid is a canvas of tiles (e.g.
    #: the in-context 2x2 canvas of 8x8 token images), ordered tile by tile, raster inside.
    tile: tuple[int, int] | None = None
    num_classes: int = 6
    class_dropout: float = 0.1
    #: Token, residual and FFN dropout.
    dropout: float = 0.1
    #: The head reuses the trunk's input tables E_0 … E_{K-2} instead of K-1 tables of its own
    #: (the released GPT-B has its own; sharing halves the embeddings of a small CPU model).
    share_embeddings: bool = False
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def hidden(self) -> int:
        if self.ffn_hidden:
            return int(self.ffn_hidden)
        return int(math.ceil(2 * 4 * self.dim / 3 / 256) * 256)

    def validate(self) -> None:
        if self.dim % self.heads or (self.dim // self.heads) % 4:
            raise ValueError(f"gpt: dim {self.dim} / heads {self.heads} must be a multiple of 4 (2-D RoPE)")
        for name in ("dim", "depth", "heads", "num_codebooks", "codebook_size", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"gpt.{name} must be >= 1")
        if self.dim * self.depth > 1 << 20 or self.codebook_size > 1 << 20 or self.seq_len > 1 << 16:
            raise ValueError("gpt: configuration far beyond any supported size")
        if self.tile is not None and (self.grid[0] % self.tile[0] or self.grid[1] % self.tile[1]):
            raise ValueError(f"gpt.grid {self.grid} is not a whole number of tiles {self.tile}")


def gpt_preset(name: str, **overrides: Any) -> GPTConfig:
    """``tiny`` (tests), ``small`` (trains on 2 CPU cores), ``B`` (the paper's LlamaGen-B)."""
    presets = {
        "tiny": GPTConfig(dim=32, depth=2, heads=2, num_codebooks=4, codebook_size=64, grid=(4, 4),
                          num_classes=3, dropout=0.0),
        "small": GPTConfig(dim=192, depth=6, heads=6, grid=(8, 8), num_classes=7, dropout=0.1,
                           share_embeddings=True),
        "B": GPTConfig(),
    }
    return choose_preset(presets, name, "GPT", **overrides)


# ----------------------------------------------------------------------------- positions
def position_ids(cfg: GPTConfig) -> torch.Tensor:
    """``[L, 2]`` (row, col) of each sequence position (raster, or tile by tile)."""
    h, w = cfg.grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    if cfg.tile is None:
        return torch.stack([rows.flatten(), cols.flatten()], 1)
    th, tw = cfg.tile
    order = []
    for ti in range(h // th):
        for tj in range(w // tw):
            r, c = rows[ti * th:(ti + 1) * th, tj * tw:(tj + 1) * tw], cols[ti * th:(ti + 1) * th, tj * tw:(tj + 1) * tw]
            order.append(torch.stack([r.flatten(), c.flatten()], 1))
    return torch.cat(order)


def rope_tables(pos: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin ``[N, head_dim/2]``: half the rotation pairs follow the row, half the column.
    A row of ``pos`` equal to ``-1`` (the class token) gets no rotation."""
    pairs = head_dim // 2
    n_row = pairs // 2
    freqs = lambda n: base ** (-torch.arange(n, dtype=torch.float64) / n)  # noqa: E731
    ang = torch.cat([pos[:, :1].double() * freqs(n_row), pos[:, 1:].double() * freqs(pairs - n_row)], 1)
    ang[pos[:, 0] < 0] = 0.0
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of ``x`` ``[B, H, N, hd]`` by the angles of each position."""
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)
    return out.type_as(x)


# ----------------------------------------------------------------------------- blocks
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class KVCache:
    """Preallocated keys / values of one attention layer for incremental decoding."""

    def __init__(self, batch: int, heads: int, length: int, head_dim: int, like: torch.Tensor):
        self.k = like.new_zeros(batch, heads, length, head_dim)
        self.v = like.new_zeros(batch, heads, length, head_dim)
        self.size = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = k.shape[2]
        self.k[:, :, self.size:self.size + n] = k
        self.v[:, :, self.size:self.size + n] = v
        self.size += n
        return self.k[:, :, :self.size], self.v[:, :, :self.size]


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.dim // cfg.heads
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.wqkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            start = cache.size
            k, v = cache.append(k, v)
            # query i (absolute start + i) may see keys 0 … start + i; one new query sees all of
            # them, and without a mask SDPA takes its faster unmasked path
            mask = None if n == 1 else \
                torch.ones(n, k.shape[2], dtype=torch.bool, device=x.device).tril(start)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.drop(self.wo(out.transpose(1, 2).reshape(b, n, d)))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) · w3 x)``, bias-free."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.w2 = nn.Linear(cfg.hidden, cfg.dim, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, rope=None, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rope, cache)
        return x + self.feed_forward(self.ffn_norm(x))


@dataclass
class GPTOutput:
    loss: torch.Tensor               #: mean cross-entropy over the supervised sub-codes
    logits: torch.Tensor | None      #: [B, L, K, V] when asked for


# ----------------------------------------------------------------------------- the model
class GPT(PretrainedMixin, nn.Module):
    """Class-conditional autoregressive model of ``[B, L, K]`` token sequences."""

    config_class = GPTConfig
    model_type = "meditok-gpt"

    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        k, v, d = cfg.num_codebooks, cfg.codebook_size, cfg.dim
        self.cls_embedding = nn.Embedding(cfg.num_classes + 1, d)  # last row: the null class
        self.tok_embeddings = nn.ModuleList(nn.Embedding(v, d) for _ in range(k))
        self.head_embeddings = None if cfg.share_embeddings else \
            nn.ModuleList(nn.Embedding(v, d) for _ in range(k - 1))
        self.tok_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(d, cfg.norm_eps)
        self.head_layers = nn.ModuleList(Block(cfg) for _ in range(cfg.head_depth))
        self.head_norm = RMSNorm(d, cfg.norm_eps)
        self.output = nn.Linear(d, v, bias=True)
        pos = torch.cat([torch.full((1, 2), -1), position_ids(cfg)])  # class token first
        cos, sin = rope_tables(pos, d // cfg.heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        # zero output layer: every sub-code starts uniform, loss = ln V (LlamaGen does the same)
        nn.init.zeros_(self.output.weight)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ pieces
    def _head_table(self, j: int) -> nn.Embedding:
        return self.tok_embeddings[j] if self.head_embeddings is None else self.head_embeddings[j]

    def embed_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, K]`` sub-codes → ``[B, N, dim]``: the sum of the K sub-code embeddings."""
        return sum(emb(tokens[..., j]) for j, emb in enumerate(self.tok_embeddings))

    def _check(self, tokens: torch.Tensor, cond: torch.Tensor) -> None:
        cfg = self.config
        if tokens.ndim != 3 or tokens.shape[1] != cfg.seq_len or tokens.shape[2] != cfg.num_codebooks:
            raise InvalidInputError(f"tokens must be [B, {cfg.seq_len}, {cfg.num_codebooks}], "
                                    f"got {list(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= cfg.codebook_size:
            raise InvalidInputError(f"token values must lie in [0, {cfg.codebook_size})")
        if cond.shape != tokens.shape[:1] or int(cond.min()) < 0 or int(cond.max()) > cfg.num_classes:
            raise InvalidInputError(f"cond must be [B] class ids in [0, {cfg.num_classes}]")

    def head_logits(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Factorised head over all positions at once: ``h`` ``[N, dim]``, ``codes`` ``[N, K]``
        → logits ``[N, K, V]`` (step j sees h and sub-codes 0 … j-1)."""
        k = self.config.num_codebooks
        seq = [h[:, None]] + [self._head_table(j)(codes[:, j])[:, None] for j in range(k - 1)]
        x = torch.cat(seq, 1)
        for blk in self.head_layers:
            x = blk(x)
        return self.output(self.head_norm(x))

    # ------------------------------------------------------------------ training
    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, loss_mask: torch.Tensor | None = None,
                return_logits: bool = False) -> GPTOutput:
        """Teacher-forced loss: mean cross-entropy of every sub-code of every position
        (``loss_mask`` ``[B, L]`` restricts it to the positions that are True)."""
        self._check(tokens, cond)
        b, n, k = tokens.shape
        if self.training and self.config.class_dropout > 0:
            drop = torch.rand(b, device=cond.device) < self.config.class_dropout
            cond = torch.where(drop, torch.full_like(cond, self.null_class), cond)
        x = torch.cat([self.cls_embedding(cond)[:, None], self.embed_positions(tokens[:, :-1])], 1)
        x = self.tok_dropout(x)
        rope = (self.rope_cos[:n], self.rope_sin[:n])
        for blk in self.layers:
            x = blk(x, rope)
        h = self.norm(x)  # [B, L, dim]: h[:, p] predicts position p
        if loss_mask is not None:
            if loss_mask.shape != (b, n):
                raise InvalidInputError(f"loss_mask must be [{b}, {n}], got {list(loss_mask.shape)}")
            sel = loss_mask.reshape(-1).bool()
        else:
            sel = torch.ones(b * n, dtype=torch.bool, device=tokens.device)
        flat_codes = tokens.reshape(b * n, k)
        logits = self.head_logits(h.reshape(b * n, -1)[sel], flat_codes[sel])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), flat_codes[sel].reshape(-1))
        full = None
        if return_logits:
            full = logits.new_zeros(b * n, k, logits.shape[-1])
            full[sel] = logits
            full = full.reshape(b, n, k, -1)
        return GPTOutput(loss, full)

    # ------------------------------------------------------------------ sampling
    def _guided(self, logits: torch.Tensor, cfg_scale: float, b: int) -> torch.Tensor:
        if cfg_scale == 1.0:
            return logits
        cond, uncond = logits[:b], logits[b:]
        return uncond + cfg_scale * (cond - uncond)

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, prefix: torch.Tensor | None = None, *,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 cfg_scale: float = 1.0, generator: torch.Generator | None = None,
                 use_cache: bool = True, sampler: str = "multinomial") -> torch.Tensor:
        """Sample ``[B, L, K]`` sequences for class ids ``cond`` ``[B]``.

        ``prefix`` ``[B, P, K]``: positions 0 … P-1 are given (not sampled). ``cfg_scale`` 1 is
        plain conditional sampling; otherwise the null-class branch runs beside it.
        ``use_cache=False`` recomputes the whole prefix at every step (reference / benchmark).
        ``sampler``: ``multinomial`` (``torch.multinomial``), ``inverse_cdf`` (one uniform
        number per draw against the cumulative distribution: the same distribution, other
        draws for a seed, on CPU ~10x cheaper than multinomial, but not robust to rounding:
        cached and recomputed sampling can part after ~10^4 draws) or ``gumbel`` (Gumbel-max
        on the logits: exact, nearly as cheap as inverse-CDF, as robust as multinomial).
        """
        if sampler not in SAMPLERS:
            raise InvalidInputError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        cfg = self.config
        b, n, k = cond.shape[0], cfg.seq_len, cfg.num_codebooks
        device = self.rope_cos.device
        out = torch.zeros(b, n, k, dtype=torch.long, device=device)
        p0 = 0
        if prefix is not None:
            if prefix.ndim != 3 or prefix.shape[0] != b or prefix.shape[2] != k or prefix.shape[1] >= n:
                raise InvalidInputError(f"prefix must be [B, P < {n}, {k}], got {list(prefix.shape)}")
            p0 = prefix.shape[1]
            out[:, :p0] = prefix
        guided = cfg_scale != 1.0
        cls = cond.to(device)
        if guided:
            cls = torch.cat([cls, torch.full_like(cls, self.null_class)])
        rows = cls.shape[0]
        caches = [KVCache(rows, cfg.heads, n, cfg.dim // cfg.heads, self.rope_cos) for _ in self.layers] \
            if use_cache else None
        # the trunk input so far: class token + embeddings of known positions 0 … p-1
        for p in range(p0, n):
            if use_cache:
                start = caches[0].size
                if start == 0:  # prefill: class token and the whole prefix
                    known = out[:, :p].repeat(2 if guided else 1, 1, 1)
                    x = torch.cat([self.cls_embedding(cls)[:, None], self.embed_positions(known)], 1)
                else:
                    x = self.embed_positions(out[:, p - 1:p].repeat(2 if guided else 1, 1, 1))
                stop = start + x.shape[1]
                rope = (self.rope_cos[start:stop], self.rope_sin[start:stop])
                for blk, cache in zip(self.layers, caches):
                    x = blk(x, rope, cache)
            else:
                known = out[:, :p].repeat(2 if guided else 1, 1, 1)
                x = torch.cat([self.cls_embedding(cls)[:, None], self.embed_positions(known)], 1)
                rope = (self.rope_cos[:p + 1], self.rope_sin[:p + 1])
                for blk in self.layers:
                    x = blk(x, rope)
            h = self.norm(x[:, -1:])  # [rows, 1, dim] predicts position p
            out[:, p] = self._sample_head(h, cfg_scale, b, temperature, top_k, top_p, generator, use_cache,
                                          sampler)
        return out

    def _sample_head(self, h: torch.Tensor, cfg_scale: float, b: int, temperature: float,
                     top_k: int, top_p: float, generator: torch.Generator | None,
                     use_cache: bool, sampler: str = "multinomial") -> torch.Tensor:
        """Sample the K sub-codes of one position, one after another."""
        cfg = self.config
        rows, k = h.shape[0], cfg.num_codebooks
        codes = torch.zeros(b, k, dtype=torch.long, device=h.device)
        caches = [KVCache(rows, cfg.heads, k, cfg.dim // cfg.heads, h) for _ in self.head_layers] \
            if use_cache else None
        # the temperature scales the [rows, dim] input of the output layer (and its bias), not
        # the [rows, V] logits: the same logits / T (CFG is linear), V / dim times cheaper
        inv_t = 1.0 / temperature if temperature > 0 else 1.0
        bias = None if self.output.bias is None else self.output.bias * inv_t
        seq = h
        for j in range(k):
            x = seq[:, -1:] if use_cache else seq
            for i, blk in enumerate(self.head_layers):
                x = blk(x, None, caches[i] if use_cache else None)
            hn = self.head_norm(x[:, -1])
            logits = self._guided(F.linear(hn * inv_t if inv_t != 1.0 else hn, self.output.weight, bias),
                                  cfg_scale, b)
            codes[:, j] = sample_logits(logits, temperature if temperature <= 0 else 1.0, top_k, top_p,
                                        generator, sampler)
            if j < k - 1:
                nxt = self._head_table(j)(codes[:, j]).repeat(rows // b, 1)[:, None]
                seq = torch.cat([seq, nxt], 1)
        return codes
