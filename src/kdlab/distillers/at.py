"""AT (Zagoruyko & Komodakis, ICLR 2017): match normalised spatial attention maps of the stages."""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.config import Strict
from kdlab.distillers._common import full_precision, match_spatial, wide
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class ATConfig(Strict):
    weight: float = Field(1000.0, ge=0)
    p: float = Field(2.0, gt=0)


def attention_map(f: Tensor, p: float) -> Tensor:
    """``normalize(mean_c f^p)`` flattened to ``(B, H·W)``."""
    return F.normalize(f.pow(p).mean(1).flatten(1), dim=1)


def at_pair_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    """Mean squared difference of the two attention maps (the larger map is pooled to the smaller)."""
    with full_precision(f_s):
        f_s, f_t = match_spatial(wide(f_s), wide(f_t))
        return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


def at_loss(f_s: Tensor | Sequence[Tensor], f_t: Tensor | Sequence[Tensor], p: float = 2.0) -> Tensor:
    """AT over one pair of maps or paired sequences of maps: the sum of :func:`at_pair_loss` over the pairs
    (RepDistiller's ``Attention`` summed over ``feat[1:-1]``; the weight, 1000, is applied by the caller)."""
    if isinstance(f_s, Tensor):
        return at_pair_loss(f_s, f_t, p)
    return sum(at_pair_loss(a, b, p) for a, b in zip(f_s, f_t, strict=True))


class AT(DistillLoss):
    """Config: ``distill.at.weight`` (1000), ``distill.at.p`` (2).

    Pairs ``stages[1:]`` (every stage but the stem: RepDistiller's ``feat[1:-1]``). With unequal stage
    counts, the last ``min(n_s, n_t)`` stages of each network are paired (deepest with deepest).
    """

    def __init__(self, cfg: ATConfig, ctx: DistillContext):
        super().__init__()
        self.weight, self.p = cfg.weight, cfg.p
        self.pairs = min(len(ctx.student_probe.stage_shapes), len(ctx.teacher_probe.stage_shapes)) - 1
        if self.pairs < 1:
            raise ValueError("distill.at needs networks with at least one stage after the stem")

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        k = self.pairs
        loss = at_loss(list(s.stages[-k:]), [ft.detach() for ft in t.stages[-k:]], self.p)
        return {"at": self.weight * loss}


KNOBS = (
    knob("at.weight", "distill.at.weight", "float", ["at weight", "attention transfer weight", "attention loss weight"],
       "weight of attention transfer", off_value=0.0, requires="distill.methods~at"),
    knob("at.p", "distill.at.p", "float", ["attention exponent", "at p", "attention map power"], "exponent p of AT's attention maps",
       requires="distill.methods~at"),
)

register(MethodSpec(
    name="at", role="distiller", config=ATConfig, build=AT, knobs=KNOBS,
    summary="Zagoruyko & Komodakis, ICLR 2017: normalised spatial attention maps of the stages",
    phrases=('at', 'attention transfer'),
    list_aliases=('attention transfer',),
))
