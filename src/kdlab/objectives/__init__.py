"""Teacher objectives: one plugin module per ``objective.kind``, run by :class:`TeacherObjective`.

Each module in this folder that defines an objective registers it with :mod:`kdlab.registry` when imported;
importing this package imports them all, so a new teacher objective is one new file here
(docs/ARCHITECTURE.md). docs/METHOD.md writes the intra-class loss out.
"""

from kdlab.objectives.teacher import (
    HeadConfig,
    ObjectiveContext,
    ObjectiveStep,
    ObjectiveTerm,
    TeacherObjective,
    build_head,
)
from kdlab.registry import import_plugins

import_plugins(__name__, __path__)

__all__ = ["HeadConfig", "ObjectiveContext", "ObjectiveStep", "ObjectiveTerm", "TeacherObjective", "build_head"]
