"""kdlab's Python API: the functions the ``kdlab`` command is a thin layer over, for notebooks.

    from kdlab import api

    cfg = api.config("demo", ["objective.kind=intra", "teacher.epochs=5"])
    teacher = api.train_teacher(cfg, "runs/nb/teacher")
    student = api.distill(cfg, "runs/nb/student", teacher=teacher)
    table = api.runs_table("runs/nb")          # a pandas DataFrame when pandas is installed
    print(student.top1, teacher.metrics["margin_pass_frac"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.experiment import stages
from kdlab.experiment.schema import ExperimentConfig, load_config


@dataclass
class Run:
    """A finished (or failed) stage: its folder, status and summary metrics."""

    run_dir: Path
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    checkpoint: Path | None = None

    @property
    def top1(self) -> float | None:
        return self.metrics.get("top1")

    @property
    def history(self) -> list[dict]:
        from kdlab.analysis.curves import read_history

        return read_history(self.run_dir)

    @classmethod
    def from_summary(cls, summary: dict) -> "Run":
        return cls(Path(summary.get("run_dir", ".")), summary["status"], summary.get("metrics") or {},
                   summary.get("error"), Path(summary["checkpoint"]) if summary.get("checkpoint") else None)


def config(name_or_path: str | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """A validated config from a YAML file or shipped recipe name plus dotted overrides."""
    return load_config(name_or_path, overrides or [])


def train_teacher(cfg: ExperimentConfig, run_dir: str | Path) -> Run:
    return Run.from_summary(stages.run_teacher(cfg, Path(run_dir)))


def distill(cfg: ExperimentConfig, run_dir: str | Path, teacher: Run | str | Path | None = None) -> Run:
    """Distil ``cfg.student``; ``teacher`` is a Run, a checkpoint/card path, or None for ``cfg.teacher.checkpoint``."""
    ckpt = teacher.checkpoint if isinstance(teacher, Run) else (Path(teacher) if teacher else None)
    return Run.from_summary(stages.run_student(cfg, Path(run_dir), ckpt))


def pipeline(cfg: ExperimentConfig, run_dir: str | Path) -> tuple[Run | None, Run | None]:
    result = stages.run_pipeline(cfg, Path(run_dir))
    t = Run.from_summary(result["teacher"]) if result["teacher"] and "run_dir" in result["teacher"] else None
    s = Run.from_summary(result["student"]) if result["student"] else None
    return t, s


def analyze(checkpoints: list[str | Path], out: str | Path, **kwargs) -> Path:
    """Feature geometry and soft-label statistics of checkpoints (see docs/ANALYSIS.md)."""
    from kdlab.report.analyze import main_analyze

    return main_analyze([Path(c) for c in checkpoints], Path(out), **kwargs)


def runs_table(root: str | Path, filters: list[str] | None = None):
    """Every run under ``root`` as a table: a pandas DataFrame if pandas is installed, else a list of dicts."""
    from kdlab.runs import list_runs

    rows = list_runs(Path(root), filters or [])
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows)


def ablate(plan: str | Path, **kwargs):
    """Run an AblationBench plan (see ``kdlab.ablation.run_plan`` for the options)."""
    from kdlab.ablation import run_plan

    return run_plan(Path(plan), **kwargs)


def export(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    from kdlab.runs import export_run

    return export_run(Path(run_dir), Path(out_dir) if out_dir else None)
