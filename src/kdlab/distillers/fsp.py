"""FSP (Yim et al., CVPR 2017): match the "flow of solution procedure" (Gram matrices between
consecutive stages) of student and teacher; RepDistiller's ``FSP`` on ``feat[:-1]`` (every stage, stem included).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import ConfigError, Strict
from kdlab.distillers._common import full_precision, match_spatial
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class FSPConfig(Strict):
    weight: float = Field(50.0, ge=0, description="beta: weight of the FSP loss during distillation (50, "
                                                  "RepDistiller's -b; its protocol: 0 after the phase)")
    init_epochs: int = Field(0, ge=0, description="epochs of the initialisation phase that trains the student's "
                                                  "layers on the FSP loss alone before distillation "
                                                  "(RepDistiller: 30; 0: no phase)")


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
    """Config: ``distill.fsp.weight`` (50), ``distill.fsp.init_epochs`` (0).

    Needs the same number of stages with the same channels in both networks (RepDistiller raises
    otherwise); spatial sizes may differ (pooled as in the reference). With ``init_epochs > 0`` the student
    is first trained on the unweighted FSP loss alone; with ``weight = 0`` the term adds nothing during
    distillation (RepDistiller's protocol)."""

    def __init__(self, cfg: FSPConfig, ctx: DistillContext):
        super().__init__()
        self._init_phase(cfg.init_epochs)
        s_c = [c for c, *_ in ctx.student_probe.stage_shapes]
        t_c = [c for c, *_ in ctx.teacher_probe.stage_shapes]
        if s_c != t_c or len(s_c) < 2:
            raise ConfigError(f"distill.fsp needs at least two stages with equal channels in student and teacher "
                              f"(student {s_c}, teacher {t_c}); RepDistiller's FSP supports only such pairs")
        self.weight = cfg.weight

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        if self.weight == 0:
            return {"fsp": s.logits.new_zeros((), dtype=torch.float32)}
        return {"fsp": self.weight * self.init_loss(s, t, batch)}

    # RepDistiller's initialisation phase: the student's layers on the FSP loss alone
    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [student]

    def init_loss(self, s, t, batch) -> Tensor:
        return fsp_loss(list(s.stages), [f.detach() for f in t.stages])


KNOBS = (
    knob("fsp.weight", "distill.fsp.weight", "float",
         ["fsp weight", "fsp loss weight", "flow of solution procedure weight"],
         "weight of the FSP loss", off_value=0.0, requires="distill.methods~fsp"),
    knob("fsp.init_epochs", "distill.fsp.init_epochs", "int",
         ["fsp init epochs", "fsp initialisation epochs", "fsp initialization epochs", "fsp initialisation phase"],
         "epochs of FSP's initialisation phase before distillation (RepDistiller: 30; REMOVE: 0, no phase)", off_value=0, requires="distill.methods~fsp"),
)

register(MethodSpec(
    name="fsp", role="distiller", config=FSPConfig, build=FSP, knobs=KNOBS,
    summary="Yim et al., CVPR 2017: Gram matrices between consecutive stages (flow of solution procedure)",
    phrases=('fsp', 'flow of solution procedure', 'fsp matrix', 'fsp matrices'),
    list_aliases=('flow of solution procedure', 'fsp loss'),
))
