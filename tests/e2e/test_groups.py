"""Student groups (issue 16): runs trained as one program end exactly as their separate runs.

The comparison is bitwise (``torch.equal``) on CPU: a grouped run computes the same operations on the same
tensors in the same order as its separate run (same initialisation, batches, teacher outputs and global random
draws), so nothing but a bug can make them differ. Every parameter and buffer of the method is compared: the
student, heads, memory banks and queues, EMA copies.
"""

import json

import pytest
import torch

from kdlab.config import ConfigError
from kdlab.engine import trainer as trainer_mod
from kdlab.engine.group import SharedForward
from kdlab.engine.trainer import Interrupted
from kdlab.experiment.schema import load_config
from kdlab.experiment.stages import DataBundle, group_key, run_student, run_student_group, run_teacher

SMALL = ["distill.crd.feat_dim=16", "distill.crd.nce_k=64", "distill.cocord.queue_size=64",
         "distill.cocord.proj_dim=32", "distill.cocord.proj_hidden=32", "distill.cocord.pred_hidden=16"]

# distillers that read logits, features, a memory bank with random negatives (CRD draws from the global
# generator every step), pre-activations and connectors (OFD), RKD's relations with another learning rate,
# and FT's paraphraser phase before distillation
GROUP = [
    ["distill.methods=[kd]", "distill.kd.T=4"],
    ["distill.methods=[kd]", "distill.kd.T=2"],
    ["distill.methods=[dkd]"],
    ["distill.methods=[crd,kd]"],
    ["distill.methods=[ofd]"],
    ["distill.methods=[rkd,kd]", "student.optim.lr=0.05"],
    ["distill.methods=[ft]", "distill.ft.init_epochs=1"],  # an initialisation phase before the group's epochs
]


@pytest.fixture(scope="module")
def setting(tmp_path_factory, request):
    base = ["data.subset=192", "data.test_subset=64", "data.batch_size=32", "teacher.arch=resnet8",
            "student.arch=resnet8", "teacher.epochs=1", "student.epochs=2", "runtime.progress=false", *SMALL]
    root = tmp_path_factory.mktemp("groups")
    cfg = load_config("demo", base)
    data = DataBundle(cfg)
    teacher = run_teacher(cfg, root / "teacher", data)
    return base, data, root, root / "teacher" / "checkpoints" / "last.pt", teacher


def _configs(base, variants):
    return [load_config("demo", base + v) for v in variants]


def _method_state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["method"]


def _assert_same_run(a, b):
    sa, sb = _method_state(a), _method_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{a.name}: {k} differs from the separate run"
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in ma] == [r["train_loss"] for r in mb]
    assert [r["test_top1"] for r in ma] == [r["test_top1"] for r in mb]


