"""``run_sweep``: run every missing run of a grid in its results folder, then write the report.

What ``kdlab sweep GRID.yaml`` does, and what ``kdlab ablate`` does once its plan is resolved to a grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kdlab.experiment.identity import IDENTITY_VERSION
from kdlab.sweep.execute import (
    STAGES_MODULE,
    ExecutionSummary,
    config_id,
    execute,
    expand,
)
from kdlab.sweep.grid import SweepGrid
from kdlab.sweep.report import ReportResult, build_report
from kdlab.sweep.store import Store, readable_names

__all__ = ["SweepResult", "grid_record", "run_keys", "run_sweep"]


@dataclass
class SweepResult:
    grid: SweepGrid
    out: Path
    execution: ExecutionSummary | None = None
    report: ReportResult | None = None
    exit_code: int = 0
    run_keys: dict[str, list[str]] = field(default_factory=dict)  # variant id -> run keys (one per seed)

    @property
    def executed(self) -> list[str]:
        return list(self.execution.executed) if self.execution else []


def grid_record(grid: SweepGrid) -> dict:
    """grid.json: the grid plus the run key of every (variant, seed) and of the base runs."""
    runs, _ = expand(grid)
    d = grid.record()
    d["version"] = 1
    d["base_runs"], d["base_teachers"] = _keys(runs[config_id(grid.base)])
    for a, ad in zip(grid.ablations, d["ablations"]):
        if a.base is not None:  # its own reference runs (e.g. a distiller the grid's base student does not use)
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


def run_keys(record: dict) -> dict[str, list[str]]:
    """The run keys of a grid record by row: ``base`` and ``"<ablation>: <variant>"``."""
    keys = {"base": list(record["base_runs"].values())}
    for ad in record["ablations"]:
        for vd in ad["variants"]:
            keys[f"{ad['name']}: {vd['label']}"] = list(vd["runs"].values())
    return keys


def run_sweep(
    grid: SweepGrid,
    out: str | Path,
    *,
    executor: str = "local",
    jobs: int | None = None,
    retry_failed: bool = False,
    executor_options: dict | None = None,
    stages: str = STAGES_MODULE,
    echo: Callable[[str], None] | None = print,
    record: dict | None = None,
    group_size: int | None = None,
    teacher_group_size: int | None = None,
) -> SweepResult:
    """Run the grid's missing runs in ``out`` (upgrading a folder of an earlier version first), write
    grid.json and the report. ``exit_code`` is 1 when some run failed or is missing."""
    say = echo or (lambda s: None)
    out = Path(out)
    record = record or grid_record(grid)
    result = SweepResult(grid, out, run_keys=run_keys(record))
    store = Store(out)
    for old, new in store.upgrade():
        if new.startswith("superseded/"):
            say(f"set aside {out}/{old} -> {new}: under run identity v{IDENTITY_VERSION} it is the same run as "
                "another folder, which is kept (finished runs first); nothing was deleted")
        else:
            say(f"upgraded {out}/{old} -> {new} (run identity v{IDENTITY_VERSION})")
    store.write_grid(record)
    store.write_names(readable_names(record))
    result.execution = execute(grid, store, executor=executor, jobs=jobs, retry_failed=retry_failed,
                               executor_options=executor_options, stages=stages, echo=say, group_size=group_size,
                               teacher_group_size=teacher_group_size)
    result.report = build_report(out)
    say("")
    say(result.report.text)
    result.exit_code = 1 if result.report.n_failed or result.report.n_missing else 0
    return result
