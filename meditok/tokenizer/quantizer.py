"""Multi-codebook cosine vector quantiser with a straight-through estimator.

The latent (``vocab_width`` = 64 in the release) is split into ``num_codebooks`` contiguous
chunks (8 dims each); chunk *i* is quantised by its own codebook of ``codebook_size`` vectors.
Both the chunk and the codebook rows are L2-normalised, so nearest neighbour = highest cosine
similarity. Many small independent codebooks avoid the utilisation collapse of one large one
and give a combinatorial vocabulary (4096^8 per position).

Everything here runs in fp32, whatever autocast region the caller is in. The nearest-code
search is :func:`meditok.tokenizer.kernels.nearest_codes`: a fused CPU kernel with indices
identical to the original ``bmm`` + ``argmax`` (kept as ``reference_nearest_codes``), the torch
path on every other device.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from meditok.tokenizer.kernels.search import LOOKUP_ROWS, nearest_codes


class CodebookQuantizer(nn.Module):
    """One sub-codebook: ``codebook`` (raw rows, normalised at lookup) and usage statistics."""

    def __init__(self, size: int, dim: int, beta: float):
        super().__init__()
        self.size = size
        self.beta = beta
        self.codebook = nn.Embedding(size, dim)
        # EMA of the code-usage distribution (persisted, as in the release); statistics only.
        self.register_buffer("vocab_usage", torch.zeros(size))
        self._ema_calls = 0  # not persisted: restarts the EMA warm-up after loading

    def init_codebook(self) -> None:
        """Uniform init in ±(dim^-1/2)/36, the release's training initialisation."""
        bound = self.codebook.embedding_dim ** -0.5 / 36
        nn.init.uniform_(self.codebook.weight, -bound, bound)

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook.weight.float(), dim=-1)

    @torch.no_grad()
    def update_usage(self, idx: torch.Tensor) -> torch.Tensor:
        """Record the batch's code histogram (EMA in ``vocab_usage`` when training) and return
        the usage %: share of codes with probability above 0.01 / size."""
        counts = torch.bincount(idx, minlength=self.size).float()
        if self.training and dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)  # usage over the global batch
        p = counts / counts.sum().clamp_min(1.0)
        if self.training:
            if self._ema_calls == 0:
                self.vocab_usage.copy_(p)
            else:
                momentum = 0.9 if self._ema_calls < 100 else 0.99
                self.vocab_usage.mul_(momentum).add_(p, alpha=1 - momentum)
            self._ema_calls += 1
        return (p > 0.01 / self.size).float().mean() * 100


class MultiCodebookQuantizer(nn.Module):
    """``num_codebooks`` independent :class:`CodebookQuantizer` over contiguous latent chunks."""

    #: Rows scored per batched matmul by the reference search: bounds the [K, rows,
    #: codebook_size] similarity tensor (8 x 1024 x 4096 fp32 = 128 MiB).
    LOOKUP_ROWS = LOOKUP_ROWS

    def __init__(self, num_codebooks: int, codebook_size: int, vocab_width: int, beta: float = 0.25):
        super().__init__()
        if vocab_width % num_codebooks:
            raise ValueError("vocab_width must be divisible by num_codebooks")
        self.num_codebooks = num_codebooks
        self.code_dim = vocab_width // num_codebooks
        self.codebooks = nn.ModuleList(
            CodebookQuantizer(codebook_size, self.code_dim, beta) for _ in range(num_codebooks)
        )

    def _normalized_chunks(self, z: torch.Tensor) -> torch.Tensor:
        """[B, L, K*d] → unit-norm chunks [K, B*L, d] (fp32)."""
        flat = z.float().reshape(-1, self.num_codebooks, self.code_dim)
        return F.normalize(flat, dim=-1).transpose(0, 1)

    def _lookup(self, f: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
        """Nearest code (highest cosine) per row of f ``[K, N, d]`` among books ``[K, V, d]``.

        Exact: the same indices as ``argmax(bmm(f, booksᵀ))`` in ``LOOKUP_ROWS`` chunks (ties
        to the smallest index), computed by the fused kernel on CPU when it is built.
        """
        return nearest_codes(f, books, self.LOOKUP_ROWS)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training path. ``z`` [B, L, vocab_width] → (STE latents, indices [B, K, L],
        mean vq loss, usage % per codebook [K])."""
        b, n, _ = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            f = self._normalized_chunks(z)  # [K, N, d]
            books = self.codebook_vectors()  # [K, V, d], differentiable (codebook term)
            idx = self._lookup(f, books)  # [K, N]
            q = torch.stack([F.embedding(idx[k], books[k]) for k in range(self.num_codebooks)])
            beta = self.codebooks[0].beta
            # commitment (beta, moves the encoder) + codebook term (moves the codes); the mean
            # over all elements equals the mean over sub-codebooks of their own MSEs.
            loss = beta * F.mse_loss(f, q.detach()) + F.mse_loss(q, f.detach())
            out = f + (q - f).detach()
            usage = torch.stack([cb.update_usage(idx[k]) for k, cb in enumerate(self.codebooks)])
            out = out.transpose(0, 1).reshape(b, n, -1)
            return out, idx.reshape(self.num_codebooks, b, n).transpose(0, 1), loss, usage

    @torch.no_grad()
    def latents_to_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Inference path (no statistics updated): [B, L, vocab_width] → [B, K, L] int64."""
        b, n, _ = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            idx = self._lookup(self._normalized_chunks(z), self.codebook_vectors())
        return idx.reshape(self.num_codebooks, b, n).transpose(0, 1)

    def indices_to_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """[B, K, L] (or [B, K, h, w]) → concatenated unit-norm code vectors [B, L, vocab_width]."""
        b, k = indices.shape[:2]
        if k != self.num_codebooks:
            raise ValueError(f"expected {self.num_codebooks} sub-codebooks, got {k}")
        flat = indices.reshape(b, k, -1)
        vecs = [F.embedding(flat[:, i], cb.normalized_codebook()) for i, cb in enumerate(self.codebooks)]
        return torch.cat(vecs, dim=-1)

    def codebook_vectors(self) -> torch.Tensor:
        """All normalised code vectors, [num_codebooks, codebook_size, code_dim]."""
        return torch.stack([cb.normalized_codebook() for cb in self.codebooks])
