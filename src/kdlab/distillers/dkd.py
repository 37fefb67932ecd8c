"""DKD (Zhao et al., CVPR 2022): KD decoupled into target-class (TCKD) and non-target (NCKD) parts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.config import DKDConfig
from kdlab.distillers._common import full_precision
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext, register_distiller


def _binary(p: Tensor, gt: Tensor) -> Tensor:
    """``[p_target, Σ_{k≠target} p_k]`` per row, shape ``(B, 2)``."""
    return torch.stack([(p * gt).sum(1), (p * ~gt).sum(1)], dim=1)


def dkd_parts(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """Unweighted ``(TCKD, NCKD)``, each ``T² · Σ KL / B`` (mdistiller's reduction).

    TCKD is the KL between the binary (target, rest) distributions; NCKD the KL between the softmaxes
    over the non-target classes only.
    """
    with full_precision(student_logits):
        s = student_logits.float() / T
        t = teacher_logits.float() / T
        b, c = s.shape
        gt = F.one_hot(labels, c).bool()
        b_s = _binary(F.softmax(s, dim=1), gt)
        b_t = _binary(F.softmax(t, dim=1), gt)
        tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * (T * T) / b
        if c > 1:
            other = ~gt
            s_nt = s[other].view(b, c - 1)
            t_nt = t[other].view(b, c - 1)
            nckd = F.kl_div(F.log_softmax(s_nt, dim=1), F.softmax(t_nt, dim=1), reduction="sum") * (T * T) / b
        else:
            nckd = s.new_zeros(())
    return tckd, nckd


def dkd_warmup(progress: float, warmup: int) -> float:
    """Linear warm-up by epochs: ``min(e / warmup, 1)`` with ``e = floor(progress) + 1`` the 1-based epoch
    (mdistiller's ``min(epoch / WARMUP, 1)``, constant within an epoch); 1 when ``warmup`` is 0."""
    if warmup <= 0:
        return 1.0
    return min((math.floor(max(progress, 0.0)) + 1) / warmup, 1.0)


@register_distiller("dkd")
class DKD(DistillLoss):
    """Config: ``distill.dkd.weight`` (1), ``.alpha`` (1), ``.beta`` (8), ``.T`` (4), ``.warmup`` (20 epochs)."""

    def __init__(self, cfg: DKDConfig, ctx: DistillContext):
        super().__init__()
        self.weight, self.alpha, self.beta, self.T, self.warmup = cfg.weight, cfg.alpha, cfg.beta, cfg.T, cfg.warmup

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        tckd, nckd = dkd_parts(s.logits, t.logits, batch.labels, self.T)
        ramp = dkd_warmup(step.progress, self.warmup)
        return {"dkd": (self.weight * ramp) * (self.alpha * tckd + self.beta * nckd)}
