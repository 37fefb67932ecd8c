"""SP (Tung & Mori, ICCV 2019): preserve the batch similarity (Gram) structure of the last stage."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.config import Strict
from kdlab.distillers._common import full_precision, wide
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class SPConfig(Strict):
    weight: float = Field(3000.0, ge=0)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """``‖rownorm(F_t F_tᵀ) − rownorm(F_s F_sᵀ)‖²_F / B²`` with F the flattened features."""
    with full_precision(f_s):
        b = f_s.shape[0]
        s = wide(f_s.flatten(1))
        t = wide(f_t.flatten(1))
        g_s = F.normalize(s @ s.t(), dim=1)
        g_t = F.normalize(t @ t.t(), dim=1)
        return (g_t - g_s).pow(2).sum() / (b * b)


class SP(DistillLoss):
    """Config: ``distill.sp.weight`` (3000). Uses ``stages[-1]`` (RepDistiller's ``feat[-2]``)."""

    def __init__(self, cfg: SPConfig, ctx: DistillContext):
        super().__init__()
        self.weight = cfg.weight

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        return {"sp": self.weight * sp_loss(s.stages[-1], t.stages[-1].detach())}


KNOBS = (
    knob("sp.weight", "distill.sp.weight", "float", ["sp weight", "similarity preserving weight"], "weight of SP", off_value=0.0,
       requires="distill.methods~sp"),
)

register(MethodSpec(
    name="sp", role="distiller", config=SPConfig, build=SP, knobs=KNOBS,
    summary="Tung & Mori, ICCV 2019: batch similarity (Gram) structure of the last stage",
    phrases=('sp', 'similarity preserving', 'similarity preserving distillation'),
    list_aliases=('similarity preserving',),
))
