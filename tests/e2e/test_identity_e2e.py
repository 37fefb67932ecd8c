"""One run identity: what counts, and run folders and stores written under the previous rules (version 1)
being found and reused, or refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdlab.config import ConfigError
from kdlab.experiment.identity import (
    legacy_stage_hash,
    run_identity,
)
from kdlab.experiment.schema import load_config
from kdlab.experiment.stages import run_teacher

PLANS = Path(__file__).resolve().parents[1] / "plans"
FAKE = "fakestages"
TINY = ("teacher.epochs=1", "student.epochs=1", "data.subset=200", "data.test_subset=100")


# --------------------------------------------------------------------------------------------- rules


def _legacy_summary(run_dir: Path, cfg) -> None:
    """Rewrite a finished stage's summary.json as version 1 wrote it."""
    path = run_dir / "summary.json"
    s = json.loads(path.read_text())
    for key in ("identity", "identity_version", "config"):
        s.pop(key)
    s["config_hash"] = legacy_stage_hash(cfg)
    path.write_text(json.dumps(s))


def test_a_finished_stage_folder_of_version_1_is_reused_and_a_different_config_refused(tmp_path, tiny_overrides):
    cfg = load_config("demo", tiny_overrides + ["objective.kind=ce", "teacher.epochs=1"])
    run = tmp_path / "teacher"
    first = run_teacher(cfg, run)
    assert first["status"] == "done" and first["identity"] == run_identity(cfg, "teacher")
    _legacy_summary(run, cfg)
    checkpoint = (run / "checkpoints" / "last.pt").stat().st_mtime_ns

    again = run_teacher(cfg, run)  # found: no training, and the summary now carries its identity
    assert again["metrics"]["top1"] == first["metrics"]["top1"]
    assert (run / "checkpoints" / "last.pt").stat().st_mtime_ns == checkpoint
    assert json.loads((run / "summary.json").read_text())["identity"] == run_identity(cfg, "teacher")

    _legacy_summary(run, cfg)
    with pytest.raises(ConfigError) as err:
        run_teacher(load_config("demo", tiny_overrides + ["objective.kind=ce", "teacher.epochs=2"]), run)
    assert "already holds a finished teacher run of a different config" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_stage_folder_of_an_earlier_identity_version_is_reused_by_its_recorded_tree(tmp_path, tiny_overrides):
    cfg = load_config("demo", tiny_overrides + ["objective.kind=ce", "teacher.epochs=1"])
    run = tmp_path / "teacher"
    first = run_teacher(cfg, run)
    path = run / "summary.json"
    s = json.loads(path.read_text())
    s["identity_version"], s["identity"] = 2, "an-earlier-rule"  # its tree is kept: today's rule applies to it
    path.write_text(json.dumps(s))
    again = run_teacher(cfg, run)
    assert again["metrics"]["top1"] == first["metrics"]["top1"]
    assert json.loads(path.read_text())["identity"] == run_identity(cfg, "teacher")


def test_run_listings_read_the_recorded_config_and_show_what_differs_from_the_method_defaults(tmp_path, tiny_overrides):
    from kdlab.runs import describe_run

    cfg = load_config("demo", tiny_overrides + ["objective.kind=intra", "objective.intra.delta=0.3", "teacher.epochs=1"])
    run = tmp_path / "teacher"
    run_teacher(cfg, run)
    (run / "config.yaml").unlink()  # the listing needs only the summary's recorded section
    row = describe_run(run)
    assert row["method"] == "intra" and row["arch"] == "resnet8" and row["seed"] == 0 and row["status"] == "done"
    assert "delta=0.3" in row["knobs"] and "cache.size=8" in row["knobs"] and "tau" not in row["knobs"]
