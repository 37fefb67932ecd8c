"""Student-stage distillation: one plugin module per method, composed by :class:`Distillation`.

Each module in this folder that defines a method registers it with :mod:`kdlab.registry` when imported;
importing this package imports them all, so a new distiller is one new file here (docs/ARCHITECTURE.md).
docs/METHODS.md gives each loss, its defaults and their references.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from kdlab.distillers.base import (
    DistillContext,
    DistillLoss,
    StepContext,
    build_distill_loss,
    distiller_names,
)
from kdlab.distillers.composite import Distillation

for _m in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["DistillContext", "DistillLoss", "Distillation", "StepContext", "build_distill_loss", "distiller_names"]
