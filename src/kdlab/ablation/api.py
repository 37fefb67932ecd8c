"""``run_plan``: what ``kdlab ablate PLAN`` does, end to end (parse, resolve, run, report)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from kdlab.ablation.execute import STAGES_MODULE, ExecutionSummary, config_id, execute, expand
from kdlab.ablation.plan import Plan, parse_plan
from kdlab.ablation.report import ReportResult, build_report
from kdlab.ablation.resolve import Grid, format_grid, resolve_plan
from kdlab.ablation.store import Store, readable_names

__all__ = ["AblationResult", "run_plan", "grid_record", "default_out"]


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


def grid_record(grid: Grid) -> dict:
    """grid.json: the resolved plan plus the run key of every (variant, seed) and of the base."""
    runs, _ = expand(grid)
    d = grid.to_dict()
    d["version"] = 1
    d["base_runs"], d["base_teachers"] = _keys(runs[config_id(grid.base)])
    for a, ad in zip(grid.ablations, d["ablations"]):
        if a.base is not None:  # its own reference runs (a distiller the plan's base student does not use)
            ad["base_runs"], ad["base_teachers"] = _keys(runs[config_id(a.base)])
        for v, vd in zip(a.variants, ad["variants"]):
            cid = config_id(v.config)
            vd["config_id"] = cid
            vd["runs"], vd["teachers"] = _keys(runs[cid])
    return d


def _keys(per_seed: dict) -> tuple[dict[str, str], dict[str, str]]:
    """The run keys and the teacher keys (runs that need a teacher) of one config, by seed."""
    return ({str(s): spec.key for s, spec in per_seed.items()},
            {str(s): spec.teacher_key for s, spec in per_seed.items() if spec.teacher_key})


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
) -> AblationResult:
    """Parse ``plan_path``, resolve it on the base, run every missing run, write the report.

    ``base``: a config path / shipped name (``ablation/intra_digits``), a dict or an ExperimentConfig; None
    picks the shipped base of the plan's method. ``maps``: ``"ABLATION=knob-or-path"`` strings. ``overrides``:
    ``"key=value"`` strings on top of the base. ``seeds``: a count (base.seed, base.seed+1, ...) or a list.
    ``executor``: ``local`` or ``submitit`` (``executor_options`` go to submitit, e.g. ``{"cluster": "local"}``
    or ``{"slurm_partition": "gpu", "gpus_per_node": 1}``). ``retry_failed`` re-runs runs recorded as failed.
    ``stages``: the module providing ``run_teacher``/``run_student`` (tests inject a fake).
    Raises PlanError / ResolveError (both AblationError) before anything runs.
    ``exit_code``: 0 when every run finished done, 1 when some failed.
    """
    say = echo or (lambda s: None)
    plan = parse_plan(plan_path)
    grid = resolve_plan(plan, base=base, maps=maps, overrides=overrides, seeds=seeds)
    text = format_grid(grid)
    out_dir = Path(out) if out is not None else default_out(plan_path, grid)
    say(text)
    record = grid_record(grid)
    run_keys = {"base": list(record["base_runs"].values())}
    for ad in record["ablations"]:
        for vd in ad["variants"]:
            run_keys[f"{ad['name']}: {vd['label']}"] = list(vd["runs"].values())
    result = AblationResult(plan, grid, out_dir, dry_run, text, run_keys=run_keys)
    if dry_run:
        say(f"\n(dry run: nothing was run; output would go to {out_dir})")
        return result
    store = Store(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store.write_grid(record)
    store.write_names(readable_names(record))
    result.execution = execute(grid, store, executor=executor, jobs=jobs, retry_failed=retry_failed,
                               executor_options=executor_options, stages=stages, echo=say)
    result.report = build_report(out_dir)
    say("")
    say(result.report.text)
    result.exit_code = 1 if result.report.n_failed or result.report.n_missing else 0
    return result
