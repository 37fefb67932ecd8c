"""Data-parallel training across processes (``torchrun``): rank discovery and the few collectives kdlab needs.

Launch with ``torchrun --nproc_per_node N -m kdlab.cli train-teacher ...`` (NCCL on GPUs, gloo on CPUs).
``data.batch_size`` stays the *global* batch: each of the N ranks takes ``batch_size / N`` images of the
same seeded permutation (a DistributedSampler without the sampler). Gradients are averaged by DDP;
contrastive memories (the intra cache, CRD banks, CoCoRD queues) are updated with the keys gathered
from every rank, so every rank holds the same memory. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(use_cuda: bool) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local)


def current() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def gather_cat(t: Tensor) -> Tensor:
    """Concatenate equally shaped tensors from every rank along dim 0, in rank order (no gradient)."""
    info = current()
    if not info.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(info.world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (keeps ranks stopping together)."""
    if not current().enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
