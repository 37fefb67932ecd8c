"""KD (Hinton et al., 2015): KL between temperature-softened teacher and student distributions."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdlab.config import KDConfig
from kdlab.distillers._common import full_precision
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext, register_distiller


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """``T² · Σ_i KL(softmax(t_i/T) ‖ softmax(s_i/T)) / B`` (RepDistiller's DistillKL reduction)."""
    with full_precision(student_logits):
        log_ps = F.log_softmax(student_logits.float() / T, dim=1)
        log_pt = F.log_softmax(teacher_logits.float() / T, dim=1)
        kl = F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)
        return kl * (T * T) / student_logits.shape[0]


@register_distiller("kd")
class KD(DistillLoss):
    """Config: ``distill.kd.T``, ``distill.kd.weight`` (None resolves to 1 here; ``Distillation``
    resolves it to 0.9 when KD is the only method, as RepDistiller's ``-a 0.9``)."""

    def __init__(self, cfg: KDConfig, ctx: DistillContext):
        super().__init__()
        self.T = cfg.T
        self.weight = 1.0 if cfg.weight is None else cfg.weight

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        return {"kd": self.weight * kd_loss(s.logits, t.logits, self.T)}