def stop_trainers_at(monkeypatch, epoch: int, step: int, why: str = "simulated stop") -> None:
    """Make every trainer raise Interrupted at 0-based ``step`` of 0-based ``epoch``, as a signal would (undo
    with monkeypatch)."""
    real = trainer_mod.Trainer.train_step

    def stop(self, e, s, batch):
        if (e, s) == (epoch, step):
            raise Interrupted(why)
        return real(self, e, s, batch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", stop)


def _stop_in_second_epoch(monkeypatch):
    stop_trainers_at(monkeypatch, epoch=1, step=2)


def test_a_group_equals_its_separate_runs_bitwise(setting):
    base, data, root, ckpt, _ = setting
    cfgs = _configs(base, GROUP)
    assert len({group_key(c, ckpt) for c in cfgs}) == 1
    sep = [run_student(c, root / f"sep{i}", ckpt, data) for i, c in enumerate(cfgs)]
    grouped = run_student_group(cfgs, [root / f"grp{i}" for i in range(len(cfgs))], ckpt, data)
    for i, (s, g) in enumerate(zip(sep, grouped)):
        assert s["status"] == g["status"] == "done"
        assert g["group_size"] == len(cfgs)
        _assert_same_run(root / f"sep{i}", root / f"grp{i}")
        assert g["metrics"]["top1"] == s["metrics"]["top1"]


def test_three_view_students_group_with_their_teacher_forward_shared(setting, monkeypatch):
    """CoCoRD forwards the teacher on view 2 from inside its term: the memo serves the second member."""
    base, data, root, ckpt, _ = setting
    cfgs = _configs(base, [["distill.methods=[cocord]"], ["distill.methods=[cocord]", "distill.cocord.tau=0.2"]])
    calls = []
    real = SharedForward.forward
    monkeypatch.setattr(SharedForward, "forward", lambda self, x: calls.append(self.misses) or real(self, x))
    grouped = run_student_group(cfgs, [root / "coco0", root / "coco1"], ckpt, data)
    monkeypatch.undo()
    steps = 2 * (192 // 32)
    assert len(calls) == 2 * steps  # each member asked for the teacher once per step, and half were hits
    sep = [run_student(c, root / f"coco-sep{i}", ckpt, data) for i, c in enumerate(cfgs)]
    for i in range(2):
        assert grouped[i]["status"] == sep[i]["status"] == "done"
        _assert_same_run(root / f"coco-sep{i}", root / f"coco{i}")


def test_a_diverging_member_fails_alone(setting):
    base, data, root, ckpt, _ = setting
    cfgs = _configs(base, [["distill.methods=[kd]"], ["distill.methods=[kd]", "student.optim.lr=1e30"]])
    grouped = run_student_group(cfgs, [root / "nan0", root / "nan1"], ckpt, data)
    assert grouped[0]["status"] == "done"
    assert grouped[1]["status"] == "failed" and "loss became" in grouped[1]["error"]
    assert json.loads((root / "nan1" / "summary.json").read_text())["status"] == "failed"
    alone = run_student(cfgs[0], root / "nan-alone", ckpt, data)
    assert alone["status"] == "done"
    _assert_same_run(root / "nan-alone", root / "nan0")


def test_interrupted_group_resumes_members_at_different_epochs(setting, monkeypatch):
    """One member already finished, one stopped mid-epoch, one new with more epochs: the rerun finishes each
    as its separate, uninterrupted run."""
    base, data, root, ckpt, _ = setting
    cfgs = _configs(base, [["distill.methods=[kd]"], ["distill.methods=[dkd]"],
                           ["distill.methods=[kd]", "distill.kd.T=2", "student.epochs=3"]])
    dirs = [root / "int0", root / "int1", root / "int2"]
    run_student(cfgs[0], dirs[0], ckpt, data)
    _stop_in_second_epoch(monkeypatch)
    with pytest.raises(Interrupted):
        run_student_group(cfgs[1:], dirs[1:], ckpt, data)
    for d in dirs[1:]:
        assert json.loads((d / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    out = run_student_group(cfgs, dirs, ckpt, data)
    assert [s["status"] for s in out] == ["done"] * 3
    for i, c in enumerate(cfgs):
        run_student(c, root / f"int-sep{i}", ckpt, data)
        _assert_same_run(root / f"int-sep{i}", dirs[i])


def test_runs_that_cannot_share_are_refused(setting):
    base, data, root, ckpt, _ = setting
    kd, coco, seed1 = _configs(base, [["distill.methods=[kd]"], ["distill.methods=[cocord]"],
                                      ["distill.methods=[kd]", "seed=1"]])
    assert group_key(kd, ckpt) != group_key(coco, ckpt)  # 1 view against 3
    assert group_key(kd, ckpt) != group_key(seed1, ckpt)  # other batches
    alone = _configs(base, [["distill.methods=[]"]])[0]
    assert group_key(alone, ckpt) == ""  # no teacher to share
    with pytest.raises(ConfigError, match="same teacher with the same seed"):
        run_student_group([kd, seed1], [root / "x0", root / "x1"], ckpt, data)


def test_a_sweep_trains_runs_that_share_a_teacher_as_one_group_with_the_results_of_separate_runs(tmp_path):
    """`kdlab sweep` forms the group itself (from the configs, not the labels); `--no-group` gives the same
    records and checkpoints with every run in its own task."""
    from pathlib import Path

    from kdlab.sweep import load_grid, run_sweep
    from kdlab.sweep.store import Store

    grid = load_grid(Path(__file__).resolve().parents[1] / "grids" / "kd_group.yaml")
    lines: list[str] = []
    grouped = run_sweep(grid, tmp_path / "grouped", jobs=1, echo=lines.append)
    assert grouped.exit_code == 0
    assert sum("in a group of 4" in line for line in lines) == 4
    alone_lines: list[str] = []
    alone = run_sweep(grid, tmp_path / "alone", jobs=1, group_size=1, echo=alone_lines.append)
    assert alone.exit_code == 0 and not any("in a group" in line for line in alone_lines)
    a, b = Store(tmp_path / "grouped").records(), Store(tmp_path / "alone").records()
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:
        assert a[key]["metrics"]["student.top1"] == b[key]["metrics"]["student.top1"]
        _assert_same_run(tmp_path / "grouped" / "runs" / key, tmp_path / "alone" / "runs" / key)


def test_a_member_that_cannot_be_built_fails_alone(setting, monkeypatch):
    from kdlab.experiment import stages

    base, data, root, ckpt, _ = setting
    cfgs = _configs(base, [["distill.methods=[kd]"], ["distill.methods=[kd]", "distill.kd.T=3"]])
    real = stages._StageRun.build

    def refuse_the_second(stage, cfg, run_dir, *args, **kw):
        if cfg.distill.kd.T == 3:
            raise ConfigError("this pair is not supported")
        return real(stage, cfg, run_dir, *args, **kw)

    monkeypatch.setattr(stages._StageRun, "build", staticmethod(refuse_the_second))
    out = run_student_group(cfgs, [root / "build0", root / "build1"], ckpt, data)
    assert out[0]["status"] == "done"
    assert out[1]["status"] == "failed" and "this pair is not supported" in out[1]["error"]


def test_an_interrupt_keeps_a_failed_member_failed(setting, monkeypatch):
    base, data, root, ckpt, _ = setting
    cfgs = _configs(base, [["distill.methods=[kd]", "student.optim.lr=1e30"], ["distill.methods=[dkd]"]])
    _stop_in_second_epoch(monkeypatch)
    with pytest.raises(Interrupted) as stopped:
        run_student_group(cfgs, [root / "if0", root / "if1"], ckpt, data)
    assert [s and s["status"] for s in stopped.value.summaries] == ["failed", None]
    assert json.loads((root / "if0" / "summary.json").read_text())["status"] == "failed"
    assert json.loads((root / "if1" / "summary.json").read_text())["status"] == "interrupted"
