"""Self-supervised contrastive (SimCLR / NT-Xent, Chen et al. 2020) teacher term: the other views of an image are its only positives."""

from __future__ import annotations

from kdlab.objectives.supcon import SupConConfig, SupConTerm
from kdlab.registry import CONTRASTIVE_TAU, MethodSpec, knob, register


class SimCLRConfig(SupConConfig):
    """The same settings as SupCon (λ, τ)."""


class SimCLRTerm(SupConTerm):
    """NT-Xent is SupCon with image ids in place of labels: the other views of an image are its positives."""

    name = "simclr"
    positives_by = "ids"


KNOBS = (
    knob("simclr.lambda", "objective.simclr.lambda_", "float",
       ["simclr weight", "simclr loss weight", "self supervised contrastive loss weight", "weight of the self supervised loss"],
       "weight of the SimCLR term when objective.kind=simclr", scope="intra", off_value=0.0, requires="objective.kind=simclr"),
    knob("simclr.tau", "objective.simclr.tau", "float",
       ["simclr temperature", "self supervised contrastive temperature", "nt xent temperature"],
       "temperature of the SimCLR term", scope="intra", requires="objective.kind=simclr", typical=CONTRASTIVE_TAU),
)

register(MethodSpec(
    name="simclr", role="objective", config=SimCLRConfig, build=SimCLRTerm, knobs=KNOBS, scope="intra",
    summary="SimCLR / NT-Xent (Chen et al., ICML 2020): the other views of an image are its only positives",
    phrases=('simclr', 'self supervised', 'self supervised contrastive', 'self supervised contrastive learning', 'instance discrimination', 'instance level contrastive', 'unsupervised contrastive', 'ntxent', 'nt xent'),
    terms={"simclr": ("simclr", "contrastive")},
    views=lambda block: 2, min_views=lambda block: 2, views_hint="objective.views=2",
))
