"""Student-stage distillation: one loss term per method, composed by :class:`Distillation`.

Importing this package registers every method: kd, rkd, fitnet, at, sp, pkt, dkd, crd, cocord
(docs/METHODS.md gives each loss, its defaults and their references).
"""

from kdlab.distillers.base import (
    DistillContext,
    DistillLoss,
    StepContext,
    build_distill_loss,
    distiller_names,
    register_distiller,
)

from kdlab.distillers import at, cocord, crd, dkd, fitnet, kd, pkt, rkd, sp  # noqa: F401,E402  (register)
from kdlab.distillers.composite import Distillation  # noqa: E402

__all__ = [
    "DistillContext",
    "DistillLoss",
    "Distillation",
    "StepContext",
    "build_distill_loss",
    "distiller_names",
    "register_distiller",
]
