"""The sweep layer on its own: a grid file written from a plan, read back, edited and run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdlab.ablation import parse_plan, resolve_plan
from kdlab.cli import main
from kdlab.experiment.identity import run_identity
from kdlab.sweep import SweepError, load_grid, run_sweep, write_grid
from kdlab.sweep.run import grid_record

PLANS = Path(__file__).resolve().parents[1] / "plans"
SEEDS = Path(__file__).resolve().parents[2].parent / "shared" / "seeds"
FAKE = "fakestages"
TINY = ("teacher.epochs=1", "student.epochs=1", "data.subset=200", "data.test_subset=100")


def _plans() -> list[Path]:
    found = [PLANS / "intra_plan.jsonl", PLANS / "cocord_plan.jsonl", PLANS / "tiny.jsonl"]
    return found + (sorted(p for p in SEEDS.glob("00[0124]_*.txt")) if SEEDS.is_dir() else [])


@pytest.mark.parametrize("plan", _plans(), ids=lambda p: p.name)
def test_a_written_grid_reads_back_to_the_same_runs(tmp_path, plan):
    sweep = resolve_plan(parse_plan(plan), seeds=2).to_sweep()
    write_grid(sweep, tmp_path / "grid.yaml")
    again = load_grid(tmp_path / "grid.yaml")
    assert again.seeds == sweep.seeds
    assert [run_identity(c, "variant") for c in again.configs()] == [run_identity(c, "variant") for c in sweep.configs()]
    before, after = grid_record(sweep), grid_record(again)
    assert after["base_runs"] == before["base_runs"]
    assert [[v["runs"] for v in a["variants"]] for a in after["ablations"]] == \
           [[v["runs"] for v in a["variants"]] for a in before["ablations"]]


def test_an_edited_grid_runs_what_it_says(tmp_path):
    sweep = resolve_plan(parse_plan(PLANS / "tiny.jsonl"), seeds=1, overrides=TINY).to_sweep()
    write_grid(sweep, tmp_path / "grid.yaml")
    data = yaml.safe_load((tmp_path / "grid.yaml").read_text())
    data["ablations"] = data["ablations"][:1]
    data["ablations"][0]["name"] = "Queue depth"
    data["ablations"][0]["variants"] = [{"label": "Q=4", "value": 4, "overrides": {"objective.intra.cache.size": 4}}]
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(data))
    grid = load_grid(tmp_path / "grid.yaml")
    assert grid.ablations[0].variants[0].config.objective.intra.cache.size == 4
    result = run_sweep(grid, tmp_path / "out", stages=FAKE, jobs=1, echo=None)
    assert result.exit_code == 0 and len(result.executed) == 2  # the base and the one variant
    assert "Queue depth" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("text,message", [
    ("seeds: [0]\nablations: []\n", "missing 'base'"),
    ("base: {}\nseeds: []\nablations: []\n", "seeds must be a non-empty list"),
    ("base: {teacher: {epochs: -1}}\nseeds: [0]\nablations: []\n", "base: teacher.epochs"),
    ("base: {}\nseeds: [0]\nablations: [{name: A, variants: [{label: x, overrides: {objective.intra.tau: 0}}]}]\n",
     "ablation 1 (A) variant 1: objective.intra.tau"),
    ("base: {}\nseeds: [0]\nablations: [{name: A, variants: [{label: x, overrides: {nope.key: 1}}]}]\n",
     "unknown config key"),
])
def test_a_bad_grid_file_is_one_clear_line(tmp_path, text, message):
    (tmp_path / "g.yaml").write_text(text)
    with pytest.raises(SweepError) as err:
        load_grid(tmp_path / "g.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_writes_a_grid_and_sweep_dry_runs_it(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    assert main(["ablate", str(PLANS / "tiny.jsonl"), "--dry-run", "--seeds", "1", "--write-grid", str(grid)]) == 0
    assert grid.is_file()
    assert main(["sweep", str(grid), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing was run" in out and "student runs" in out
    (tmp_path / "bad.yaml").write_text("base: []\n")
    assert main(["sweep", str(tmp_path / "bad.yaml"), "--dry-run"]) == 2


def test_the_embedded_default_says_first_that_it_is_a_smoke_test(tmp_path):
    from kdlab.ablation import format_grid

    on_digits = format_grid(resolve_plan(parse_plan(PLANS / "intra_plan.jsonl"), seeds=1))
    assert on_digits.splitlines()[0].startswith("note: the embedded default (scikit-learn digits) is a smoke test")
    base = tmp_path / "base.yaml"
    base.write_text("objective: {kind: intra}\nteacher: {epochs: 2}\n")
    own = format_grid(resolve_plan(parse_plan(PLANS / "intra_plan.jsonl"), base=str(base), seeds=1))
    assert "smoke test" not in own
