"""TensorBoard events, the Python API snippet of the README, run listing, comparison and export."""

import json
import re
from pathlib import Path

import pytest

from kdlab.cli import main
from kdlab.experiment.schema import load_config
from kdlab.experiment.stages import run_student, run_teacher
from kdlab.runs import export_run

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config("demo", ["data.subset=200", "data.test_subset=100", "data.batch_size=32",
                               "teacher.arch=resnet8", "teacher.epochs=2", "objective.kind=intra",
                               "objective.intra.delta=-0.5", "runtime.progress=false"])
    summary = run_teacher(cfg, root / "teacher")
    assert summary["status"] == "done"
    return root, cfg, summary


def test_tensorboard_events_hold_every_term(teacher_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, summary = teacher_run
    acc = EventAccumulator(str(root / "teacher" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/ce", "train/intra", "train/lr", "test/top1", "test/top5", "method/margin_pass_frac",
            "method/cache_fill", "cost/step_time_ms", "step/loss"} <= tags
    top1 = [e.value for e in acc.Scalars("test/top1")]
    history = [json.loads(line) for line in (root / "teacher/metrics.jsonl").read_text().splitlines()]
    assert top1 == pytest.approx([r["test_top1"] for r in history])
    assert [e.step for e in acc.Scalars("test/top1")] == [1, 2]


def test_readme_python_snippet_runs_as_written(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["student"].status == "done" and namespace["teacher"].status == "done"
    table = namespace["table"]
    assert len(table) == 2 and set(table["stage"]) == {"teacher", "student"}
    assert Path(namespace["card"]).exists()


def test_runs_listing_and_filters(teacher_run, capsys):
    root, _, _ = teacher_run
    assert main(["runs", str(root), "--filter", "stage=teacher"]) == 0
    out = capsys.readouterr().out
    assert "intra" in out and "delta=-0.5" in out and "done" in out  # settings that differ from the defaults
    assert main(["runs", str(root), "--filter", "nosuchkey=1"]) == 2


def test_export_card_feeds_distill_and_detects_tampering(teacher_run, tmp_path):
    root, cfg, _ = teacher_run
    card_path = export_run(root / "teacher", tmp_path / "exp")
    card = json.loads(card_path.read_text())
    assert card["arch"] == "resnet8" and card["files"]["pt"]["sha256"] and "safetensors" in card["files"]
    student = run_student(load_config("demo", ["data.subset=200", "data.test_subset=100", "data.batch_size=32",
                                               "teacher.arch=resnet8", "student.epochs=1", "runtime.progress=false"]),
                          tmp_path / "student", card_path)
    assert student["status"] == "done"
    weights = tmp_path / "exp" / card["files"]["pt"]["file"]
    weights.write_bytes(weights.read_bytes()[:-10] + b"0" * 10)
    code = main(["distill", "data.subset=200", "teacher.arch=resnet8", f"teacher.checkpoint={card_path}",
                 "student.epochs=1", "--run-dir", str(tmp_path / "s2")])
    assert code == 2


def test_compare_writes_png(teacher_run, tmp_path, capsys):
    root, _, _ = teacher_run
    assert main(["compare", str(root / "teacher"), str(root / "teacher"), "--out", str(tmp_path / "c.png")]) == 0
    assert "top1" in capsys.readouterr().out and (tmp_path / "c.png").stat().st_size > 1000
