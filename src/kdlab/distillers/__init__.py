"""Student-stage distillation: one plugin module per method, composed by :class:`Distillation`.

Each module in this folder that defines a method registers it with :mod:`kdlab.registry` when imported;
importing this package imports them all, so a new distiller is one new file here (docs/ARCHITECTURE.md).
docs/METHODS.md gives each loss, its defaults and their references.
"""

from kdlab.distillers.base import (
    DistillContext,
    DistillLoss,
    StepContext,
    build_distill_loss,
    distiller_names,
)
from kdlab.distillers.composite import Distillation
from kdlab.registry import import_plugins

import_plugins(__name__, __path__)

__all__ = ["DistillContext", "DistillLoss", "Distillation", "StepContext", "build_distill_loss", "distiller_names"]
