"""AblationBench plans end to end: parse, resolve on a knob registry, run (local / submitit), report.

Entry points (``kdlab ablate`` / ``kdlab report`` wrap them)::

    run_plan(plan_path, *, base=None, seeds=3, maps=(), out=None, executor="local", jobs=None,
             dry_run=False, overrides=(), retry_failed=False, executor_options=None, strict=False,
             explain=False) -> AblationResult
    rebuild_report(out_dir) -> str          # rebuild report.md / plots / tables from the store, return tables

See docs/ABLATION.md.
"""

from kdlab.ablation.api import AblationResult, run_plan
from kdlab.ablation.explain import format_explain
from kdlab.ablation.knobs import KNOBS, Knob, render_knob_table
from kdlab.ablation.plan import Ablation, AblationError, Plan, PlanError, parse_plan
from kdlab.ablation.resolve import Grid, ResolveError, format_grid, resolve_plan
from kdlab.sweep.report import build_report, rebuild_report

__all__ = [
    "Ablation",
    "AblationError",
    "AblationResult",
    "Grid",
    "KNOBS",
    "Knob",
    "Plan",
    "PlanError",
    "ResolveError",
    "build_report",
    "format_explain",
    "format_grid",
    "parse_plan",
    "rebuild_report",
    "render_knob_table",
    "resolve_plan",
    "run_plan",
]
