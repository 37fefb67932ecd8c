"""The sweep layer: run a grid of configs × seeds, store every run's record, report tables and plots.

Deterministic and independent of how the grid was made: ``kdlab sweep GRID.yaml`` runs a grid file, and the
plan reader (``kdlab.ablation``) turns an AblationBench plan into the same grid. Modules: ``grid`` (the grid
and its file), ``execute`` (teacher reuse, claims, local and submitit executors), ``store`` (the results
folder), ``report`` (tables, report.md, plots), ``run`` (all of it in order).
"""

from kdlab.sweep.grid import (
           SweepAblation,
           SweepError,
           SweepGrid,
           SweepVariant,
           load_grid,
           write_grid,
)
from kdlab.sweep.run import SweepResult, run_sweep

__all__ = ["SweepAblation", "SweepError", "SweepGrid", "SweepResult", "SweepVariant", "load_grid", "run_sweep",
           "write_grid"]
