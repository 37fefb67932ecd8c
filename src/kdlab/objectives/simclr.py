"""Self-supervised contrastive (SimCLR / NT-Xent, Chen et al. 2020) teacher term: the other views of an image are its only positives."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.config import Strict
from kdlab.objectives.contrastive import supcon_loss
from kdlab.objectives.teacher import ObjectiveContext, ObjectiveStep, ObjectiveTerm
from kdlab.registry import MethodSpec, knob, register


class SimCLRConfig(Strict):
    lambda_: float = Field(0.02, ge=0)
    tau: float = Field(0.1, gt=0)


class SimCLRTerm(ObjectiveTerm):
    def __init__(self, cfg: SimCLRConfig, ctx: ObjectiveContext):
        super().__init__()
        self.cfg = cfg

    def forward(self, step: ObjectiveStep) -> dict[str, Tensor]:
        return {"simclr": self.cfg.lambda_ * supcon_loss(step.emb, step.ids, self.cfg.tau)}


KNOBS = (
    knob("simclr.lambda", "objective.simclr.lambda_", "float",
       ["simclr weight", "simclr loss weight", "self supervised contrastive loss weight", "weight of the self supervised loss"],
       "weight of the SimCLR term when objective.kind=simclr", scope="intra", off_value=0.0, requires="objective.kind=simclr"),
    knob("simclr.tau", "objective.simclr.tau", "float",
       ["simclr temperature", "self supervised contrastive temperature", "nt xent temperature"],
       "temperature of the SimCLR term", scope="intra", requires="objective.kind=simclr"),
)

register(MethodSpec(
    name="simclr", role="objective", config=SimCLRConfig, build=SimCLRTerm, knobs=KNOBS, scope="intra",
    summary="SimCLR / NT-Xent (Chen et al., ICML 2020): the other views of an image are its only positives",
    phrases=('simclr', 'self supervised', 'self supervised contrastive', 'self supervised contrastive learning', 'instance discrimination', 'instance level contrastive', 'unsupervised contrastive', 'ntxent', 'nt xent'),
    terms={"simclr": ("simclr", "contrastive")},
    views=lambda block: 2, min_views=lambda block: 2, views_hint="objective.views=2",
))
