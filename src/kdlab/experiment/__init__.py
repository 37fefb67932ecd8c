"""The experiment layer: the whole config (one block per registered method), run identity, data bundles and
the stages that train a teacher or a student in a run folder. It sits above the core (``kdlab.engine``), the
methods (``kdlab.distillers``, ``kdlab.objectives``) and the analysis (``kdlab.analysis``); sweeps, plans,
run listings and the command line import it, never the reverse (docs/ARCHITECTURE.md)."""

from kdlab.experiment.schema import (
    DistillConfig,
    ExperimentConfig,
    ObjectiveConfig,
    build_config,
    get_path,
    load_config,
    parse_overrides,
    to_yaml,
)

__all__ = ["DistillConfig", "ExperimentConfig", "ObjectiveConfig", "build_config", "get_path", "load_config",
           "parse_overrides", "to_yaml"]
