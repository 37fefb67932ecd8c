"""CC (Peng et al., ICCV 2019): correlation congruence of linearly embedded pooled features.

RepDistiller's ``Correlation`` (the authors' code): both pooled features go through a trainable linear
embedding (``LinearEmbed``, ``feat_dim`` 128), then ``mean_i Σ_d |Δ_i,d|·|Δ_{i+1},d|`` with ``Δ = f_s - f_t``
over consecutive samples of the batch.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import Strict
from kdlab.distillers._common import full_precision
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class CCConfig(Strict):
    weight: float = Field(0.02, ge=0, description="beta: RepDistiller's -b for correlation (0.02)")
    feat_dim: int = Field(128, ge=1, description="output size of both linear embeddings")


def cc_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """``mean_i Σ_d |f_s - f_t|[i, d] · |f_s - f_t|[i+1, d]`` for ``i < B-1`` (RepDistiller's Correlation)."""
    with full_precision(f_s):
        s = f_s.float() if f_s.dtype in (torch.float16, torch.bfloat16) else f_s
        t = f_t.to(s.dtype)
        delta = (s - t).abs()
        return (delta[:-1] * delta[1:]).sum(1).mean()


class CC(DistillLoss):
    """Config: ``distill.cc.weight`` (0.02), ``distill.cc.feat_dim`` (128). Works for any pair (pooled dims
    are embedded separately). Both embeddings are trained (RepDistiller adds both to its optimiser)."""

    def __init__(self, cfg: CCConfig, ctx: DistillContext):
        super().__init__()
        self.weight = cfg.weight
        self.embed_s = nn.Linear(ctx.student_probe.pooled_dim, cfg.feat_dim)
        self.embed_t = nn.Linear(ctx.teacher_probe.pooled_dim, cfg.feat_dim)

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        f_s = self.embed_s(s.pooled.flatten(1))
        f_t = self.embed_t(t.pooled.detach().flatten(1))
        return {"cc": self.weight * cc_loss(f_s, f_t)}


KNOBS = (
    knob("cc.weight", "distill.cc.weight", "float",
         ["cc weight", "cc loss weight", "correlation congruence weight", "correlation congruence loss weight"],
         "weight of the correlation-congruence loss", off_value=0.0, requires="distill.methods~cc"),
    knob("cc.feat_dim", "distill.cc.feat_dim", "int", ["cc embedding dimension", "cc feat dim", "cc embedding size"],
         "output size of CC's linear embeddings (128)", requires="distill.methods~cc"),
)

register(MethodSpec(
    name="cc", role="distiller", config=CCConfig, build=CC, knobs=KNOBS,
    summary="Peng et al., ICCV 2019: correlation congruence of linearly embedded pooled features",
    phrases=('cc', 'correlation congruence', 'correlation congruence distillation'),
    list_aliases=('correlation congruence', 'cc loss'),
))
