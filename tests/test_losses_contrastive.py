"""Contrastive losses, including a 2-process gloo run against the single-process loss."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from meditok.losses import ContrastiveLoss, CosineAlignmentLoss, alignment_accuracy

SCALE = 14.0


def _features(seed: int = 0, b: int = 6, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    txt = F.normalize(img + 0.5 * torch.randn(b, d, generator=g), dim=-1)
    return img, txt


def test_infonce_matches_hand_computation() -> None:
    img, txt = _features()
    loss = ContrastiveLoss()(img, txt, torch.tensor(SCALE))
    sim = SCALE * img @ txt.t()
    n = sim.shape[0]
    i2t = -sum(sim[i, i] - torch.logsumexp(sim[i], 0) for i in range(n)) / n
    t2i = -sum(sim[i, i] - torch.logsumexp(sim[:, i], 0) for i in range(n)) / n
    assert math.isclose(loss.item(), 0.5 * (i2t + t2i).item(), rel_tol=1e-5)
    # Perfect alignment with a large scale gives ~0 loss and accuracy 1.
    assert ContrastiveLoss()(img, img, 100.0).item() < 1e-3
    assert alignment_accuracy(img, img) == 1.0
    assert alignment_accuracy(img, img.roll(1, 0), direction="both") == 0.0


def test_cosine_alignment_loss() -> None:
    img, _ = _features()
    assert CosineAlignmentLoss()(img, img).abs().item() < 1e-6
    assert math.isclose(CosineAlignmentLoss()(img, -img).item(), 2.0, rel_tol=1e-6)


def _worker(rank: int, world: int, init_file: str, img: torch.Tensor, txt: torch.Tensor,
            out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        b = img.shape[0] // world
        li = img[rank * b:(rank + 1) * b].clone().requires_grad_()
        lt = txt[rank * b:(rank + 1) * b].clone().requires_grad_()
        scale = torch.tensor(SCALE, requires_grad=True)
        loss = ContrastiveLoss()(li, lt, scale)
        loss.backward()
        torch.save({"loss": loss.detach(), "gi": li.grad, "gt": lt.grad, "gs": scale.grad},
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_single_process(tmp_path) -> None:
    img, txt = _features(seed=1, b=8)
    out = str(tmp_path / "res")
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), img, txt, out), nprocs=2,
                       join=True, start_method="spawn")
    res = [torch.load(f"{out}.{r}") for r in range(2)]

    fi, ft = img.clone().requires_grad_(), txt.clone().requires_grad_()
    scale = torch.tensor(SCALE, requires_grad=True)
    full = ContrastiveLoss()(fi, ft, scale)
    full.backward()

    # DDP averages over ranks: mean of the local losses / gradients = single-process values.
    assert torch.allclose((res[0]["loss"] + res[1]["loss"]) / 2, full.detach(), atol=1e-6)
    assert torch.allclose((res[0]["gs"] + res[1]["gs"]) / 2, scale.grad, atol=1e-6)
    world = 2
    gi = torch.cat([res[0]["gi"], res[1]["gi"]]) / world
    gt = torch.cat([res[0]["gt"], res[1]["gt"]]) / world
    assert torch.allclose(gi, fi.grad, atol=1e-6)
    assert torch.allclose(gt, ft.grad, atol=1e-6)
    # Each rank's local loss is different (it is not the global loss computed twice).
    assert not torch.allclose(res[0]["loss"], res[1]["loss"])
