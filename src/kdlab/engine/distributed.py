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


def convert_sync_bn(module: torch.nn.Module) -> int:
    """Replace every BatchNorm layer registered under ``module`` by ``SyncBatchNorm``, in place; how many.

    Only registered submodules are reached, so a frozen teacher held outside the module tree
    (``Distillation.teacher``) keeps its own eval-mode BatchNorm. The new layers share the old ones'
    parameters and buffers (same names too), so an optimizer built before and checkpoints stay valid.
    PyTorch's SyncBatchNorm runs on CUDA only (``runtime.sync_bn`` is refused on CPU ranks).
    """
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        raise TypeError("convert_sync_bn works in place on a module that holds BatchNorm layers, not on one")
    before = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return sum(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules()) - before


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (keeps ranks stopping together)."""
    if not current().enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
