"""FSP (Yim et al., CVPR 2017): match the "flow of solution procedure" (Gram matrices between
consecutive stages) of student and teacher; RepDistiller's ``FSP`` on ``feat[:-1]`` (every stage, stem included).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from kdlab.config import ConfigError, Strict
from kdlab.distillers._common import full_precision, match_spatial
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class FSPConfig(Strict):
    weight: float = Field(50.0, ge=0, description="beta: RepDistiller's -b for fsp (50)")
    init_epochs: int = Field(0, ge=0, description="RepDistiller's FSP initialisation phase (30 there); "
                                                  "not implemented yet: only 0 is accepted")


def _promote(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def fsp_matrices(g: list[Tensor]) -> list[Tensor]:
    """``G_i[b, c_top, c_bot] = mean_hw top[b, c_top, hw] · bot[b, c_bot, hw]`` for consecutive stages
    ``(bot, top) = (g[i], g[i+1])``; the larger map is adaptive-average-pooled to the smaller first."""
    out = []
    for bot, top in zip(g[:-1], g[1:]):
        bot, top = match_spatial(bot, top)
        out.append(torch.einsum("bix,bjx->bji", bot.flatten(2), top.flatten(2)) / bot[0, 0].numel())
    return out


def fsp_loss(g_s: list[Tensor], g_t: list[Tensor]) -> Tensor:
    """``Σ_i mean((G_i^s - G_i^t)²)`` (RepDistiller's ``sum(FSP(...)(g_s, g_t))``)."""
    with full_precision(g_s[0]):
        s = [_promote(f) for f in g_s]
        t = [_promote(f).to(s[0].dtype) for f in g_t]
        terms = [(a - b).pow(2).mean() for a, b in zip(fsp_matrices(s), fsp_matrices(t))]
        return sum(terms[1:], terms[0])


class FSP(DistillLoss):
    """Config: ``distill.fsp.weight`` (50), ``distill.fsp.init_epochs`` (0; only 0 is implemented).

    Needs the same number of stages with the same channels in both networks (RepDistiller raises
    otherwise); spatial sizes may differ (pooled as in the reference)."""

    def __init__(self, cfg: FSPConfig, ctx: DistillContext):
        super().__init__()
        if cfg.init_epochs:
            raise ConfigError("distill.fsp.init_epochs: RepDistiller's FSP initialisation phase is not "
                              "implemented in kdlab yet; set it to 0 (the FSP loss then acts during training)")
        s_c = [c for c, *_ in ctx.student_probe.stage_shapes]
        t_c = [c for c, *_ in ctx.teacher_probe.stage_shapes]
        if s_c != t_c or len(s_c) < 2:
            raise ConfigError(f"distill.fsp needs at least two stages with equal channels in student and teacher "
                              f"(student {s_c}, teacher {t_c}); RepDistiller's FSP supports only such pairs")
        self.weight = cfg.weight

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        return {"fsp": self.weight * fsp_loss(list(s.stages), [f.detach() for f in t.stages])}


KNOBS = (
    knob("fsp.weight", "distill.fsp.weight", "float",
         ["fsp weight", "fsp loss weight", "flow of solution procedure weight"],
         "weight of the FSP loss", off_value=0.0, requires="distill.methods~fsp"),
)

register(MethodSpec(
    name="fsp", role="distiller", config=FSPConfig, build=FSP, knobs=KNOBS,
    summary="Yim et al., CVPR 2017: Gram matrices between consecutive stages (flow of solution procedure)",
    phrases=('fsp', 'flow of solution procedure', 'fsp matrix', 'fsp matrices'),
    list_aliases=('flow of solution procedure', 'fsp loss'),
))
