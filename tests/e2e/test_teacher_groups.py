"""Teacher groups (issue 16): teachers that differ only in their objective, trained as one stacked network
through the experiment layer (``run_teacher_group``) and the sweep executor (``--teacher-group-size``).

Equivalence is checked in float64 (the stage's methods ``.double()``, its batches cast by the unit tests'
``Float64Loader``), where a group and its separate runs differ only in summation order: every float tensor of
each checkpoint must satisfy ``|a - b| <= 1e-12 + 1e-9 |b|`` and integer tensors, per-epoch anchor fractions and
test top-1 must be equal (tests/unit/test_stacked_group.py explains the tolerance and why float32 cannot be
compared: its rounding grows chaotically on these tiny runs). The sweep test runs float32 in worker processes:
it checks what the executor does (which teachers it stacks, records, checkpoints the students use), not values.
"""

import json
from pathlib import Path

import pytest
import torch

from kdlab.config import ConfigError
from kdlab.engine import trainer as trainer_mod
from kdlab.engine.trainer import Interrupted
from kdlab.experiment import stages
from kdlab.experiment.schema import load_config
from kdlab.experiment.stages import DataBundle, run_teacher, run_teacher_group, teacher_group_key
from tests.unit.test_stacked_group import Float64Loader

REL, ABS = 1e-9, 1e-12
BASE = ["data.subset=192", "data.test_subset=64", "data.batch_size=32", "teacher.arch=resnet8", "teacher.epochs=2",
        "runtime.progress=false", "runtime.tensorboard=false"]
# the paper's λ; a λ above its range with a lower margin threshold; the gradnorm schedule (autograd.grad on each
# copy's own pooled features; a low δ so that anchors pass at this tiny scale); a supervised-contrastive teacher
# (another objective, the same two views)
VARIANTS = [
    [],
    ["objective.intra.lambda_=0.1", "objective.intra.delta=0.2"],
    ["objective.intra.lambda_schedule=gradnorm", "objective.intra.delta=-0.5"],
    ["objective.kind=supcon"],
]


@pytest.fixture(scope="module")
def float64():
    """Teacher stages in float64: each built method ``.double()``, each loader's views cast."""
    patch = pytest.MonkeyPatch()
    real_method, real_loaders = stages._teacher_method, stages.DataBundle.loaders

    def method64(*args, **kwargs):
        method, views = real_method(*args, **kwargs)
        return method.double(), views

    patch.setattr(stages, "_teacher_method", method64)
    patch.setattr(stages.DataBundle, "loaders", lambda self, *a, **k: tuple(Float64Loader(x) for x in real_loaders(self, *a, **k)))
    yield
    patch.undo()


@pytest.fixture(scope="module")
def setting(tmp_path_factory, float64):
    root = tmp_path_factory.mktemp("teacher_groups")
    cfgs = [load_config("demo", BASE + v) for v in VARIANTS]
    data = DataBundle(cfgs[0])
    separate = [run_teacher(c, root / f"sep{i}", data) for i, c in enumerate(cfgs)]
    return cfgs, data, root, separate


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not a.is_floating_point():
        return torch.equal(a, b)
    return a.dtype == b.dtype and bool(((a - b).abs() <= ABS + REL * b.abs()).all())


def assert_same_run(a: Path, b: Path) -> None:
    """Two teacher run folders hold the same run up to summation order: the method's state, the optimizer's
    momentum, per-epoch losses, anchor fractions and test accuracy."""
    sa, sb = _state(a), _state(b)
    assert sa["epoch"] == sb["epoch"]
    assert sa["method"].keys() == sb["method"].keys()
    for k in sa["method"]:
        assert _close(sa["method"][k], sb["method"][k]), f"{a.name}: {k} differs from the separate run"
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert oa.keys() == ob.keys() and oa
    for i in oa:
        assert _close(oa[i]["momentum_buffer"], ob[i]["momentum_buffer"]), f"{a.name}: momentum of parameter {i}"
    ma, mb = _metrics(a), _metrics(b)
    assert [r["epoch"] for r in ma] == [r["epoch"] for r in mb]
    for ra, rb in zip(ma, mb):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-6)  # accumulated in float32
        assert ra["test_top1"] == rb["test_top1"]
        assert ra.get("margin_pass_frac") == rb.get("margin_pass_frac")


