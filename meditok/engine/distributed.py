"""torchrun / DDP plumbing: process-group setup from the environment, rank helpers, reductions.

``torchrun --nproc_per_node N -m meditok.cli tokenizer train CONFIG`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`init_distributed` reads them and picks
NCCL on GPU and gloo on CPU. A plain ``meditok train`` stays single-process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: Whether this module initialised the process group (and must destroy it).
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any).

    An already-initialised group (e.g. from a test harness) is reused as it is.
    """
    if is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", dist.get_rank())), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        if not torch.cuda.is_available():  # torch.cuda.set_device would fail with an AttributeError
            from meditok.errors import DeviceError

            raise DeviceError("--device cuda: CUDA is not available on this machine; for "
                              "torchrun on CPU pass --device cpu (gloo backend)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            timeout=timedelta(minutes=30))
    return DistInfo(rank, world, local_rank, True)


def cleanup(info: DistInfo, clean: bool = True) -> None:
    """Release the process group this process created (a group it joined is left alone).

    Call it after dropping the DDP wrappers: a wrapper freed after ``destroy_process_group``
    hung one rank at exit now and then on two loaded cores. ``clean``: every rank finished the
    run, so they first meet at a barrier and leave together; after a failure there is no barrier
    (the other ranks may never reach it)."""
    if info.owns_group and is_initialized():
        if clean and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (identity when single-process)."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (used to stop every rank together on NaN)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    all_reduce_sum(t)
    return bool(t.item() > 0)
