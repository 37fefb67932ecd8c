"""A stand-in for ``kdlab.experiment.stages`` with the same two functions, for fast tests of the executor.

``run_plan(..., stages="fakestages")`` (with tests/ on sys.path) runs the whole machinery (processes, claims, records,
reports) with "training" that takes milliseconds: metrics are a deterministic function of the config, the
per-epoch history (with the run's loss terms ``train_<term>``) is written to ``metrics.jsonl`` like the real
trainer does. Knobs for tests:

* ``objective.intra.lambda_ >= 1`` makes the teacher fail like a diverged run (NaN loss);
* ``$KDLAB_FAKE_SLEEP`` (seconds) slows every stage down; ``$KDLAB_FAKE_LOG`` (a file) gets one line per
  stage actually run (``teacher|student <run_dir>``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from kdlab.experiment.schema import ExperimentConfig, to_yaml
from kdlab.experiment.terms import run_terms

__all__ = ["run_teacher", "run_student"]


def _h(cfg: ExperimentConfig, stage: str) -> float:
    d = cfg.model_dump(mode="json")
    d.pop("runtime", None)
    d.pop("name", None)
    s = hashlib.sha256((stage + json.dumps(d, sort_keys=True)).encode()).hexdigest()
    return int(s[:8], 16) / 0xFFFFFFFF


def _run(stage: str, cfg: ExperimentConfig, run_dir: Path, extra: dict) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = run_dir / "summary.json"
    if done.exists():
        s = json.loads(done.read_text())
        if s.get("status") == "done":
            return s
    if os.environ.get("KDLAB_FAKE_LOG"):
        with open(os.environ["KDLAB_FAKE_LOG"], "a") as fh:
            fh.write(f"{stage} {run_dir}\n")
    time.sleep(float(os.environ.get("KDLAB_FAKE_SLEEP", "0")))
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    spec = cfg.teacher if stage == "teacher" else cfg.student
    u = _h(cfg, stage)
    if stage == "teacher" and cfg.objective.kind == "intra" and cfg.objective.intra.lambda_ >= 1.0:
        summary = {"status": "failed", "error": "loss became nan at epoch 1, step 3", "stage": stage, "metrics": {}}
        done.write_text(json.dumps(summary))
        return summary
    final = 90.0 + 5 * u - 20 * (cfg.objective.intra.lambda_ if stage == "teacher" else 0.0)
    terms = run_terms(cfg, stage)
    hist = []
    with open(run_dir / "metrics.jsonl", "w") as fh:
        for e in range(1, spec.epochs + 1):
            rec = {"epoch": e, "train_loss": 2.0 / e + u / 10, "test_top1": final * (1 - 0.5 / (e + 1)),
                   "test_loss": 1.0 / e, "test_top5": 99.0,
                   **{f"train_{t}": (i + 1) * (0.5 + u) / e for i, t in enumerate(terms)}}
            hist.append(rec)
            fh.write(json.dumps(rec) + "\n")
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"fake")
    metrics = {"top1": hist[-1]["test_top1"], "top1_best": max(r["test_top1"] for r in hist), "top5": 99.0,
               "loss": hist[-1]["train_loss"], "test_loss": hist[-1]["test_loss"], "convergence_epoch": max(1, spec.epochs // 2),
               "loss_std": 0.01 + u / 100, "loss_spikes": int(u * 3), "peak_mem_mb": 100.0 + 10 * u,
               "train_time_s": 0.01, "step_time_ms": 1.0, **{f"train_{t}": hist[-1][f"train_{t}"] for t in terms},
               **extra}
    if stage == "teacher" and cfg.objective.kind == "intra":
        metrics["margin_pass_frac"] = 0.5 if cfg.objective.intra.margin else 1.0
    summary = {"status": "done", "error": None, "stage": stage, "metrics": metrics,
               "checkpoint": str(run_dir / "checkpoints" / "last.pt")}
    done.write_text(json.dumps(summary))
    return summary


def run_teacher(cfg: ExperimentConfig, run_dir: Path) -> dict:
    return _run("teacher", cfg, run_dir, {})


def run_student(cfg: ExperimentConfig, run_dir: Path, teacher_checkpoint: Path | None = None) -> dict:
    if cfg.distill.methods and (teacher_checkpoint is None or not Path(teacher_checkpoint).exists()):
        return {"status": "failed", "error": f"teacher checkpoint {teacher_checkpoint} missing", "stage": "student", "metrics": {}}
    return _run("student", cfg, run_dir, {})