def test_teacher_group_keys_depend_on_everything_but_the_objective():
    cfgs = [load_config("demo", BASE + v) for v in VARIANTS]
    assert len({teacher_group_key(c) for c in cfgs}) == 1 and teacher_group_key(cfgs[0])
    other = [load_config("demo", BASE + [o]) for o in
             ["seed=1", "teacher.optim.lr=0.1", "teacher.arch=resnet14", "teacher.epochs=3", "data.batch_size=16",
              "objective.kind=ce"]]  # the CE teacher forwards one view per image, not two
    keys = {teacher_group_key(c) for c in other}
    assert teacher_group_key(cfgs[0]) not in keys and len(keys) == len(other)
    assert teacher_group_key(load_config("demo", BASE + ["runtime.compile=true"])) == ""


def test_a_teacher_group_ends_as_its_separate_runs(setting):
    cfgs, data, root, separate = setting
    grouped = run_teacher_group(cfgs, [root / f"grp{i}" for i in range(len(cfgs))], data)
    for i, (s, g) in enumerate(zip(separate, grouped)):
        assert s["status"] == g["status"] == "done"
        assert g["group_size"] == len(cfgs)
        assert_same_run(root / f"grp{i}", root / f"sep{i}")
    lambdas = [r["intra_lambda"] for r in _metrics(root / "grp2")]
    assert all(lam > 0 for lam in lambdas), "the gradnorm member got no λ"
    assert len(set(lambdas)) > 1  # set from the gradients each step, not a constant


def test_members_resumed_at_different_epochs_train_apart_and_still_match(setting, monkeypatch):
    """One member already has a checkpoint after epoch 1 (an earlier, interrupted command): it cannot share
    steps with members that start at epoch 0, so it trains alone while the other two train stacked."""
    cfgs, data, root, _ = setting
    real = trainer_mod.Trainer.finish_epoch

    def stop_after_first(self, record):
        real(self, record)
        raise Interrupted("simulated stop after epoch 1")

    monkeypatch.setattr(trainer_mod.Trainer, "finish_epoch", stop_after_first)
    with pytest.raises(Interrupted):
        run_teacher(cfgs[1], root / "mix1", data)
    monkeypatch.undo()
    dirs = [root / "mix0", root / "mix1", root / "mix2"]
    summaries = run_teacher_group(cfgs[:3], dirs, data)
    assert [s["status"] for s in summaries] == ["done"] * 3
    assert [s["group_size"] for s in summaries] == [2, 1, 2]  # what each trained with, not the call's size
    for i, d in enumerate(dirs):
        assert_same_run(d, root / f"sep{i}")


def test_teachers_that_cannot_share_are_refused(setting):
    cfgs, data, root, _ = setting
    seed1 = load_config("demo", BASE + ["seed=1"])
    with pytest.raises(ConfigError, match="same seed, data, views, runtime and teacher"):
        run_teacher_group([cfgs[0], seed1], [root / "r0", root / "r1"], data)


def test_a_sweep_stacks_teachers_when_asked_and_trains_each_alone_otherwise(tmp_path):
    """`kdlab sweep --teacher-group-size 3` stacks the three teachers of one seed (formed from the configs, not
    the labels), records each as its own run and distils each student from its own teacher's checkpoint;
    without the option every teacher trains alone."""
    from kdlab.sweep import load_grid, run_sweep
    from kdlab.sweep.store import Store

    grid = load_grid(Path(__file__).resolve().parents[1] / "grids" / "intra_teacher_group.yaml")
    lines: list[str] = []
    stacked = run_sweep(grid, tmp_path / "stacked", jobs=1, teacher_group_size=3, echo=lines.append)
    assert stacked.exit_code == 0
    assert sum("teacher" in line and "in a group of 3" in line for line in lines) == 3
    store = Store(tmp_path / "stacked")
    records = store.records()
    assert len(records) == 3 and {r["status"] for r in records.values()} == {"done"}
    lambdas = set()
    for rec in records.values():
        teacher = store.teacher_dir(rec["teacher_key"])
        summary = json.loads((teacher / "summary.json").read_text())
        assert summary["status"] == "done" and summary["group_size"] == 3
        assert rec["summary"]["teacher_checkpoint"] == str(teacher / "checkpoints" / "last.pt")
        lambdas.add(summary["config"]["objective"]["intra"]["lambda_"] if "config" in summary else
                    _state(teacher)["config"]["objective"]["intra"]["lambda_"])
    assert lambdas == {0.02, 0.05, 0.2}
    alone_lines: list[str] = []
    alone = run_sweep(grid, tmp_path / "alone", jobs=1, echo=alone_lines.append)
    assert alone.exit_code == 0 and not any("teacher" in line and "in a group" in line for line in alone_lines)
    assert Store(tmp_path / "alone").records().keys() == records.keys()  # the same runs, by identity
