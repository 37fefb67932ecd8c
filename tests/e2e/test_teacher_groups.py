"""Teacher groups (issue 16): teachers that differ only in their objective, trained as one stacked network
through the experiment and sweep layers, end as their separate runs.

The engine's own equivalence tests (tests/unit/test_stacked_group.py) fix the tolerance; here the comparison
is of whole runs through ``run_teacher_group`` and ``kdlab sweep``, in float32 on CPU. A stacked group sums in
other blockings than k separate networks (grouped convolutions, per-copy linear layers), so the two agree to
rounding, not bitwise: every parameter, buffer and per-epoch figure is compared with ``TOL`` (float32 rounding
grown over a few dozen steps; the largest gap measured here is stated in the closing note of issue 16).
"""

import json
from pathlib import Path

import pytest
import torch

from kdlab.config import ConfigError
from kdlab.engine import trainer as trainer_mod
from kdlab.engine.trainer import Interrupted
from kdlab.experiment.schema import load_config
from kdlab.experiment.stages import DataBundle, run_teacher, run_teacher_group, teacher_group_key

TOL = {"rtol": 1e-4, "atol": 1e-5}
BASE = ["data.subset=192", "data.test_subset=64", "data.batch_size=32", "teacher.arch=resnet8", "teacher.epochs=2",
        "runtime.progress=false", "runtime.tensorboard=false"]
# the paper's λ; a λ above its range with a lower margin threshold; the gradnorm schedule (autograd.grad on each
# copy's own pooled features); a supervised-contrastive teacher (another objective, same two views)
VARIANTS = [
    [],
    ["objective.intra.lambda_=0.1", "objective.intra.delta=0.2"],
    ["objective.intra.lambda_schedule=gradnorm"],
    ["objective.kind=supcon"],
]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher_groups")
    cfgs = [load_config("demo", BASE + v) for v in VARIANTS]
    data = DataBundle(cfgs[0])
    separate = [run_teacher(c, root / f"sep{i}", data) for i, c in enumerate(cfgs)]
    return cfgs, data, root, separate


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_close_runs(a: Path, b: Path) -> None:
    """Two teacher run folders hold the same run up to float32 rounding: method state, optimizer momentum,
    per-epoch losses and accuracy, and the same anchor counts (the margin filter saw the same samples)."""
    sa, sb = _state(a), _state(b)
    assert sa["epoch"] == sb["epoch"]
    assert sa["method"].keys() == sb["method"].keys()
    for k in sa["method"]:
        x, y = sa["method"][k], sb["method"][k]
        if x.is_floating_point():
            torch.testing.assert_close(x, y, **TOL, msg=lambda m, k=k: f"{a.name}: {k}: {m}")
        else:  # cache pointers and image ids, BN batch counts: exact
            assert torch.equal(x, y), f"{a.name}: {k} differs"
    moms = [[s["state"][i]["momentum_buffer"] for i in sorted(s["optimizer"]["state"])] for s in (sa["optimizer"], sb["optimizer"])]
    assert len(moms[0]) == len(moms[1]) > 0
    for x, y in zip(*moms):
        torch.testing.assert_close(x, y, **TOL)
    ma, mb = _metrics(a), _metrics(b)
    assert [r["epoch"] for r in ma] == [r["epoch"] for r in mb]
    for ra, rb in zip(ma, mb):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["test_top1"] == pytest.approx(rb["test_top1"], abs=100 / 64 + 1e-9)  # at most one test image
        if "margin_pass_frac" in ra:
            assert ra["margin_pass_frac"] == pytest.approx(rb["margin_pass_frac"], abs=1e-9)


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
        assert_close_runs(root / f"grp{i}", root / f"sep{i}")
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
    for i, d in enumerate(dirs):
        assert_close_runs(d, root / f"sep{i}")


def test_teachers_that_cannot_share_are_refused(setting):
    cfgs, data, root, _ = setting
    seed1 = load_config("demo", BASE + ["seed=1"])
    with pytest.raises(ConfigError, match="same seed, data, views, runtime and teacher"):
        run_teacher_group([cfgs[0], seed1], [root / "r0", root / "r1"], data)


def test_a_sweep_stacks_teachers_when_asked_and_ends_as_without(tmp_path):
    """`kdlab sweep --teacher-group-size 3` stacks the three teachers of one seed (formed from the configs);
    without the option each trains alone; the records and checkpoints agree to rounding."""
    from kdlab.sweep import load_grid, run_sweep
    from kdlab.sweep.store import Store

    grid = load_grid(Path(__file__).resolve().parents[1] / "grids" / "intra_teacher_group.yaml")
    lines: list[str] = []
    stacked = run_sweep(grid, tmp_path / "stacked", jobs=1, teacher_group_size=3, echo=lines.append)
    assert stacked.exit_code == 0
    assert sum(line.startswith("[") and "teacher" in line and "in a group of 3" in line for line in lines) == 3
    alone_lines: list[str] = []
    alone = run_sweep(grid, tmp_path / "alone", jobs=1, echo=alone_lines.append)
    assert alone.exit_code == 0 and not any("teacher" in line and "in a group" in line for line in alone_lines)
    a, b = Store(tmp_path / "stacked"), Store(tmp_path / "alone")
    ra, rb = a.records(), b.records()
    assert ra.keys() == rb.keys() and len(ra) == 3
    teachers = {r["teacher_key"] for r in ra.values()}
    assert len(teachers) == 3
    for tkey in teachers:
        assert_close_runs(a.teacher_dir(tkey), b.teacher_dir(tkey))
