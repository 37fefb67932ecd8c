"""``run_plan``: what ``kdlab ablate PLAN`` does, end to end (parse, resolve, run, report)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from kdlab.ablation.explain import format_explain
from kdlab.ablation.plan import Plan, parse_plan
from kdlab.ablation.resolve import Grid, format_grid, resolve_plan
from kdlab.sweep.execute import STAGES_MODULE, ExecutionSummary
from kdlab.sweep.grid import write_grid
from kdlab.sweep.report import ReportResult
from kdlab.sweep.run import grid_record, run_keys, run_sweep

__all__ = ["AblationResult", "run_plan", "default_out"]


@dataclass
class AblationResult:
    plan: Plan
    grid: Grid
    out: Path
    dry_run: bool
    grid_text: str
    execution: ExecutionSummary | None = None
    report: ReportResult | None = None
    exit_code: int = 0
    run_keys: dict[str, list[str]] = field(default_factory=dict)  # variant id -> run keys (one per seed)

    @property
    def executed(self) -> list[str]:
        return list(self.execution.executed) if self.execution else []

    @property
    def report_path(self) -> Path | None:
        return self.report.report_path if self.report else None


def default_out(plan_path: str | Path, grid: Grid) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(plan_path).stem).strip("-") or "plan"
    return Path(grid.base.out) / f"ablate-{stem}"


def run_plan(
    plan_path: str | Path,
    *,
    base: Any = None,
    seeds: int | Sequence[int] = 3,
    maps: Sequence[str] | dict[str, str] = (),
    out: str | Path | None = None,
    executor: str = "local",
    jobs: int | None = None,
    dry_run: bool = False,
    overrides: Sequence[str] = (),
    retry_failed: bool = False,
    executor_options: dict | None = None,
    stages: str = STAGES_MODULE,
    echo: Callable[[str], None] | None = print,
    write_grid_to: str | Path | None = None,
    strict: bool = False,
    explain: bool = False,
    group_size: int | None = None,
    teacher_group_size: int | None = None,
) -> AblationResult:
    """Parse ``plan_path``, resolve it on the base, run every missing run, write the report.

    ``base``: a config path / shipped name (``ablation/intra_digits``), a dict or an ExperimentConfig; None
    picks the shipped base of the plan's method. ``maps``: ``"ABLATION=knob-or-path"`` strings. ``overrides``:
    ``"key=value"`` strings on top of the base. ``seeds``: a count (base.seed, base.seed+1, ...) or a list.
    ``executor``: ``local`` or ``submitit`` (``executor_options`` go to submitit, e.g. ``{"cluster": "local"}``
    or ``{"slurm_partition": "gpu", "gpus_per_node": 1}``). ``retry_failed`` re-runs runs recorded as failed.
    ``stages``: the module providing ``run_teacher``/``run_student`` (tests inject a fake).
    ``group_size``: the most student runs trained as one program when they share a teacher and a seed (None:
    what memory allows; 1: every run alone, ``--no-group``). ``teacher_group_size``: 2 or more trains teachers
    that differ only in their objective as stacked groups of at most that many (off by default).
    ``write_grid_to``: also save the resolved grid as a reviewable grid file (``kdlab sweep`` runs it).
    Ablations that do not resolve are listed (first in the output and in report.md's "Not run" section) and the
    others run; ``strict`` runs nothing unless every ablation resolves. ``explain`` prints how each ablation
    was read (:func:`~kdlab.ablation.explain.format_explain`) and runs nothing.
    Raises PlanError / ResolveError (both AblationError) before anything runs when the plan does not parse or
    no ablation resolves.
    ``exit_code``: 0 when every run of the resolved ablations finished done, 1 when some failed.
    """
    say = echo or (lambda s: None)
    plan = parse_plan(plan_path)
    grid = resolve_plan(plan, base=base, maps=maps, overrides=overrides, seeds=seeds, strict=strict and not explain,
                        allow_empty=explain)
    out_dir = Path(out) if out is not None else default_out(plan_path, grid)
    if explain:
        text = format_explain(grid)
        say(text)
        return AblationResult(plan, grid, out_dir, True, text)
    text = format_grid(grid)
    say(text)
    sweep = grid.to_sweep()
    if write_grid_to is not None:
        write_grid(sweep, write_grid_to)
        say(f"\ngrid written to {write_grid_to} (edit it, then `kdlab sweep {write_grid_to}`)")
    record = grid_record(sweep)
    result = AblationResult(plan, grid, out_dir, dry_run, text, run_keys=run_keys(record))
    if dry_run:
        say(f"\n(dry run: nothing was run; output would go to {out_dir})")
        return result
    done = run_sweep(sweep, out_dir, executor=executor, jobs=jobs, retry_failed=retry_failed,
                     executor_options=executor_options, stages=stages, echo=say, record=record,
                     group_size=group_size, teacher_group_size=teacher_group_size)
    result.execution, result.report, result.exit_code = done.execution, done.report, done.exit_code
    if grid.unresolved:
        names = ", ".join(f"#{u.index} {u.ablation.name!r}" for u in grid.unresolved)
        say(f"NOT RUN: {len(grid.unresolved)} ablation{'s' if len(grid.unresolved) > 1 else ''} of the plan "
            f"({names}); the reasons are at the top and in {result.report.report_path}")
    return result
