"""Image–teacher alignment losses: symmetric InfoNCE (with a differentiable all-gather under
torch.distributed), cosine alignment (the paper's ablation) and retrieval accuracy."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of the summed gradient.

    Every rank's loss depends on every rank's features, so the gradient that reaches a local
    feature is the sum over ranks of the gradients flowing into its gathered copy. An
    ``all_reduce`` (SUM) then slicing works on every backend (gloo has no reduce-scatter).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        rank = dist.get_rank()
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        buffers = [x.new_empty((n, *x.shape[1:])) for n in sizes]
        dist.all_gather(buffers, x.contiguous())
        return torch.cat(buffers, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start:ctx.stop], None


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather ``x`` ``[B_local, D]`` from every rank with gradient.

    Returns the concatenation over ranks and the offset of this rank's rows in it (so
    per-rank batch sizes may differ). Without an initialised process group it is the identity.
    """
    if not _distributed():
        return x, 0
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    sizes_int = [int(s.item()) for s in sizes]
    return _GatherWithGrad.apply(x, sizes_int), sum(sizes_int[: dist.get_rank()])


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE ``(CE(s·I·Tᵀ, y) + CE(s·T·Iᵀ, y)) / 2``.

    ``forward(image_features, text_features, logit_scale)`` takes L2-normalised features
    ``[B, D]`` and the already exponentiated scale ``s`` (its clamp is the trainer's job).
    Under torch.distributed each rank scores its local rows against the gathered rows of the
    other modality (labels ``arange(B) + offset``), i.e. a *local* loss. With DDP's gradient
    averaging this equals the loss and gradient of one process on the concatenated batch.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor | float) -> torch.Tensor:
        if image_features.shape != text_features.shape or image_features.dim() != 2:
            raise ValueError(
                f"expected two [B, D] feature tensors of equal shape, got "
                f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
        # fp32 for the similarity matrix: bf16 logits at scale 100 lose the ranking signal.
        img, txt = image_features.float(), text_features.float()
        all_img, offset = gather_with_grad(img)
        all_txt, _ = gather_with_grad(txt)
        labels = torch.arange(img.shape[0], device=img.device) + offset
        logits_per_image = logit_scale * img @ all_txt.t()
        logits_per_text = logit_scale * txt @ all_img.t()
        return 0.5 * (F.cross_entropy(logits_per_image, labels)
                      + F.cross_entropy(logits_per_text, labels))


class CosineAlignmentLoss(nn.Module):
    """``mean(1 - cos(I, T))`` — the per-pair alignment used as an ablation in the paper."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return (1.0 - F.cosine_similarity(image_features.float(), text_features.float(), dim=-1)).mean()


@torch.no_grad()
def alignment_accuracy(image_features: torch.Tensor, text_features: torch.Tensor,
                       direction: str = "i2t") -> float:
    """Top-1 retrieval accuracy within the (local) batch, for logging.

    ``i2t``: fraction of images whose most similar teacher embedding is their own pair;
    ``t2i``: the reverse; ``both``: the mean of the two.
    """
    sim = image_features.float() @ text_features.float().t()
    target = torch.arange(sim.shape[0], device=sim.device)
    i2t = (sim.argmax(dim=1) == target).float().mean().item()
    t2i = (sim.argmax(dim=0) == target).float().mean().item()
    if direction == "i2t":
        return i2t
    if direction == "t2i":
        return t2i
    if direction == "both":
        return 0.5 * (i2t + t2i)
    raise ValueError(f"direction must be 'i2t', 't2i' or 'both', got {direction!r}")
