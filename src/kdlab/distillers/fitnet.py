"""FitNet (Romero et al., ICLR 2015): regress a teacher stage ("hint") from a student stage."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import Strict
from kdlab.distillers._common import full_precision, match_spatial, stage_index, wide
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class FitNetConfig(Strict):
    weight: float = Field(100.0, ge=0)
    hint_layer: int = Field(2, description="stage index into ModelOutput.stages (negative from the end)")


class HintRegressor(nn.Module):
    """1×1 conv (student channels → teacher channels) + BN + ReLU, sized from the probes.

    This is RepDistiller's ``ConvReg`` for equal spatial sizes. When sizes differ, the larger of the two
    maps is adaptive-average-pooled to the smaller one first (see ``hint_pair``) instead of RepDistiller's
    strided / transposed / valid convolutions.
    """

    def __init__(self, s_channels: int, t_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(s_channels, t_channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(t_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def hint_loss(regressed: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all elements (RepDistiller's HintLoss = ``nn.MSELoss()``)."""
    with full_precision(regressed):
        return F.mse_loss(wide(regressed), wide(target))


class FitNet(DistillLoss):
    """Config: ``distill.fitnet.weight`` (100), ``distill.fitnet.hint_layer`` (2, index into ``stages``)."""

    def __init__(self, cfg: FitNetConfig, ctx: DistillContext):
        super().__init__()
        s_shapes, t_shapes = ctx.student_probe.stage_shapes, ctx.teacher_probe.stage_shapes
        self.s_idx = stage_index(cfg.hint_layer, len(s_shapes), "distill.fitnet.hint_layer (student)")
        self.t_idx = stage_index(cfg.hint_layer, len(t_shapes), "distill.fitnet.hint_layer (teacher)")
        self.weight = cfg.weight
        self.regressor = HintRegressor(s_shapes[self.s_idx][0], t_shapes[self.t_idx][0])

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        f_s, f_t = match_spatial(s.stages[self.s_idx], t.stages[self.t_idx].detach())
        return {"fitnet": self.weight * hint_loss(self.regressor(f_s), f_t)}


KNOBS = (
    knob("fitnet.weight", "distill.fitnet.weight", "float", ["fitnet weight", "hint loss weight", "fitnet loss weight"],
       "weight of the FitNet hint loss", off_value=0.0, requires="distill.methods~fitnet"),
    knob("fitnet.hint_layer", "distill.fitnet.hint_layer", "int", ["hint layer", "fitnet hint layer", "guided layer", "hint stage"],
       "stage index of the FitNet hint", requires="distill.methods~fitnet"),
)

register(MethodSpec(
    name="fitnet", role="distiller", config=FitNetConfig, build=FitNet, knobs=KNOBS,
    summary="Romero et al., ICLR 2015: regress a teacher stage from a student stage",
    phrases=('fitnet', 'fitnets', 'hint learning', 'hint based distillation', 'feature hint'),
    list_aliases=('fitnet', 'hint learning', 'fitnet loss'),
))
