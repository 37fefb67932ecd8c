"""What a new user meets first: overrides anywhere, progress lines, readable and honest run folders, messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdlab.cli import build_parser, main, parse_args

PLANS = Path(__file__).resolve().parent / "plans"


# ------------------------------------------------------------------------------ overrides anywhere
@pytest.mark.parametrize("argv,config,overrides", [
    (["ablate", "plan.md", "--seeds", "1", "teacher.epochs=2"], None, ["teacher.epochs=2"]),
    (["ablate", "plan.md", "a=1", "--base", "my.yaml", "teacher.epochs=30"], None, ["a=1", "teacher.epochs=30"]),
    (["train-teacher", "demo", "--run-dir", "X", "k=v"], "demo", ["k=v"]),
    (["train-teacher", "--run-dir", "X", "demo", "k=v", "j=w"], "demo", ["k=v", "j=w"]),
    (["pipeline", "demo", "a.b=1", "--run-dir", "X", "c.d=[x,y]"], "demo", ["a.b=1", "c.d=[x,y]"]),
])
def test_overrides_are_taken_after_options(argv, config, overrides):
    args = parse_args(build_parser(), argv)
    assert getattr(args, "config", None) == config and args.overrides == overrides


def test_ablate_override_after_an_option_reaches_the_base(monkeypatch, capsys):
    import kdlab.ablation

    real, seen = kdlab.ablation.run_plan, {}

    def recording(*args, **kw):
        seen["result"] = real(*args, **kw)
        return seen["result"]

    monkeypatch.setattr(kdlab.ablation, "run_plan", recording)
    code = main(["ablate", str(PLANS / "tiny.jsonl"), "--dry-run", "--seeds", "1", "teacher.epochs=7"])
    assert code == 0 and "dry run" in capsys.readouterr().out
    grid = seen["result"].grid
    assert grid.base.teacher.epochs == 7 and len(grid.seeds) == 1


@pytest.mark.parametrize("argv,usage", [
    (["ablate", "plan.md", "--seeds", "1", "oops"], "usage: kdlab ablate"),
    (["train-teacher", "demo", "--run-dir", "X", "--no-such-option"], "usage: kdlab train-teacher"),
    (["runs", "runs/", "stage=student"], "usage: kdlab runs"),  # runs takes --filter, not overrides
])
def test_leftover_arguments_get_the_commands_own_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(build_parser(), argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and usage in err and "unrecognized arguments" in err


# ----------------------------------------------------------------------------------- crash leftovers
TINY = ["data.subset=200", "data.test_subset=100", "data.batch_size=32", "teacher.arch=resnet8",
        "student.arch=resnet8", "objective.kind=ce", "runtime.progress=false", "runtime.threads=1",
        "runtime.tensorboard=false"]


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_without_a_checkpoint_drops_orphan_records_and_temp_files(tmp_path):
    from kdlab.config import load_config
    from kdlab.engine.stages import run_teacher

    cfg = load_config("demo", TINY + ["teacher.epochs=1"])
    run = tmp_path / "t"
    run_teacher(cfg, run)
    record = (run / "metrics.jsonl").read_text()
    # a run killed while it wrote its first checkpoint, seven times over: each start appended epoch 1's record
    ckpts = run / "checkpoints"
    for name in ("summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        (run / name).unlink()
    (run / "metrics.jsonl").write_text(record * 7)
    (ckpts / ".best.pt.k2j4x.tmp").write_bytes(b"torn")
    (ckpts / ".last.pt.a9f3.tmp").write_bytes(b"torn")
    assert run_teacher(cfg, run)["status"] == "done"
    assert _epochs(run) == [1]
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]


def test_resume_keeps_one_record_per_epoch_up_to_the_checkpoint(tmp_path):
    import torch

    from kdlab.config import load_config
    from kdlab.engine.stages import run_teacher
    from kdlab.engine.trainer import Trainer

    cfg = load_config("demo", TINY + ["teacher.epochs=2"])
    run = tmp_path / "t"
    run_teacher(cfg, run)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0] + lines[0] + lines[1] + lines[1])
    ckpt = torch.load(run / "checkpoints/last.prev.pt", weights_only=True)  # the checkpoint of epoch 1
    assert ckpt["epoch"] == 1
    trainer = Trainer.__new__(Trainer)  # only the bookkeeping of resume() is exercised here
    trainer.metrics_path, trainer.main = run / "metrics.jsonl", True
    trainer._keep_history(1)
    assert _epochs(run) == [1] and [r["epoch"] for r in trainer.history] == [1]


# ---------------------------------------------------------------------------------------- messages
def test_divergence_before_any_checkpoint_says_so_and_points_to_no_file(tmp_path):
    from kdlab.config import load_config
    from kdlab.engine.stages import run_teacher

    cfg = load_config("demo", TINY + ["teacher.epochs=2", "teacher.optim.lr=1e30"])
    summary = run_teacher(cfg, tmp_path / "nan")
    assert summary["status"] == "failed" and "epoch 1, step" in summary["error"]
    assert "no epoch had finished, so there is no checkpoint" in summary["error"]
    assert "checkpoint of epoch 0" not in summary["error"] and summary["checkpoint"] is None
    assert summary["error"].endswith("Lower teacher.optim.lr.")  # a CE teacher has no loss weight to lower
    assert json.loads((tmp_path / "nan" / "summary.json").read_text())["checkpoint"] is None


def test_divergence_advice_names_the_stage_own_knobs():
    from kdlab.config import load_config
    from kdlab.engine.trainer import StageInfo, divergence_advice

    def advice(stage, overrides):
        cfg = load_config("demo", overrides).model_dump(mode="json")
        return divergence_advice(StageInfo(stage, "resnet8", 10, (1, 8, 8), "digits", cfg))

    assert advice("teacher", ["objective.kind=intra"]) == "Lower teacher.optim.lr or objective.intra.lambda_."
    student = advice("student", ["objective.kind=intra", "distill.methods=[kd,cocord]"])
    assert student == "Lower student.optim.lr or distill.kd.weight or distill.cocord.ctr_weight."
    assert advice("student", ["distill.methods=[]"]) == "Lower student.optim.lr."


def test_full_disk_names_the_file_it_could_not_write(tmp_path, monkeypatch, capsys):
    import errno
    import os

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write/fsync raise it: no file name

    monkeypatch.setattr(os, "fsync", no_space)
    run = tmp_path / "t"
    code = main(["train-teacher", *TINY, "teacher.epochs=1", "--run-dir", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err == f"error: No space left on device ({run / 'config.yaml'})"


def test_sweep_rerun_counts_the_teachers_it_reuses(tmp_path):
    from kdlab.ablation import run_plan

    out, lines = tmp_path / "o", []
    fake = dict(seeds=1, out=out, stages="kdlab.ablation.fakestages", jobs=1,
                overrides=("teacher.epochs=1", "student.epochs=1"))
    first = run_plan(PLANS / "tiny.jsonl", echo=None, **fake)
    teachers = len(first.execution.executed_teachers)
    assert teachers >= 1
    for record in (out / "runs").glob("*/record.json"):  # the students are to be run again, not the teachers
        record.unlink()
    run_plan(PLANS / "tiny.jsonl", echo=lines.append, **fake)
    running = next(line for line in lines if line.startswith("Running"))
    assert f"(0 runs and {teachers} teachers already done)" in running, running


def test_non_zero_ranks_stay_quiet_on_shared_errors(tmp_path, monkeypatch, capsys):
    for rank, expected in (("1", ""), ("0", "error: teacher checkpoint")):
        monkeypatch.setenv("RANK", rank)
        code = main(["distill", *TINY, "teacher.checkpoint=/no/such.pt", "--run-dir", str(tmp_path / rank)])
        captured = capsys.readouterr()
        assert code == 2 and captured.out == ""
        assert captured.err.startswith(expected) and len(captured.err.strip().splitlines()) == (1 if expected else 0)
