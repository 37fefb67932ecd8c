"""`kdlab ablate`: plan parsing, knob resolution, the results store, executors and reports.

Fast tests use the plan files in tests/plans/ (written for these tests in the AblationBench format, with the
same mojibake and HTML noise as the seed plans). Tests marked ``shared`` read the seed plans from ../shared
and are skipped when it is absent. End-to-end tests train tiny real runs on the embedded digits data.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kdlab.ablation import (
    rebuild_report,
    run_plan,
)
from kdlab.sweep.store import CLAIM, Store, atomic_write_json

ROOT = Path(__file__).resolve().parents[2]
PLANS = Path(__file__).resolve().parents[1] / "plans"
SEEDS = Path(__file__).resolve().parents[2].parent / "shared" / "seeds"
shared = pytest.mark.shared
needs_seeds = pytest.mark.skipif(not SEEDS.is_dir(), reason="../shared/seeds not present")
needs_stages = pytest.mark.skipif(importlib.util.find_spec("kdlab.experiment.stages") is None,
                                  reason="kdlab.experiment.stages not available yet")
FAKE = "fakestages"  # tests/fakestages.py (tests/ is on sys.path under pytest)
TINY = ("teacher.epochs=1", "student.epochs=1", "data.subset=200", "data.test_subset=100")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _records(out: Path) -> dict[str, dict]:
    return Store(out).records()


def test_failed_runs_are_recorded_and_do_not_stop_the_others(tmp_path):
    out = tmp_path / "o"
    r = run_plan(PLANS / "failing.jsonl", seeds=1, out=out, stages=FAKE, jobs=2, echo=None, overrides=TINY)
    recs = _records(out)
    assert len(recs) == 3
    failed = [x for x in recs.values() if x["status"] == "failed"]
    assert len(failed) == 1 and all(x["config"]["objective"]["intra"]["lambda_"] == 2.0 for x in failed)
    assert all(x["failed_stage"] == "teacher" and "teacher failed: loss became nan" in x["error"] for x in failed)
    assert r.exit_code == 1
    t = r.report.tables[0]
    assert [(row.label, row.n_ok, row.n_failed) for row in t.rows] == [("base", 1, 0), ("0.05", 1, 0), ("2", 0, 1)]
    report = (out / "report.md").read_text()
    assert "Failed runs:" in report and "loss became nan" in report
    # re-running skips failed runs; --retry-failed runs them again
    r2 = run_plan(PLANS / "failing.jsonl", seeds=1, out=out, stages=FAKE, jobs=2, echo=None, overrides=TINY)
    assert r2.executed == []
    r3 = run_plan(PLANS / "failing.jsonl", seeds=1, out=out, stages=FAKE, jobs=2, echo=None, overrides=TINY,
                  retry_failed=True)
    assert sorted(r3.executed) == sorted(k for k, x in recs.items() if x["status"] == "failed")


def test_two_processes_on_one_folder_run_each_run_once(tmp_path):
    out, log = tmp_path / "o", tmp_path / "calls.log"
    script = tmp_path / "ablate.py"  # a script without a __main__ guard: workers must not re-run it
    script.write_text(textwrap.dedent(f"""
        from kdlab.ablation import run_plan
        run_plan({str(PLANS / 'tiny.jsonl')!r}, seeds=2, out={str(out)!r}, stages={FAKE!r}, jobs=2, echo=None,
                 overrides={TINY!r})
    """))
    env = dict(os.environ, KDLAB_FAKE_SLEEP="0.5", KDLAB_FAKE_LOG=str(log),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, str(script)], env=env) for _ in range(2)]
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    calls = log.read_text().splitlines()
    assert len(calls) == len(set(calls)) == 8  # 4 teachers + 4 students, none twice
    assert all(x["status"] == "done" for x in _records(out).values()) and len(_records(out)) == 4


def _check_tiny_report(r, out: Path):
    recs = _records(out)
    assert len(recs) == 4 and all(x["status"] == "done" for x in recs.values()), recs
    assert all("student.top1" in x["metrics"] and "teacher.top1" in x["metrics"] for x in recs.values())
    # the trainer's loss terms reach the records (a plan's "KD loss", "contrastive loss" read them)
    assert all({"student.train_ce", "student.train_kd", "teacher.train_ce", "teacher.train_intra"} <= set(x["metrics"])
               for x in recs.values())
    t = r.report.tables[0]
    assert [row.label for row in t.rows] == ["base", "removed"]
    assert all(row.n_ok == 2 and row.n_failed == 0 for row in t.rows)
    assert [c for c, _ in t.columns] == ["student.top1", "teacher.top1", "student.peak_mem_mb", "teacher.peak_mem_mb"]
    assert t.not_measured == ["Frobnication index"]
    md = (out / "report.md").read_text()
    assert " ± " in md and "Δ vs base" in md and "Frobnication index" in md
    assert (out / "plots" / "01-no-pipeline-cache.png").stat().st_size > 1000
    assert (out / "plots" / "01-no-pipeline-cache-curves.png").exists()
    assert (out / "results.csv").read_text().count("\n") == 5


@needs_stages
def test_tiny_plan_end_to_end_local_with_resume(tmp_path):
    out = tmp_path / "local"
    r = run_plan(PLANS / "tiny.jsonl", seeds=2, out=out, executor="local", jobs=2, overrides=TINY, echo=None)
    assert r.exit_code == 0, r.report.text
    assert len(r.execution.executed) == 4 and len(r.execution.executed_teachers) == 4
    _check_tiny_report(r, out)
    # the base's teacher is reused by no one else here, but each student found its teacher by key
    recs = _records(out)
    assert len({x["teacher_key"] for x in recs.values()}) == 4
    # simulate an interruption: one run lost its record, another was left claimed by a dead process
    keys = sorted(recs)
    (out / "runs" / keys[0] / "record.json").unlink()
    (out / "runs" / keys[1] / "record.json").unlink()
    atomic_write_json(out / "runs" / keys[1] / CLAIM, {"pid": _dead_pid(), "host": socket.gethostname(), "start": None})
    r2 = run_plan(PLANS / "tiny.jsonl", seeds=2, out=out, executor="local", jobs=2, overrides=TINY, echo=None)
    assert sorted(r2.execution.executed) == keys[:2]
    assert r2.execution.executed_teachers == []
    assert sorted(r2.execution.skipped) == keys[2:]
    # the report is rebuilt from the store alone
    (out / "report.md").unlink()
    text = rebuild_report(out)
    assert "±" in text and (out / "report.md").exists()


@needs_stages
def test_tiny_plan_end_to_end_submitit_local(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "sub"
    r = run_plan(PLANS / "tiny.jsonl", seeds=2, out=out, executor="submitit", jobs=4, overrides=TINY, echo=None,
                 executor_options={"cluster": "local", "poll_s": 0.5})
    assert r.exit_code == 0, r.report.text
    _check_tiny_report(r, out)
    assert list((out / "submitit").glob("*_submitted.pkl")) or list((out / "submitit").iterdir())


def test_an_ablation_with_its_own_base_is_compared_with_its_own_base_runs(tmp_path):
    """DKD's beta on the KD base: the table's base row is the DKD student at the default beta, not the KD one."""
    plan = tmp_path / "dkd.jsonl"
    plan.write_text("\n".join(json.dumps(o) for o in [
        {"name": "DKD beta", "ablated_part": "DKD beta", "action": "REPLACE", "replacement": [2], "metrics": ["Top-1"]},
        {"name": "KD T", "ablated_part": "KD temperature", "action": "REPLACE", "replacement": [2], "metrics": ["Top-1"]},
    ]) + "\n")
    out = tmp_path / "o"
    r = run_plan(plan, seeds=1, out=out, stages=FAKE, jobs=1, echo=None, overrides=TINY)
    assert r.exit_code == 0
    grid = json.loads((out / "grid.json").read_text())
    own, shared_base = grid["ablations"][0]["base_runs"], grid["base_runs"]
    assert own != shared_base and "base_runs" not in grid["ablations"][1]
    recs = _records(out)
    assert recs[own["0"]]["config"]["distill"]["methods"] == ["dkd"]
    assert recs[shared_base["0"]]["config"]["distill"]["methods"] == ["kd"]
    dkd, kd = r.report.tables
    top1 = lambda key: recs[key]["metrics"]["student.top1"]  # noqa: E731
    assert dkd.rows[0].cells["student.top1"].mean == pytest.approx(top1(own["0"]))
    assert kd.rows[0].cells["student.top1"].mean == pytest.approx(top1(shared_base["0"]))
    variant = grid["ablations"][0]["variants"][0]["runs"]["0"]
    assert dkd.rows[1].delta["student.top1"].mean == pytest.approx(top1(variant) - top1(own["0"]))
    assert "Base row: own base: the dkd student" in (out / "report.md").read_text()


def test_an_ablation_under_a_setting_of_its_own_runs_against_a_base_with_that_setting(tmp_path):
    """η on the constant-λ base: the table's base row is the gradnorm teacher at the default η."""
    plan = tmp_path / "eta.jsonl"
    plan.write_text(json.dumps({"name": "Eta", "ablated_part": "gradnorm eta of the adaptive lambda",
                                "action": "REPLACE", "replacement": [0.2], "metrics": ["Top-1"]}) + "\n")
    out = tmp_path / "o"
    r = run_plan(plan, seeds=1, out=out, stages=FAKE, jobs=1, echo=None, overrides=TINY)
    assert r.exit_code == 0
    grid = json.loads((out / "grid.json").read_text())
    own, shared_base = grid["ablations"][0]["base_runs"], grid["base_runs"]
    recs = _records(out)
    intra = lambda key: recs[key]["config"]["objective"]["intra"]  # noqa: E731
    assert (intra(own["0"])["lambda_schedule"], intra(own["0"])["eta"]) == ("gradnorm", 0.1)
    assert intra(shared_base["0"])["lambda_schedule"] == "constant"
    variant = grid["ablations"][0]["variants"][0]["runs"]["0"]
    assert (intra(variant)["lambda_schedule"], intra(variant)["eta"]) == ("gradnorm", 0.2)
    assert "Base row: own base: the plan's base with objective.intra.lambda_schedule=gradnorm" in (out / "report.md").read_text()
