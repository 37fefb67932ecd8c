"""RKD (Park et al., CVPR 2019): distance- and angle-wise relations of the pooled features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.config import Strict
from kdlab.distillers._common import full_precision, wide
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class RKDConfig(Strict):
    weight: float = Field(1.0, ge=0)
    distance_weight: float = Field(25.0, ge=0)
    angle_weight: float = Field(50.0, ge=0)


def pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix; squared distances floored at ``eps`` before the root, diagonal 0."""
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp_min(eps)
    off_diag = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d2.sqrt() * off_diag


def _normalised_distances(x: Tensor) -> Tensor:
    d = pairwise_distances(x)
    return d / d[d > 0].mean()


def _angles(x: Tensor) -> Tensor:
    """``a[i, j, k] = <unit(x_j - x_i), unit(x_k - x_i)>`` for all triplets (B³ values)."""
    diff = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)
    return diff @ diff.transpose(1, 2)


def rkd_losses(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Unweighted (distance, angle) smooth-L1 losses; the teacher side carries no gradient."""
    with full_precision(f_s):
        s = wide(f_s.flatten(1))
        t = wide(f_t.flatten(1)).detach()
        with torch.no_grad():
            t_d = _normalised_distances(t)
            t_a = _angles(t)
        loss_d = F.smooth_l1_loss(_normalised_distances(s), t_d)
        loss_a = F.smooth_l1_loss(_angles(s), t_a)
    return loss_d, loss_a


def rkd_loss(f_s: Tensor, f_t: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    """``distance_weight · L_dist + angle_weight · L_angle`` (RepDistiller's RKDLoss weights 25 / 50)."""
    loss_d, loss_a = rkd_losses(f_s, f_t)
    return distance_weight * loss_d + angle_weight * loss_a


class RKD(DistillLoss):
    """Config: ``distill.rkd.weight``, ``.distance_weight`` (25), ``.angle_weight`` (50); pooled features."""

    def __init__(self, cfg: RKDConfig, ctx: DistillContext):
        super().__init__()
        self.w_d = cfg.weight * cfg.distance_weight
        self.w_a = cfg.weight * cfg.angle_weight

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        loss_d, loss_a = rkd_losses(s.pooled, t.pooled)
        return {"rkd_dist": self.w_d * loss_d, "rkd_angle": self.w_a * loss_a}


KNOBS = (
    knob("rkd.weight", "distill.rkd.weight", "float", ["rkd weight", "rkd loss weight", "weight of rkd", "weight of the rkd loss"],
       "overall weight of RKD", off_value=0.0, requires="distill.methods~rkd"),
    knob("rkd.distance_weight", "distill.rkd.distance_weight", "float",
       ["rkd distance weight", "distance wise loss weight", "distance loss weight", "rkd distance loss", "distance term"],
       "weight of RKD's distance-wise term (25)", off_value=0.0, requires="distill.methods~rkd"),
    knob("rkd.angle_weight", "distill.rkd.angle_weight", "float",
       ["rkd angle weight", "angle wise loss weight", "angle loss weight", "rkd angle loss", "angle term"],
       "weight of RKD's angle-wise term (50)", off_value=0.0, requires="distill.methods~rkd"),
)

register(MethodSpec(
    name="rkd", role="distiller", config=RKDConfig, build=RKD, knobs=KNOBS,
    summary="Park et al., CVPR 2019: distance- and angle-wise relations of the pooled features",
    phrases=('rkd', 'relational knowledge distillation', 'relational kd', 'relation distillation'),
    terms={"rkd_dist": ("rkd",), "rkd_angle": ("rkd",)},
    list_aliases=('rkd', 'relational knowledge distillation', 'rkd loss'),
))
