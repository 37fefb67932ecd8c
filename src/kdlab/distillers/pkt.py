"""PKT (Passalis & Tefas, ECCV 2018): match cosine-kernel conditional distributions of pooled features."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from kdlab.config import Strict
from kdlab.distillers._common import full_precision, wide
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class PKTConfig(Strict):
    weight: float = Field(30000.0, ge=0)


_EPS = 1e-7


def _conditional(x: Tensor) -> Tensor:
    """Row-stochastic matrix ``P[i, j] ∝ (1 + cos(x_i, x_j)) / 2``."""
    x = x / (x.norm(dim=1, keepdim=True) + _EPS)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """``mean_{i,j} P_t[i,j] · log((P_t[i,j] + ε) / (P_s[i,j] + ε))`` over the B×B entries, ε = 1e-7."""
    with full_precision(f_s):
        p_s = _conditional(wide(f_s.flatten(1)))
        p_t = _conditional(wide(f_t.flatten(1)))
        return (p_t * torch.log((p_t + _EPS) / (p_s + _EPS))).mean()


class PKT(DistillLoss):
    """Config: ``distill.pkt.weight`` (30000). Uses the pooled features."""

    def __init__(self, cfg: PKTConfig, ctx: DistillContext):
        super().__init__()
        self.weight = cfg.weight

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        return {"pkt": self.weight * pkt_loss(s.pooled, t.pooled.detach())}


KNOBS = (
    knob("pkt.weight", "distill.pkt.weight", "float", ["pkt weight", "probabilistic knowledge transfer weight"], "weight of PKT",
       off_value=0.0, requires="distill.methods~pkt"),
)

register(MethodSpec(
    name="pkt", role="distiller", config=PKTConfig, build=PKT, knobs=KNOBS,
    summary="Passalis & Tefas, ECCV 2018: cosine-kernel conditional distributions of pooled features",
    phrases=('pkt', 'probabilistic knowledge transfer'),
    list_aliases=('pkt', 'probabilistic knowledge transfer'),
))
