"""NST (Huang & Wang, 2017, "Like what you like"): match the neuron selectivity distributions of the stages
with a squared-polynomial-kernel MMD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.config import Strict
from kdlab.distillers._common import full_precision, match_spatial
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class NSTConfig(Strict):
    weight: float = Field(50.0, ge=0, description="RepDistiller's -b for nst (50)")


def _working_dtype(x: Tensor) -> Tensor:
    """Half-precision inputs are promoted to float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """``mean_{n,i,j} (<a_{n,i}, b_{n,j}>)²`` for ``(B, C, HW)`` maps (the degree-2, c=0 polynomial kernel)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """MMD² between the channel-wise spatially normalised maps of one stage pair (RepDistiller's ``nst_loss``
    with ``full_loss=True``): ``mean K(t,t) + mean K(s,s) - 2 mean K(s,t)``, ``K(x,y) = <x,y>²``.

    The larger map is adaptive-average-pooled to the smaller one; the teacher side carries no gradient.
    """
    with full_precision(f_s):
        f_s, f_t = match_spatial(_working_dtype(f_s), _working_dtype(f_t.detach()))
        s = F.normalize(f_s.flatten(2), dim=2)
        t = F.normalize(f_t.flatten(2), dim=2)
        return _poly_kernel_mean(t, t) + _poly_kernel_mean(s, s) - 2.0 * _poly_kernel_mean(s, t)


class NST(DistillLoss):
    """Config: ``distill.nst.weight`` (50).

    Pairs ``stages[1:]`` (RepDistiller's ``feat[1:-1]``) and sums the per-stage losses with weight 1 each.
    With unequal stage counts the last ``min(n_s, n_t) - 1`` stages are paired, deepest with deepest.
    """

    def __init__(self, cfg: NSTConfig, ctx: DistillContext):
        super().__init__()
        self.weight = cfg.weight
        self.pairs = min(len(ctx.student_probe.stage_shapes), len(ctx.teacher_probe.stage_shapes)) - 1
        if self.pairs < 1:
            raise ValueError("distill.nst needs networks with at least one stage after the stem")

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        k = self.pairs
        loss = sum(nst_loss(fs, ft) for fs, ft in zip(s.stages[-k:], t.stages[-k:]))
        return {"nst": self.weight * loss}


KNOBS = (
    knob("nst.weight", "distill.nst.weight", "float",
         ["nst weight", "nst loss weight", "neuron selectivity transfer weight", "weight of the nst loss"],
         "weight of neuron selectivity transfer (50)", off_value=0.0, requires="distill.methods~nst"),
)

register(MethodSpec(
    name="nst", role="distiller", config=NSTConfig, build=NST, knobs=KNOBS,
    summary="Huang & Wang, 2017: MMD (squared polynomial kernel) of the stages' neuron selectivity maps",
    phrases=('nst', 'neuron selectivity transfer'),
    list_aliases=('nst', 'neuron selectivity transfer', 'nst loss'),
))
