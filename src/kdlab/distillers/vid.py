"""VID (Ahn et al., CVPR 2019): maximise a variational lower bound of the mutual information between
teacher and student stages — a Gaussian likelihood of the teacher map under a regressed mean and a learned
per-channel variance."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import Strict
from kdlab.distillers._common import full_precision, match_spatial
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class VIDConfig(Strict):
    weight: float = Field(1.0, ge=0, description="RepDistiller's -b for vid (1)")
    init_pred_var: float = Field(5.0, gt=0, description="initial per-channel variance σ² (RepDistiller: 5)")
    eps: float = Field(1e-5, gt=0, description="variance floor added after the softplus (RepDistiller: 1e-5)")


def _working_dtype(x: Tensor) -> Tensor:
    """Half-precision inputs are promoted to float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def vid_variance(log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """``σ²_c = log(1 + exp(α_c)) + eps`` (softplus of the free parameter, floored)."""
    return torch.log1p(torch.exp(log_scale)) + eps


def vid_loss(pred_mean: Tensor, target: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """Mean over every element of ``0.5 · ((μ - t)² / σ²_c + log σ²_c)`` for ``(B, C, H, W)`` maps and a
    ``(C,)`` free variance parameter (RepDistiller's ``VIDLoss`` after its regressor)."""
    var = vid_variance(log_scale, eps).view(1, -1, 1, 1)
    return (0.5 * ((pred_mean - target).pow(2) / var + torch.log(var))).mean()


def initial_log_scale(init_pred_var: float, eps: float) -> float:
    """The free parameter that gives ``σ² = init_pred_var`` at initialisation."""
    return math.log(math.exp(init_pred_var - eps) - 1.0)


class VIDPair(nn.Module):
    """One stage pair: the 1×1-conv regressor (C_s → C_t → C_t → C_t, ReLU between, no bias) and the
    per-channel variance parameter of the teacher's channels."""

    def __init__(self, s_channels: int, t_channels: int, init_pred_var: float, eps: float):
        super().__init__()
        mid = t_channels  # RepDistiller builds VIDLoss(s, t, t)
        self.regressor = nn.Sequential(
            nn.Conv2d(s_channels, mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid, mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid, t_channels, 1, bias=False),
        )
        self.log_scale = nn.Parameter(torch.full((t_channels,), initial_log_scale(init_pred_var, eps)))
        self.eps = eps

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        with full_precision(f_s):
            f_s, f_t = match_spatial(_working_dtype(f_s), _working_dtype(f_t.detach()))
            return vid_loss(self.regressor(f_s), f_t, self.log_scale, self.eps)


class VID(DistillLoss):
    """Config: ``distill.vid.weight`` (1), ``.init_pred_var`` (5), ``.eps`` (1e-5).

    Pairs ``stages[1:]`` (RepDistiller's ``feat[1:-1]``), one regressor and variance per pair, per-stage
    losses summed with weight 1. With unequal stage counts the last ``min(n_s, n_t) - 1`` stages are paired.
    """

    def __init__(self, cfg: VIDConfig, ctx: DistillContext):
        super().__init__()
        self.weight = cfg.weight
        s_shapes, t_shapes = ctx.student_probe.stage_shapes, ctx.teacher_probe.stage_shapes
        self.k = min(len(s_shapes), len(t_shapes)) - 1
        if self.k < 1:
            raise ValueError("distill.vid needs networks with at least one stage after the stem")
        self.pairs = nn.ModuleList(
            VIDPair(cs[0], ct[0], cfg.init_pred_var, cfg.eps) for cs, ct in zip(s_shapes[-self.k:], t_shapes[-self.k:])
        )

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        k = self.k
        loss = sum(pair(fs, ft) for pair, fs, ft in zip(self.pairs, s.stages[-k:], t.stages[-k:]))
        return {"vid": self.weight * loss}


KNOBS = (
    knob("vid.weight", "distill.vid.weight", "float",
         ["vid weight", "vid loss weight", "variational information distillation weight", "weight of the vid loss"],
         "weight of variational information distillation (1)", off_value=0.0, requires="distill.methods~vid"),
    knob("vid.init_pred_var", "distill.vid.init_pred_var", "float",
         ["vid initial variance", "vid init pred var", "vid variance init"],
         "initial per-channel variance of VID's Gaussian (5)", requires="distill.methods~vid"),
)

register(MethodSpec(
    name="vid", role="distiller", config=VIDConfig, build=VID, knobs=KNOBS,
    summary="Ahn et al., CVPR 2019: Gaussian likelihood of teacher stages under a regressor and learned variances",
    phrases=('vid', 'variational information distillation'),
    list_aliases=('vid', 'variational information distillation', 'vid loss'),
))
