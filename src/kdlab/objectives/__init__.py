"""Teacher objectives: one plugin module per ``objective.kind``, run by :class:`TeacherObjective`.

Each module in this folder that defines an objective registers it with :mod:`kdlab.registry` when imported;
importing this package imports them all, so a new teacher objective is one new file here
(docs/ARCHITECTURE.md). docs/METHOD.md writes the intra-class loss out.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from kdlab.objectives.teacher import (
    HeadConfig,
    ObjectiveContext,
    ObjectiveTerm,
    TeacherObjective,
    build_head,
)

for _m in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["HeadConfig", "ObjectiveContext", "ObjectiveStep", "ObjectiveTerm", "TeacherObjective", "build_head"]
