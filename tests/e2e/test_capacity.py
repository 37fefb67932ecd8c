"""The capacity-gap recipe: two student-architecture sweeps paired into a gain-vs-size table."""

import math
from pathlib import Path

import pytest

from kdlab.ablation import run_plan
from kdlab.sweep.store import Store, read_json
from kdlab.cli import main
from kdlab.report.capacity import parameter_count, student_top1_by_arch

PLAN = Path(__file__).resolve().parents[2] / "studies" / "capacity_gap" / "plan.md"
FAKE = "fakestages"  # tests/fakestages.py (tests/ is on sys.path under pytest)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("capgap")
    for name, extra in (("intra", ()), ("ce", ("objective.kind=ce",))):
        result = run_plan(PLAN, seeds=2, out=root / name, stages=FAKE, echo=None, jobs=1, overrides=extra)
        assert result.exit_code == 0
    return root


def test_sweep_reads_every_architecture_and_seed(sweeps):
    got = student_top1_by_arch(sweeps / "intra")
    assert set(got) == {"resnet8", "resnet14", "resnet20", "resnet32", "resnet8x4"}
    assert all(len(v) == 2 for v in got.values())
    # the values are the student's top-1 of each record, read back independently here
    grid, store = read_json(sweeps / "intra" / "grid.json"), Store(sweeps / "intra")
    expected = sorted(store.record(store.run_dir(k))["metrics"]["student.top1"] for k in grid["base_runs"].values())
    assert sorted(got["resnet8"]) == expected


def test_gain_table_and_plot(sweeps, capsys):
    out = sweeps / "gap"
    assert main(["capacity-gap", str(sweeps / "intra"), str(sweeps / "ce"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    intra, ce = student_top1_by_arch(sweeps / "intra"), student_top1_by_arch(sweeps / "ce")
    gain = sum(intra["resnet20"]) / 2 - sum(ce["resnet20"]) / 2
    row = next(line for line in printed.splitlines() if line.startswith("| resnet20 "))
    assert math.isclose(float(row.split("|")[5]), gain, abs_tol=0.006)
    lines = [line for line in printed.splitlines() if line.startswith("| resnet")]
    assert [line.split("|")[1].strip() for line in lines] == sorted(intra, key=parameter_count)
    assert (out / "capacity_gap.png").stat().st_size > 1000 and (out / "capacity_gap.md").exists()


def test_folder_without_an_architecture_sweep_is_a_clear_error(tmp_path, capsys):
    assert main(["capacity-gap", str(tmp_path), str(tmp_path)]) == 2
    assert "no ablation" in capsys.readouterr().err
