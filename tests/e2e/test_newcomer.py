"""What a new user meets first: overrides anywhere, progress lines, readable and honest run folders, messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdlab.cli import build_parser, main, parse_args

PLANS = Path(__file__).resolve().parents[1] / "plans"


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
    from kdlab.experiment.schema import load_config
    from kdlab.experiment.stages import run_teacher

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

    from kdlab.experiment.schema import load_config
    from kdlab.experiment.stages import run_teacher
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
    from kdlab.experiment.schema import load_config
    from kdlab.experiment.stages import run_teacher

    cfg = load_config("demo", TINY + ["teacher.epochs=2", "teacher.optim.lr=1e30"])
    summary = run_teacher(cfg, tmp_path / "nan")
    assert summary["status"] == "failed" and "epoch 1, step" in summary["error"]
    assert "no epoch had finished, so there is no checkpoint" in summary["error"]
    assert "checkpoint of epoch 0" not in summary["error"] and summary["checkpoint"] is None
    assert summary["error"].endswith("Lower teacher.optim.lr.")  # a CE teacher has no loss weight to lower
    assert json.loads((tmp_path / "nan" / "summary.json").read_text())["checkpoint"] is None


def test_divergence_advice_names_the_stage_own_knobs():
    from kdlab.experiment.schema import load_config
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
    fake = dict(seeds=1, out=out, stages="fakestages", jobs=1,
                overrides=("teacher.epochs=1", "student.epochs=1"))
    first = run_plan(PLANS / "tiny.jsonl", echo=None, **fake)
    teachers = len(first.execution.executed_teachers)
    assert teachers >= 1
    for record in (out / "runs").glob("*/record.json"):  # the students are to be run again, not the teachers
        record.unlink()
    run_plan(PLANS / "tiny.jsonl", echo=lines.append, **fake)
    running = next(line for line in lines if line.startswith("Running"))
    assert f"(0 runs and {teachers} teachers already done)" in running, running


def test_sweep_records_point_only_to_checkpoints_that_exist(tmp_path):
    from kdlab.ablation import run_plan
    from kdlab.sweep.store import Store

    run_plan(PLANS / "failing.jsonl", seeds=1, out=tmp_path / "o", stages="fakestages", jobs=1,
             echo=None, overrides=("teacher.epochs=1", "student.epochs=1"))
    records = Store(tmp_path / "o").records().values()
    failed = [r for r in records if r["status"] == "failed"]  # their teacher failed: they never trained
    assert failed and all(r["checkpoint"] is None for r in failed)
    assert all(Path(r["checkpoint"]).exists() for r in records if r["status"] == "done")


def test_non_zero_ranks_stay_quiet_on_shared_errors(tmp_path, monkeypatch, capsys):
    for rank, expected in (("1", ""), ("0", "error: teacher checkpoint")):
        monkeypatch.setenv("RANK", rank)
        code = main(["distill", *TINY, "teacher.checkpoint=/no/such.pt", "--run-dir", str(tmp_path / rank)])
        captured = capsys.readouterr()
        assert code == 2 and captured.out == ""
        assert captured.err.startswith(expected) and len(captured.err.strip().splitlines()) == (1 if expected else 0)


# ---------------------------------------------------------------------------------------- progress
LINE = r"t/run  epoch (\d)/3  loss \d+\.\d{4}  top-1 (\d+\.\d\d)  elapsed \d+:\d\d  ETA \d+:\d\d"


def test_without_a_terminal_each_epoch_is_one_plain_line(tmp_path, capsys):
    import re

    from kdlab.experiment.schema import load_config
    from kdlab.experiment.stages import run_teacher

    cfg = load_config("demo", TINY + ["teacher.epochs=3", "runtime.progress=true"])
    summary = run_teacher(cfg, tmp_path / "t" / "run")
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    found = [re.fullmatch(LINE, line) for line in lines]
    assert all(found) and [int(m.group(1)) for m in found] == [1, 2, 3], lines
    assert float(found[-1].group(2)) == pytest.approx(summary["metrics"]["top1"], abs=0.005)
    assert "\r" not in captured.out + captured.err  # no bar redrawn into a log


def test_on_a_terminal_one_bar_for_the_run_shows_the_last_top1(tmp_path, monkeypatch, capsys):
    from kdlab.experiment.schema import load_config
    from kdlab.engine import progress
    from kdlab.experiment.stages import run_teacher

    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    cfg = load_config("demo", TINY + ["teacher.epochs=2", "runtime.progress=true"])
    summary = run_teacher(cfg, tmp_path / "t" / "run")
    captured = capsys.readouterr()
    assert "epoch" not in captured.out  # no plain lines beside the bar
    first_top1 = json.loads((tmp_path / "t/run/metrics.jsonl").read_text().splitlines()[0])["test_top1"]
    assert "t/run" in captured.err and "epoch 2/2" in captured.err and f"top-1 {first_top1:.2f}" in captured.err
    assert summary["status"] == "done"


def test_clock_and_eta():
    from kdlab.engine.progress import clock, eta

    assert [clock(s) for s in (0, 59.6, 61, 3600, 3725)] == ["0:00", "1:00", "1:01", "1:00:00", "1:02:05"]
    assert eta(30.0, 3, 12) == 90.0


def test_demo_says_which_run_is_going(tmp_path, tiny_overrides, capsys):
    from kdlab.experiment.schema import load_config
    from kdlab.demo import run_demo

    cfg = load_config("demo", [*tiny_overrides, "teacher.epochs=1", "student.epochs=1", "runtime.progress=true",
                               "runtime.tensorboard=false"])
    run_demo(cfg, tmp_path / "demo")
    lines = capsys.readouterr().out.splitlines()
    heads = [line for line in lines if line.startswith("demo run ")]
    assert [h.split(":")[0] for h in heads] == [f"demo run {i}/5" for i in range(1, 6)]
    for head, run in zip(heads, ("teacher_ce", "teacher_intra", "student_alone", "student_kd_ce", "student_kd_intra")):
        assert f": {run}, " in head
        following = lines[lines.index(head) + 1]
        assert following.startswith(f"demo/{run}  epoch 1/1"), following


def test_sweep_lines_carry_the_sweep_eta(tmp_path):
    import re

    from kdlab.ablation import run_plan

    lines: list[str] = []
    run_plan(PLANS / "tiny.jsonl", seeds=1, out=tmp_path / "o", stages="fakestages", jobs=1,
             overrides=("teacher.epochs=1", "student.epochs=1"), echo=lines.append)
    finished = [line for line in lines if re.match(r"\[\d+/\d+\] ", line)]
    total = int(finished[0].split("/")[1].split("]")[0])
    assert len(finished) == total >= 2
    assert all(re.search(r"; sweep ETA \d+:\d\d$", line) for line in finished[:-1]), finished
    assert "ETA" not in finished[-1]


# ------------------------------------------------------------------------------------ readable runs
def test_ablation_runs_have_readable_names_and_show_the_knob_they_change(tmp_path, capsys):
    import os

    from kdlab.ablation import run_plan
    from kdlab.runs import list_runs

    out = tmp_path / "o"
    run_plan(PLANS / "intra_plan.jsonl", seeds=1, out=out, stages="fakestages", jobs=1, echo=None,
             overrides=("teacher.epochs=1", "student.epochs=1"))
    grid = json.loads((out / "grid.json").read_text())
    margin = next(a for a in grid["ablations"] if a["name"] == "Margin sweep")
    variant = next(v for v in margin["variants"] if v["label"] == "0.1")
    link = out / "named" / "margin-sweep" / "0.1-seed0"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # survives moving the folder
    assert link.resolve() == (out / "runs" / variant["runs"]["0"]).resolve()
    teacher = out / "named" / "margin-sweep" / "0.1-seed0-teacher"  # delta changes the teacher: its own name
    assert teacher.resolve() == (out / "teachers" / variant["teachers"]["0"]).resolve()
    assert (out / "named" / "base" / "seed0").resolve() == (out / "runs" / grid["base_runs"]["0"]).resolve()

    rows = {r["name"]: r for r in list_runs(out)}
    assert rows["margin-sweep/0.1-seed0"]["knobs"] == "objective.intra.delta=0.1"
    assert rows["no-anchor-filtering/removed-seed0"]["knobs"] == "objective.intra.margin=false"
    assert rows["base/seed0"]["knobs"] == "base" and len(rows) == len(list_runs(out))  # each folder once
    assert main(["runs", str(out), "--filter", "name=margin-sweep/"]) == 0
    shown = capsys.readouterr().out
    assert "margin-sweep/0.9-seed0" in shown and "objective.intra.delta=0.9" in shown and "base/seed0" not in shown


def test_a_run_killed_with_sigkill_shows_as_interrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from kdlab.runs import list_runs

    run = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-m", "kdlab.cli", "train-teacher", *TINY, "teacher.epochs=50",
                             "--run-dir", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert [r["status"] for r in list_runs(tmp_path)] == ["running"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run / "summary.json").exists()
    assert [r["status"] for r in list_runs(tmp_path)] == ["interrupted"]
    # a pid that now belongs to another process (this one) is not the run's
    owner = json.loads((run / "owner.json").read_text())
    (run / "owner.json").write_text(json.dumps(dict(owner, pid=os.getpid())))
    assert [r["status"] for r in list_runs(tmp_path)] == ["interrupted"]


# ---------------------------------------------------------------------------------------- surprises
def test_a_card_brings_its_recipe(tmp_path, capsys):
    import yaml

    from kdlab.experiment.schema import load_config
    from kdlab.experiment.stages import run_teacher
    from kdlab.runs import export_run

    cfg = load_config("demo", TINY + ["teacher.epochs=1", "student.epochs=3", "data.split_seed=5"])
    run_teacher(cfg, tmp_path / "t")
    card = export_run(tmp_path / "t", tmp_path / "exported")
    assert main(["show-config", f"teacher.checkpoint={card}", "student.optim.lr=0.01"]) == 0
    captured = capsys.readouterr()
    shown = yaml.safe_load(captured.out)
    assert shown["data"]["subset"] == 200 and shown["data"]["split_seed"] == 5  # the card's data, not defaults
    assert shown["teacher"]["arch"] == "resnet8" and shown["student"]["epochs"] == 3
    assert shown["teacher"]["checkpoint"] == str(card) and shown["student"]["optim"]["lr"] == 0.01
    assert shown["runtime"]["threads"] is None  # the machine's settings are not part of a recipe
    assert "note: no config given: the recipe stored in" in captured.err
    # a config named first is the recipe: the card only gives the weights
    assert main(["show-config", "demo", f"teacher.checkpoint={card}"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["subset"] is None


def test_pipeline_reuses_a_finished_teacher_of_the_same_identity(tmp_path, capsys):
    from kdlab.experiment.schema import load_config
    from kdlab.experiment.stages import run_pipeline, run_teacher

    out = tmp_path / "runs"
    cfg = load_config("demo", TINY + ["objective.kind=intra", "teacher.epochs=1", "student.epochs=1", f"out={out}"])
    demo_teacher = run_teacher(cfg, out / "demo-1234abcd" / "teacher_intra")  # as `kdlab demo` left it
    # the student side differs (so does the pipeline's folder): the teacher is the same
    other_student = load_config("demo", TINY + ["objective.kind=intra", "teacher.epochs=1", "student.epochs=2",
                                                f"out={out}"])
    result = run_pipeline(other_student, out / "pipeline")
    assert result["status"] == "done" and not (out / "pipeline" / "teacher").exists()
    assert result["teacher"]["run_dir"] == demo_teacher["run_dir"]
    assert result["student"]["teacher_checkpoint"] == str(out / "demo-1234abcd/teacher_intra/checkpoints/last.pt")
    assert "note: reusing the finished teacher" in capsys.readouterr().err
    # another margin is another teacher: trained, not reused
    delta = load_config("demo", TINY + ["objective.kind=intra", "objective.intra.delta=0.1", "teacher.epochs=1",
                                        "student.epochs=1", f"out={out}"])
    result = run_pipeline(delta, out / "delta")
    assert result["teacher"]["run_dir"] == str(out / "delta" / "teacher")


# -------------------------------------------------------------------------------------------- plots
def _result(ratios, margins=None, embedding=None):
    """The parts of an analysis result that the plots read."""
    counts = margins or [0] * 40
    geometry = {"pooled": {"per_class": {"ratio": ratios}}}
    geometry["embedding"] = {"per_class": {"ratio": embedding}} if embedding else None
    return {"classes": [f"c{i}" for i in range(len(ratios))], "geometry": geometry,
            "soft_labels": {"margin": {"hist_edges": [-1 + i / 20 for i in range(41)], "hist_counts": counts,
                                       "mean": 0.9}}}


@pytest.fixture
def figures(monkeypatch):
    from kdlab.report import analyze

    kept = []
    monkeypatch.setattr(analyze, "_save", lambda fig, path: kept.append(fig) or path)
    return kept


def test_per_class_ratios_are_points_against_the_first_run(figures, tmp_path):
    from kdlab.report.analyze import plot_ratio_per_class

    ce, intra = [0.8, 0.9, None, 1.0], [0.6, 0.95, 0.7, 0.5]
    plot_ratio_per_class({"teacher_ce": _result(ce), "teacher_intra": _result(intra, embedding=[0.3] * 4)},
                         tmp_path / "r.png")
    pooled, embedding = figures[0].axes
    points = pooled.collections[0].get_offsets().tolist()
    assert points == [[0.8, 0.6], [0.9, 0.95], [1.0, 0.5]]  # one per class both runs measured, in class order
    assert "teacher_ce" in pooled.get_xlabel() and [t.get_text() for t in pooled.texts] == ["c0", "c1", "c3"]
    # the CE teacher has no embedding: the intra teacher's embedding ratios against the class index
    assert embedding.get_xlabel() == "class" and list(embedding.lines[0].get_ydata()) == [0.3] * 4


def test_margin_is_a_cumulative_distribution_on_a_log_axis(figures, tmp_path):
    from kdlab.report.analyze import plot_margin_cdf

    counts = [0] * 40
    counts[10], counts[30], counts[39] = 1, 9, 990  # one wrong sample, a few unsure, the confident rest
    plot_margin_cdf({"t": _result([1.0], margins=counts)}, tmp_path / "m.png")
    ax = figures[0].axes[0]
    assert ax.get_yscale() == "log"
    y = list(ax.lines[0].get_ydata())
    assert y[10] == pytest.approx(0.001) and y[30] == pytest.approx(0.01) and y[-1] == pytest.approx(1.0)


def test_report_text_drops_damaged_glyphs_of_the_plan(tmp_path):
    from kdlab.ablation import run_plan
    from kdlab.ablation.text import readable_text

    assert readable_text("temperature (Ï„) of the loss") == "temperature (tau) of the loss"  # cp1252-read UTF-8
    assert readable_text("threshold (未) δ — x") == "threshold delta - x"
    out = tmp_path / "o"
    run_plan(PLANS / "intra_plan.jsonl", seeds=1, out=out, stages="fakestages", jobs=1, echo=None,
             overrides=("teacher.epochs=1", "student.epochs=1"))
    report = (out / "report.md").read_text()
    assert "- Ablated part: temperature (tau) of the intra-class loss" in report
    assert "- Ablated part: margin-based selection threshold\n" in report
    assert all(ord(c) < 128 for c in report.replace("±", "").replace("Δ", ""))  # only kdlab's own symbols


# ------------------------------------------------------------------------------------------ threads
@pytest.mark.parametrize("given,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_kdlab_makes_waiting_threads_sleep_unless_told_otherwise(given, expected):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", "import kdlab, os; print(os.environ['OMP_WAIT_POLICY'])"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == expected


# ---------------------------------------------------------------------------------------------- set-up
def test_readme_setup_lines_and_ci_agree():
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    block = readme[readme.index("## Set-up"):readme.index("## A short tour")]
    lines = [line for line in block.splitlines() if line.startswith("python3 -m venv .venv && ")]
    cpu, gpu, tests = lines
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu && pip install -e . && kdlab demo" in cpu
    assert gpu.endswith("&& pip install -e . && kdlab demo") and "torch" not in gpu
    ci = (root / ".ci" / "run").read_text().strip().splitlines()
    assert tests.endswith(ci[-1]) and ci[-1] == "pip install -e '.[test]' && python -m pytest"  # the same command
    assert ci[-2].startswith("pip install -q torch==")  # the CPU wheel first, as the CPU line does
