"""One run identity: what counts, and run folders and stores written under the previous rules (version 1)
being found and reused, or refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdlab.ablation import run_plan
from kdlab.sweep.store import Store, StoreError
from kdlab.experiment.identity import (
    IDENTITY_VERSION,
    identity_tree,
    legacy_run_key,
    legacy_teacher_key,
    run_identity,
)
from kdlab.experiment.schema import load_config, to_yaml

PLANS = Path(__file__).resolve().parents[1] / "plans"
FAKE = "fakestages"
TINY = ("teacher.epochs=1", "student.epochs=1", "data.subset=200", "data.test_subset=100")


# --------------------------------------------------------------------------------------------- rules
@pytest.mark.parametrize("override", ["runtime.device=cpu", "runtime.tensorboard=false", "runtime.threads=2",
                                      "runtime.progress=false", "name=other", "out=elsewhere",
                                      "runtime.channels_last=off"])
def test_display_logging_and_device_settings_do_not_change_any_identity(override):
    base, other = load_config("demo"), load_config("demo", [override])
    for stage in ("teacher", "student", "variant"):
        assert run_identity(base, stage) == run_identity(other, stage)


def test_student_settings_do_not_change_the_teacher_identity_but_do_change_the_student():
    base, other = load_config("demo"), load_config("demo", ["distill.kd.T=2"])
    assert run_identity(base, "teacher") == run_identity(other, "teacher")
    assert run_identity(base, "student") != run_identity(other, "student")


@pytest.mark.parametrize("override", ["objective.intra.delta=0.3", "teacher.epochs=3", "data.subset=100",
                                      "runtime.amp=off", "runtime.deterministic=true", "seed=1"])
def test_what_changes_a_teacher_changes_both_identities(override):
    base, other = load_config("demo"), load_config("demo", [override])
    assert run_identity(base, "teacher") != run_identity(other, "teacher")
    assert run_identity(base, "student") != run_identity(other, "student")


def test_keys_added_later_are_listed_with_the_schema_default():
    from kdlab.experiment.identity import ADDED_LATER
    from kdlab.experiment.schema import build_config, get_path

    defaults = build_config({})
    assert {k: get_path(defaults, k) for k in ADDED_LATER} == ADDED_LATER


def test_settings_of_methods_a_run_does_not_use_do_not_count():
    kd_only = load_config("demo", ["distill.methods=[kd]", "objective.kind=ce"])
    for override in ("distill.dkd.beta=2", "distill.cocord.tau=0.5", "objective.intra.delta=0.1"):
        other = load_config("demo", ["distill.methods=[kd]", "objective.kind=ce", override])
        assert run_identity(other, "student") == run_identity(kd_only, "student"), override
        assert run_identity(other, "teacher") == run_identity(kd_only, "teacher"), override
    tree = identity_tree(kd_only)
    assert set(tree["distill"]) == {"methods", "ce_weight", "kd"} and "intra" not in tree["objective"]
    with_dkd = load_config("demo", ["distill.methods=[kd,dkd]", "distill.dkd.beta=2"])
    assert run_identity(with_dkd) != run_identity(load_config("demo", ["distill.methods=[kd,dkd]"]))


def test_a_variant_is_a_student_without_its_seed():
    a, b = load_config("demo", ["seed=1"]), load_config("demo", ["seed=2"])
    assert run_identity(a, "variant") == run_identity(b, "variant")
    assert run_identity(a, "student") != run_identity(b, "student")
    assert "seed" not in identity_tree(a, "variant")


# ------------------------------------------------------------------------------- stage folders, v1




# ------------------------------------------------------------------------------------- stores, v1
def _to_version_1(out: Path) -> dict[str, str]:
    """Rename a store's folders to the keys version 1 gave them, as version 1 left them (no store.json).
    Returns new name -> old name."""
    names = {}
    for sub, key_of in (("teachers", legacy_teacher_key), ("runs", legacy_run_key)):
        for folder in sorted((out / sub).iterdir()):
            rec = json.loads((folder / "record.json").read_text())
            old = key_of(rec["config"])
            assert old != folder.name
            text = json.dumps(rec).replace(folder.name, old)
            (folder / "record.json").write_text(text)
            folder.rename(folder.parent / old)
            names[folder.name] = old
    for sub in ("runs",):  # student records name their teacher by key
        for folder in (out / sub).iterdir():
            text = (folder / "record.json").read_text()
            for new, old in names.items():
                text = text.replace(new, old)
            (folder / "record.json").write_text(text)
    (out / "store.json").unlink()
    return names


def test_a_store_of_version_1_is_upgraded_and_nothing_is_run_again(tmp_path):
    out = tmp_path / "o"
    first = run_plan(PLANS / "tiny.jsonl", seeds=1, out=out, stages=FAKE, jobs=1, echo=None, overrides=TINY)
    assert first.exit_code == 0 and first.executed
    before = {k: r["metrics"] for k, r in Store(out).records().items()}
    names = _to_version_1(out)
    assert Store(out).version() == 1

    lines: list[str] = []
    again = run_plan(PLANS / "tiny.jsonl", seeds=1, out=out, stages=FAKE, jobs=1, echo=lines.append, overrides=TINY)
    assert again.exit_code == 0 and again.executed == []
    assert sum("upgraded" in line for line in lines) == len(names)
    assert Store(out).version() == IDENTITY_VERSION
    assert {k: r["metrics"] for k, r in Store(out).records().items()} == before
    for rec in Store(out).records().values():  # records point at the renamed teacher folders
        assert rec["teacher_key"] is None or (out / "teachers" / rec["teacher_key"]).is_dir()


def test_two_old_folders_of_one_run_upgrade_to_one_keeping_the_finished_and_setting_the_other_aside(tmp_path):
    """Version 2 keyed a KD run apart when an unused block changed (e.g. distill.crd.nce_k); today both are one
    run. The finished folder is kept under the current key; the unfinished one is moved aside, not deleted."""
    out = tmp_path / "o"
    cfg = load_config("demo", ["distill.methods=[kd]"])
    other = load_config("demo", ["distill.methods=[kd]", "distill.crd.nce_k=4096"])
    key = run_identity(cfg, "student")
    assert run_identity(other, "student") == key
    done, partial = out / "runs" / "aaaa-v2-done", out / "runs" / "bbbb-v2-partial"
    done.mkdir(parents=True)
    partial.mkdir(parents=True)
    (done / "record.json").write_text(json.dumps({"key": done.name, "status": "done", "config": cfg.model_dump(mode="json")}))
    (partial / "config.yaml").write_text(to_yaml(other))
    (out / "store.json").write_text(json.dumps({"identity_version": 2}))
    renamed = Store(out).upgrade()
    assert (out / "runs" / key / "record.json").exists()
    assert json.loads((out / "runs" / key / "record.json").read_text())["key"] == key
    assert (out / "superseded" / "runs" / partial.name / "config.yaml").exists()
    assert sorted(renamed) == sorted([(f"runs/{partial.name}", f"superseded/runs/{partial.name}"),
                                      (f"runs/{done.name}", f"runs/{key}")])
    assert Store(out).version() == IDENTITY_VERSION


def test_a_set_aside_teacher_is_renamed_in_the_records_that_named_it(tmp_path):
    out = tmp_path / "o"
    cfg = load_config("demo", ["distill.methods=[kd]"])
    other = load_config("demo", ["distill.methods=[kd]", "distill.crd.nce_k=4096"])
    tkey = run_identity(cfg, "teacher")
    kept, aside = out / "teachers" / "aaaa-old", out / "teachers" / "bbbb-old"
    for folder, c in ((kept, cfg), (aside, other)):
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps({"key": folder.name, "status": "done",
                                                        "config": c.model_dump(mode="json")}))
    student = out / "runs" / "cccc-old"
    student.mkdir(parents=True)
    (student / "record.json").write_text(json.dumps({"key": "cccc-old", "status": "done", "teacher_key": "bbbb-old",
                                                     "config": cfg.model_dump(mode="json")}))
    (out / "store.json").write_text(json.dumps({"identity_version": 2}))
    Store(out).upgrade()
    rec = Store(out).records()[run_identity(cfg, "student")]
    assert rec["teacher_key"] == tkey and (out / "teachers" / tkey).is_dir()


def test_an_old_folder_whose_new_name_is_another_run_is_refused(tmp_path):
    out = tmp_path / "o"
    kd = load_config("demo", ["distill.methods=[kd]"])
    dkd = load_config("demo", ["distill.methods=[dkd]"])
    squatter = out / "runs" / run_identity(kd, "student")  # holds a DKD run under the KD run's new name
    mover = out / "runs" / "old-kd"
    for folder, c in ((squatter, dkd), (mover, kd)):
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps({"key": folder.name, "status": "done",
                                                        "config": c.model_dump(mode="json")}))
    (out / "store.json").write_text(json.dumps({"identity_version": 2}))
    with pytest.raises(StoreError, match="exists already and is another run"):
        Store(out).upgrade()


def test_a_store_folder_without_config_is_refused_with_one_line(tmp_path):
    (tmp_path / "o" / "runs" / "0123abc").mkdir(parents=True)
    with pytest.raises(StoreError) as err:
        Store(tmp_path / "o").upgrade()
    assert "neither a readable record.json nor config.yaml" in str(err.value) and "\n" not in str(err.value)
