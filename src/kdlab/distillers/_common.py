"""Small helpers shared by the distillation terms (not part of the public API)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.config import ConfigError


def full_precision(t: Tensor) -> AbstractContextManager:
    """Disable autocast for loss arithmetic (exp/log at low temperatures is unsafe in bf16/fp16)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


_HALF = (torch.float16, torch.bfloat16)


def wide(t: Tensor) -> Tensor:
    """``t`` in the precision a loss computes in: half precision (bf16/fp16) is promoted to float32,
    float32 and float64 are kept as they are (so float64 inputs give float64 losses, exact to 1e-12)."""
    return t.float() if t.dtype in _HALF else t


def standardize_logits(z: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample z-score of logits ``(z - mean) / (eps + std)`` over the last dimension, with the unbiased
    (n-1) standard deviation and ``eps`` added to the std, not under a root (Sun et al., CVPR 2024,
    logit standardization; the reference's ``normalize``)."""
    return (z - z.mean(dim=-1, keepdim=True)) / (eps + z.std(dim=-1, keepdim=True))


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool whichever of two ``(B, C, H, W)`` maps is larger to the other's size.

    With equal sizes both come back untouched (RepDistiller's AT convention, generalised to H != W).
    """
    ha, wa = a.shape[-2:]
    hb, wb = b.shape[-2:]
    if (ha, wa) == (hb, wb):
        return a, b
    if ha * wa > hb * wb:
        return F.adaptive_avg_pool2d(a, (hb, wb)), b
    return a, F.adaptive_avg_pool2d(b, (ha, wa))


def stage_index(index: int, n: int, what: str) -> int:
    """Resolve a possibly negative stage index into ``range(n)`` or raise a one-line error."""
    i = index + n if index < 0 else index
    if not 0 <= i < n:
        raise ConfigError(f"{what}: stage index {index} is out of range for a network with {n} stages "
                          f"(use -{n}..{n - 1})")
    return i


@torch.no_grad()
def ema_(targets: Iterable[Tensor], sources: Iterable[Tensor], momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * source``, i.e. target moves by (1-m)(source-target)."""
    targets, sources = list(targets), list(sources)
    if not targets or momentum >= 1.0:
        return
    torch._foreach_lerp_(targets, sources, 1.0 - momentum)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False`` on every parameter."""
    import copy

    clone = copy.deepcopy(module)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone
