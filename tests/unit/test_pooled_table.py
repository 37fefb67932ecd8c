"""`kdlab table`: one paired table from the runs of several results stores.

The stores are written here by hand (records with chosen metrics, configs built from overrides); expected means,
stds and intervals are computed in the test from the numbers it chose (t quantile from a printed table).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kdlab.cli import main
from kdlab.config import ConfigError
from kdlab.experiment.schema import build_config
from kdlab.sweep.pooled import pooled_table, render_pooled
from kdlab.sweep.report import format_delta, mean_std_text
from kdlab.sweep.stats import PairedDelta
from kdlab.sweep.store import Store, run_key

T975_2 = 4.303  # Student's t, 0.975 quantile, 2 degrees of freedom


def _config(seed: int, *overrides: str) -> dict:
    return build_config(None, [f"seed={seed}", *overrides]).model_dump(mode="json")


def _write(store_dir: Path, runs: list[tuple[tuple[str, ...], dict[int, float]]], key_suffix: str = "",
           base: tuple[str, ...] | None = None, failed: dict[tuple[str, ...], int] | None = None) -> Path:
    """A store whose student runs have the given configs (overrides) and per-seed student top-1 (and teacher
    top-1 = student + 4). ``key_suffix`` changes the folder names (an earlier identity version's keys)."""
    store = Store(store_dir)
    (store_dir / "runs").mkdir(parents=True, exist_ok=True)
    for overrides, per_seed in runs:
        for seed, top1 in per_seed.items():
            cfg = _config(seed, *overrides)
            key = run_key(cfg) + key_suffix
            store.write_record(store.run_dir(key), {
                "key": key, "status": "done", "seed": seed, "config": cfg,
                "metrics": {"student.top1": top1, "teacher.top1": top1 + 4.0}})
    for overrides, seed in (failed or {}).items():
        cfg = _config(seed, *overrides)
        store.write_record(store.run_dir(run_key(cfg)), {"key": run_key(cfg), "status": "failed", "seed": seed,
                                                         "config": cfg, "metrics": {}, "error": "diverged"})
    if base is not None:
        store.write_grid({"base_runs": {str(s): run_key(_config(s, *base)) for s in (0, 1, 2)},
                          "ablations": [{"metrics": [{"name": "Top-1", "keys": ["top1"], "stage": None}],
                                         "teacher_varies": True}]})
    return store_dir


CE = ("objective.kind=ce",)
INTRA = ("objective.kind=intra", "objective.intra.lambda_=0.02")
INTRA_01 = ("objective.kind=intra", "objective.intra.lambda_=0.1")
GRADNORM = ("objective.kind=intra", "objective.intra.lambda_=0.02", "objective.intra.lambda_schedule=gradnorm")


def test_groups_across_stores_pair_by_seed_and_count_a_shared_run_once(tmp_path):
    a = _write(tmp_path / "a", [(INTRA, {0: 70.0, 1: 71.0, 2: 72.0}), (CE, {0: 71.0, 1: 73.0, 2: 72.0})],
               base=INTRA)
    # store b holds λ = 0.1, and a copy of store a's λ = 0.02 runs under other folder names (and other values:
    # the first store's copy is the one used)
    b = _write(tmp_path / "b", [(INTRA_01, {0: 69.0, 1: 69.0, 2: 69.0}), (INTRA, {0: 0.0, 1: 0.0, 2: 0.0})],
               key_suffix="-v2")
    t = pooled_table([a, b], metrics=["student.top1"])
    assert t.keys == ["objective.intra.lambda_", "objective.kind"]
    base, ce, lam01 = t.groups
    assert base.is_base and base.values == {"objective.intra.lambda_": 0.02, "objective.kind": "intra"}
    assert ce.values == {"objective.intra.lambda_": "–", "objective.kind": "ce"}
    assert lam01.values["objective.intra.lambda_"] == 0.1
    assert sorted(base.runs) == [0, 1, 2] and base.per_seed["student.top1"] == {0: 70.0, 1: 71.0, 2: 72.0}
    # CE − base: diffs 1, 2, 0 -> mean 1, sd 1, half-width 4.303 / sqrt(3)
    half = T975_2 / math.sqrt(3)
    d = ce.delta["student.top1"]
    assert (d.mean, d.lo, d.hi, d.pairs) == (pytest.approx(1.0), pytest.approx(1 - half, abs=1e-3),
                                             pytest.approx(1 + half, abs=1e-3), 3)
    # λ = 0.1 − base: diffs −1, −2, −3 -> mean −2, sd 1: the interval [−4.48, +0.48] contains 0
    assert lam01.delta["student.top1"].mean == pytest.approx(-2.0) and not lam01.delta["student.top1"].excludes_zero
    md = render_pooled(t)
    assert "| **base** | 0.02 | intra | 0,1,2 | 71.00 ± 1.00 |  |" in md
    assert f"| ce | 0,1,2 | 72.00 ± 1.00 | +1.00 [{1 - half:+.2f}, {1 + half:+.2f}] |" in md
    assert "| 0.1 | intra | 0,1,2 | 69.00 ± 0.00 | -2.00 [-4.48, +0.48] |" in md


def test_an_interval_that_excludes_zero_is_marked_and_one_pair_has_no_interval(tmp_path):
    a = _write(tmp_path / "a", [(INTRA, {0: 70.0, 1: 71.0, 2: 72.0}),
                                (INTRA_01, {0: 72.0, 1: 74.0, 2: 76.0}),   # diffs 2, 3, 4: [0.52, 5.48]
                                (CE, {1: 75.0})], base=INTRA)               # one pair: diff 4
    md = render_pooled(pooled_table([a], metrics=["student.top1"]))
    assert "+3.00 [+0.52, +5.48]*" in md
    assert "| ce | 1 | 75.00 | +4.00 (1 pair) |" in md


def test_keys_left_out_at_their_default_read_as_that_default(tmp_path):
    # identity leaves lambda_schedule out while it is constant; the table names it beside gradnorm
    a = _write(tmp_path / "a", [(INTRA, {0: 70.0}), (GRADNORM, {0: 71.0})], base=INTRA)
    t = pooled_table([a], metrics=["student.top1"])
    assert t.keys == ["objective.intra.lambda_schedule"]
    assert [g.values["objective.intra.lambda_schedule"] for g in t.groups] == ["constant", "gradnorm"]


def test_where_filters_and_base_selects_a_group(tmp_path):
    kd_rkd = ("distill.methods=[kd,rkd]",)
    a = _write(tmp_path / "a", [(INTRA, {0: 70.0, 1: 71.0}), (INTRA + kd_rkd, {0: 73.0, 1: 75.0}),
                                (CE, {0: 72.0, 1: 72.0})])
    # a single value matches a one-element list: distill.methods=kd keeps the KD students only
    t = pooled_table([a], where=["distill.methods=kd"], base=["objective.kind=ce"], metrics=["student.top1"])
    assert [g.values["objective.kind"] for g in t.groups] == ["ce", "intra"] and t.skipped == 2
    assert t.groups[1].delta["student.top1"].mean == pytest.approx(-1.5)
    t = pooled_table([a], base=["distill.methods=[kd, rkd]"], metrics=["teacher.top1"])
    assert t.groups[0].values["distill.methods"] == ["kd", "rkd"]
    assert t.groups[0].per_seed["teacher.top1"] == {0: 77.0, 1: 79.0}


def test_by_pools_configs_and_refuses_two_runs_of_one_seed(tmp_path):
    a = _write(tmp_path / "a", [(INTRA, {0: 70.0, 1: 71.0}), (INTRA_01, {2: 60.0}), (CE, {0: 72.0, 1: 72.0})])
    t = pooled_table([a], by=["objective.kind"], base=["objective.kind=ce"], metrics=["student.top1"])
    assert t.keys == ["objective.kind"] and t.groups[1].per_seed["student.top1"] == {0: 70.0, 1: 71.0, 2: 60.0}
    b = _write(tmp_path / "b", [(INTRA, {0: 70.0}), (INTRA_01, {0: 60.0})])
    with pytest.raises(ConfigError, match=r"two different runs with seed 0 .* differ in objective.intra.lambda_"):
        pooled_table([b], by=["objective.kind"])


def test_failed_runs_are_counted(tmp_path):
    a = _write(tmp_path / "a", [(INTRA, {0: 70.0, 1: 71.0}), (CE, {0: 72.0})], base=INTRA, failed={CE: 1})
    md = render_pooled(pooled_table([a], metrics=["student.top1"]))
    assert "| 0 (1 failed) |" in md


@pytest.mark.parametrize("kwargs, message", [
    ({"base": ["objective.intra.lamda=0.02"]}, "not a config key of any run here; did you mean objective.intra.lambda_"),
    ({"base": ["objective.kind=supcon"]}, "no group matches --base"),
    ({"base": ["objective.kind=intra"]}, "2 groups match --base"),
    ({"base": ["objective.kind"]}, "must look like key=value"),
    ({"metrics": ["top1"]}, "no run recorded the metric 'top1'; metrics are stage.key, e.g. student.top1"),
    ({"where": ["objective.kind=supcon"]}, "no run matches --where"),
    ({}, "say which group is the base with --base"),
])
def test_bad_input_says_what_to_change(tmp_path, kwargs, message):
    a = _write(tmp_path / "a", [(INTRA, {0: 70.0}), (INTRA_01, {0: 71.0}), (CE, {0: 72.0})])
    with pytest.raises(ConfigError, match=message):
        pooled_table([a], **kwargs)


def test_a_folder_without_finished_students_is_refused(tmp_path):
    (tmp_path / "t" / "teachers").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not a results store .*teachers/ only"):
        pooled_table([tmp_path / "t"])


def test_cli_prints_and_writes_the_table(tmp_path, capsys):
    a = _write(tmp_path / "a", [(INTRA, {0: 70.0, 1: 71.0, 2: 72.0}), (CE, {0: 71.0, 1: 73.0, 2: 72.0})], base=INTRA)
    out, js = tmp_path / "t.md", tmp_path / "t.json"
    assert main(["table", str(a), "--out", str(out), "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text().strip() == printed.strip() and "| student.top1 |" in printed
    data = json.loads(js.read_text())
    ce = next(g for g in data["groups"] if g["config"]["objective.kind"] == "ce")
    assert ce["metrics"]["student.top1"]["per_seed"] == {"0": 71.0, "1": 73.0, "2": 72.0}
    assert ce["delta"]["student.top1"]["mean"] == pytest.approx(1.0) and ce["delta"]["student.top1"]["pairs"] == 3
    # the default metrics are the first store's ablation columns: student and teacher top-1
    assert data["metrics"] == ["student.top1", "teacher.top1"]
    assert main(["table", str(a), "--base", "objective.kind=simclr"]) != 0
    assert "no group matches --base" in capsys.readouterr().err


def test_number_formats_show_a_digit_of_every_nonzero_spread():
    assert mean_std_text(1.9412, 0.0049) == "1.941 ± 0.005"
    assert mean_std_text(71.07, 0.79) == "71.07 ± 0.79"
    assert mean_std_text(69.0, 0.0) == "69.00 ± 0.00"  # a true zero stays as printed
    assert mean_std_text(71.25, None) == "71.25"
    # a bound that would print as +0.00 beside the mark gets the digits that show it
    assert format_delta(PairedDelta(0.053, 0.004, 0.102, 3), like=1.9) == "+0.053 [+0.004, +0.102]*"
    assert format_delta(PairedDelta(2.0, -0.48, 4.48, 3), like=91.0) == "+2.00 [-0.48, +4.48]"
    assert format_delta(PairedDelta(None, None, None, 0), like=1.0) == "n/a"
