"""Supervised contrastive (SupCon, Khosla et al. 2020) teacher term: same-class rows are positives."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.config import Strict
from kdlab.objectives.contrastive import supcon_loss
from kdlab.objectives.teacher import ObjectiveContext, ObjectiveStep, ObjectiveTerm
from kdlab.registry import CONTRASTIVE_TAU, MethodSpec, knob, register


class SupConConfig(Strict):
    lambda_: float = Field(0.02, ge=0)
    tau: float = Field(0.1, gt=0)


class SupConTerm(ObjectiveTerm):
    """λ·L_SupCon with the rows that share ``positives_by`` (the class) as each other's positives."""

    name = "supcon"
    positives_by = "labels"

    def __init__(self, cfg: SupConConfig, ctx: ObjectiveContext):
        super().__init__()
        self.cfg = cfg

    def forward(self, step: ObjectiveStep) -> dict[str, Tensor]:
        keys = getattr(step, self.positives_by)
        return {self.name: self.cfg.lambda_ * supcon_loss(step.emb, keys, self.cfg.tau)}


KNOBS = (
    knob("supcon.lambda", "objective.supcon.lambda_", "float",
       ["supcon weight", "supcon loss weight", "weight of the supervised contrastive loss", "inter class contrastive loss weight"],
       "weight of the SupCon (inter-class) term when objective.kind=supcon", scope="intra", off_value=0.0,
       requires="objective.kind=supcon"),
    knob("supcon.tau", "objective.supcon.tau", "float",
       ["supcon temperature", "supervised contrastive temperature", "inter class contrastive temperature"],
       "temperature of the SupCon term", scope="intra", requires="objective.kind=supcon", typical=CONTRASTIVE_TAU),
)

register(MethodSpec(
    name="supcon", role="objective", config=SupConConfig, build=SupConTerm, knobs=KNOBS, scope="intra",
    summary="SupCon (Khosla et al., NeurIPS 2020): same-class rows are positives, every other row a negative",
    phrases=('supcon', 'inter class', 'inter class contrastive', 'inter class contrastive learning', 'supervised contrastive', 'supervised contrastive learning', 'supcon style', 'class level contrastive', 'label aware contrastive'),
    terms={"supcon": ("supcon", "contrastive")},
    views=lambda block: 2, min_views=lambda block: 2, views_hint="objective.views=2",
))
