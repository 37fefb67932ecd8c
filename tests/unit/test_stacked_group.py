"""Teacher groups (kdlab.engine.stacked_group): k intra-class teachers trained as one stacked program end as
their k separate runs.

The reference is always each teacher's separate run: its own trainer, built the same way (same seed, so the
same initial network and head), with its own loader (same seed, so the same batches and augmentations), fitted
alone. The group gets trainers built the same way and one shared loader. The teachers differ only in their
objective: λ, δ, the margin filter, and the λ schedule (constant, gradnorm -- which differentiates L_CE with
respect to the pooled features -- and ratio, whose per-epoch λ is a checkpointed buffer).

Precision. The whole pipeline runs in float64 (views cast by :class:`Float64Loader`, methods ``.double()``;
the objective keeps float64 through its term), where group and separate runs can differ only in summation
order (grouped conv and per-copy linear against separate ones). Every float tensor of every checkpoint --
network, BN statistics, head, the class cache's bank, ``ratio_lambda``, the optimizer's momentum -- must satisfy
``|a - b| <= 1e-12 + 1e-9 |b|`` as in tests/unit/test_stacked.py (the absolute floor is for values whose true
value is ~0). Measured worst gap after 2 epochs on CPU: grouped 0 (bitwise equal, with and without
channels-last), vmap 0.0014 of the tolerance; the tolerance is kept for other BLAS / conv back ends. Integer
tensors (cache ids, pointers, fill, ``num_batches_tracked``) must be equal. The trainer accumulates losses in
float32, so per-epoch train losses are compared with ``rtol=1e-6``; test top-1 must be equal.

Why not float32: on this tiny random-label task float32 rounding grows chaotically over the 12 steps. Measured:
two *separate* float32 runs that differ only in the conv kernel (oneDNN on / off) end with momentum buffers up
to 40 % of their scale apart; a float32 group against its separate runs, up to 20 %. No tolerance could tell a
bug from that, so equivalence is checked where it is exact up to summation order: float64.

The margin filter ρ > δ is discontinuous: a margin within 1e-15 of δ could flip one anchor between the group
and the separate run, after which the runs would differ by far more than rounding. The guard is that every
epoch's anchor fraction (``margin_pass_frac``, a ratio of counts) must be equal exactly, and the tolerances
above would catch the gap a flipped anchor opens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from kdlab.config import OptimConfig
from kdlab.data.augment import augment_for
from kdlab.data.base import ArrayDataset, Batch
from kdlab.data.loader import DeviceLoader
from kdlab.engine.runtime import Runtime
from kdlab.engine.stacked_group import StackedGroup
from kdlab.engine.trainer import DivergedError, Interrupted, StageInfo, Trainer
from kdlab.experiment.schema import ObjectiveConfig
from kdlab.models import build_model, probe
from kdlab.objectives.teacher import HeadConfig, TeacherObjective

ARCH, CLASSES, N_TRAIN, N_TEST, BATCH, EPOCHS, SEED = "resnet8", 4, 48, 16, 8, 2, 7
RT = Runtime(torch.device("cpu"), None, False, False, False)
RT_CL = Runtime(torch.device("cpu"), None, True, False, False)  # channels_last, as on a GPU
OPTIM = OptimConfig(lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True, milestones=[0.5])
CACHE = {"size": 8}
# the variants of one ablation: λ and δ, the margin filter off, and the two adaptive λ schedules
VARIANTS = [
    {"lambda_": 0.02, "delta": 0.0, "cache": CACHE},
    {"lambda_": 0.1, "delta": 0.2, "cache": CACHE},
    {"lambda_schedule": "gradnorm", "eta": 0.2, "delta": -0.2, "cache": CACHE},
    {"lambda_": 0.05, "lambda_schedule": "ratio", "margin": False, "cache": CACHE},
]
REL, ABS = 1e-9, 1e-12


class Float64Loader:
    """A loader whose batches' views are float64 (everything else as the wrapped loader); ``dtype`` float32
    leaves them as they are."""

    def __init__(self, inner, dtype=torch.float64):
        self.inner, self.dtype = inner, dtype

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self):
        for b in self.inner:
            yield Batch([v.to(self.dtype) for v in b.views], b.labels, b.index)


def _dataset(n: int, seed: int, name: str) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    return ArrayDataset(images, labels, [f"c{i}" for i in range(CLASSES)], name, (0.5,) * 3, (0.25,) * 3)


TRAIN, TEST = _dataset(N_TRAIN, 0, "tiny"), _dataset(N_TEST, 1, "tiny-test")


def loaders(rt: Runtime = RT, dtype=torch.float64):
    cl = rt.channels_last
    train = DeviceLoader(TRAIN, batch_size=BATCH, device="cpu", augment=augment_for(TRAIN), views=2, shuffle=True,
                         drop_last=True, seed=SEED, channels_last=cl)
    test = DeviceLoader(TEST, batch_size=BATCH, device="cpu", augment=None, shuffle=False, drop_last=False,
                        seed=SEED, channels_last=cl)
    return Float64Loader(train, dtype), Float64Loader(test, dtype)


def build(variant: dict, run_dir: Path, *, epochs: int = EPOCHS, optim: OptimConfig = OPTIM, rt: Runtime = RT,
          dtype=torch.float64) -> Trainer:
    """A teacher run's trainer, built and resumed as kdlab's teacher stage does (seed, network, method,
    trainer, resume), in float64 unless ``dtype`` says otherwise, with its own loaders."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    net = build_model(ARCH, num_classes=CLASSES)
    cfg = ObjectiveConfig(kind="intra", intra=variant, head=HeadConfig(kind="mlp2", dim=16, hidden=32))
    method = TeacherObjective(net, cfg, views=2, num_classes=CLASSES, feature_dim=probe(net, (3, 32, 32)).pooled_dim,
                              num_train=N_TRAIN, epochs=epochs).to(dtype)
    method = rt.prepare_model(method)
    train, test = loaders(rt, dtype)
    trainer = Trainer(method, train, test, epochs=epochs, optim=optim, runtime=rt, run_dir=run_dir,
                      info=StageInfo("teacher", ARCH, CLASSES, (3, 32, 32), "tiny"), tensorboard=False)
    trainer.resume()
    return trainer


def run_group(dirs: list[Path], variants=VARIANTS, strategy="grouped", **kw) -> list:
    group = StackedGroup(loaders(kw.get("rt", RT), kw.get("dtype", torch.float64))[0], strategy)
    for v, d in zip(variants, dirs):
        group.add(build(v, d, **kw))
    if len(dirs) == 1:
        return group.fit()
    with pytest.MonkeyPatch.context() as mp:  # guard: the members' own steps never run in a stacked group
        mp.setattr(Trainer, "train_step", _no_own_step)
        return group.fit()


def _no_own_step(*args):
    raise AssertionError("a stacked group ran a member's own train_step")


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint holds that training sets: the method's state and the optimizer's state."""
    out = {f"method.{k}": v for k, v in ckpt["method"].items()}
    for idx, state in ckpt["optimizer"]["state"].items():
        out.update({f"optimizer.{idx}.{k}": v for k, v in state.items()})
    return out


def assert_same_run(got: Path, want: Path, rel: float = REL, abs_: float = ABS) -> float:
    """The group's run ``got`` equals the separate run ``want`` (module docstring); returns the float tensors'
    worst gap as a fraction of the tolerance (0: bitwise equal; at most 1)."""
    a, b = _checkpoint(got), _checkpoint(want)
    assert a["epoch"] == b["epoch"]
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
    worst = 0.0
    for key, want_t in tb.items():
        got_t = ta[key]
        assert got_t.shape == want_t.shape and got_t.dtype == want_t.dtype, key
        if not want_t.is_floating_point():
            assert torch.equal(got_t, want_t), f"{got.name}: {key} differs from the separate run"
            continue
        gap, allowed = (got_t - want_t).abs(), abs_ + rel * want_t.abs()
        assert bool((gap <= allowed).all()), f"{got.name}: {key} off by {float(gap.max()):.3g}"
        worst = max(worst, float((gap / allowed).max()) if gap.numel() else 0.0)
    ma, mb = _metrics(got), _metrics(want)
    assert [r["epoch"] for r in ma] == [r["epoch"] for r in mb]
    for ra, rb in zip(ma, mb):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=max(rel, 1e-6), abs=1e-9)
        assert ra["train_intra"] == pytest.approx(rb["train_intra"], rel=max(rel, 1e-6), abs=1e-9)
        assert ra["test_top1"] == rb["test_top1"]
        assert ra["margin_pass_frac"] == rb["margin_pass_frac"]  # no anchor flipped at ρ = δ
        assert ra["intra_lambda"] == pytest.approx(rb["intra_lambda"], rel=rel, abs=abs_)
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The four variants trained separately and as one stacked group, 2 epochs each."""
    root = tmp_path_factory.mktemp("stacked_group")
    sep = [root / f"sep{i}" for i in range(len(VARIANTS))]
    for v, d in zip(VARIANTS, sep):
        build(v, d).fit()
    grp = [root / f"grp{i}" for i in range(len(VARIANTS))]
    members = run_group(grp)
    return root, sep, grp, members


def test_a_stacked_group_equals_its_separate_runs(runs):
    _, sep, grp, members = runs
    assert all(m.alive and m.metrics for m in members)
    worst = max(assert_same_run(g, s) for g, s in zip(grp, sep))
    print(f"grouped: worst gap {worst:.3g} of the tolerance")
    for m, s in zip(members, sep):  # the summaries the executor records
        assert m.metrics["top1"] == _metrics(s)[-1]["test_top1"]
    # guards: the objective really acted (anchors passed, λ moved, the cache filled) and the runs differ
    records = [_metrics(s)[-1] for s in sep]
    assert all(r["margin_pass_frac"] > 0 and r["train_intra"] > 0 for r in records)
    assert records[3]["intra_lambda"] != VARIANTS[3]["lambda_"] or _checkpoint(sep[3])["method"][
        "term.ratio_lambda"] != VARIANTS[3]["lambda_"]
    fc = [_checkpoint(s)["model"]["fc.weight"] for s in sep]
    assert (fc[0] - fc[1]).abs().max() > 1e-6 and (fc[0] - fc[2]).abs().max() > 1e-6


def test_checkpoints_resume_across_group_and_separate_runs(runs):
    """One more epoch (a 3-epoch schedule) from the 2-epoch checkpoints: a group's checkpoint continued by a
    separate trainer, and separate runs' checkpoints (momentum included) continued as a group, both equal the
    separate runs continued separately."""
    root, sep, grp, _ = runs
    copies = {}
    for name, dirs in (("sep-sep", sep), ("grp-sep", grp), ("sep-grp", sep)):
        copies[name] = [root / f"{name}{i}" for i in range(len(dirs))]
        for src, dst in zip(dirs, copies[name]):
            shutil.copytree(src, dst)
    for v, d in zip(VARIANTS, copies["sep-sep"]):
        build(v, d, epochs=3).fit()
    for v, d in zip(VARIANTS, copies["grp-sep"]):
        build(v, d, epochs=3).fit()
    members = run_group(copies["sep-grp"], epochs=3)
    assert all(m.alive for m in members) and all(m.trainer.start_epoch == 2 for m in members)
    for i in range(len(VARIANTS)):
        assert _checkpoint(copies["sep-sep"][i])["epoch"] == 3
        assert_same_run(copies["grp-sep"][i], copies["sep-sep"][i])
        assert_same_run(copies["sep-grp"][i], copies["sep-sep"][i])


def test_a_diverging_member_fails_alone(runs, monkeypatch):
    """Member 1's loss turns NaN at step 3 of epoch 2 (its copy's weights then turn NaN): its trainer finds it at
    the epoch's sync point, it fails with its last good checkpoint (epoch 1), and the others end as their
    separate runs."""
    root, sep, _, _ = runs
    dirs = [root / f"nan{i}" for i in range(len(VARIANTS))]
    group = StackedGroup(loaders()[0], "grouped")
    trainers = [build(v, d) for v, d in zip(VARIANTS, dirs)]
    bad = trainers[1].method
    real = bad.losses_from_output

    def poisoned(out, batch, progress):
        logits, terms = real(out, batch, progress)
        if progress >= 1 + 2 / 6:
            terms = dict(terms, ce=terms["ce"] * float("nan"))
        return logits, terms

    monkeypatch.setattr(bad, "losses_from_output", poisoned)
    for t in trainers:
        group.add(t)
    members = group.fit()
    assert isinstance(members[1].error, DivergedError) and "epoch 2, step 3" in str(members[1].error)
    ckpt = _checkpoint(dirs[1])
    assert ckpt["epoch"] == 1 and all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values()
                                      if v.is_floating_point())
    assert len(_metrics(dirs[1])) == 1
    assert _metrics(dirs[1])[0]["test_top1"] == _metrics(sep[1])[0]["test_top1"]
    assert _metrics(dirs[1])[0]["train_loss"] == pytest.approx(_metrics(sep[1])[0]["train_loss"], rel=1e-6)
    for i in (0, 2, 3):
        assert members[i].alive
        assert_same_run(dirs[i], sep[i])


def test_members_that_cannot_share_one_program_are_refused(runs, tmp_path):
    _, sep, _, _ = runs
    resumed = tmp_path / "resumed"
    shutil.copytree(sep[0], resumed)
    group = StackedGroup(loaders()[0])
    group.add(build(VARIANTS[0], resumed, epochs=3))
    group.add(build(VARIANTS[1], tmp_path / "new", epochs=3))
    with pytest.raises(ValueError, match=r"member 1 .* differs from member 0 .* in its start epoch"):
        group.fit()
    group = StackedGroup(loaders()[0])
    group.add(build(VARIANTS[0], tmp_path / "a"))
    group.add(build(VARIANTS[1], tmp_path / "b", optim=OPTIM.model_copy(update={"lr": 0.1})))
    with pytest.raises(ValueError, match="in its optimizer config: they cannot train as one stacked group"):
        group.fit()
    group = StackedGroup(loaders()[0], "vmap")
    group.add(build(VARIANTS[0], tmp_path / "c"))
    group.add(build(VARIANTS[2], tmp_path / "d"))
    with pytest.raises(ValueError, match="member 1 .*pooled features.*use strategy='grouped'"):
        group.fit()
    assert not (tmp_path / "a" / "metrics.jsonl").exists()  # refused before training anything


def test_a_single_member_is_its_separate_run(runs, tmp_path):
    _, sep, _, _ = runs
    members = run_group([tmp_path / "one"], VARIANTS[:1])
    assert members[0].alive
    assert assert_same_run(tmp_path / "one", sep[0]) == 0.0  # the trainer's own loop: bitwise


def test_the_vmap_strategy_equals_the_separate_runs(runs):
    """The same group (less the gradnorm variant, which vmap refuses) stacked with vmap."""
    root, sep, _, _ = runs
    keep = [0, 1, 3]
    dirs = [root / f"vmap{i}" for i in keep]
    members = run_group(dirs, [VARIANTS[i] for i in keep], strategy="vmap")
    assert all(m.alive for m in members)
    worst = max(assert_same_run(d, sep[i]) for d, i in zip(dirs, keep))
    print(f"vmap: worst gap {worst:.3g} of the tolerance")


def test_a_channels_last_group_equals_its_separate_runs(tmp_path):
    """Channels-last networks and batches (the layout kdlab uses on GPUs): the group lays its stacked convs out
    channels-last too. Compared in float64 like the rest (see the module docstring for why not float32)."""
    variants = [VARIANTS[0], VARIANTS[2]]
    sep = [tmp_path / f"sep{i}" for i in range(2)]
    for v, d in zip(variants, sep):
        build(v, d, rt=RT_CL).fit()
    grp = [tmp_path / f"grp{i}" for i in range(2)]
    group = StackedGroup(loaders(RT_CL)[0])
    for v, d in zip(variants, grp):
        group.add(build(v, d, rt=RT_CL))
    members = group.fit()
    assert all(m.alive for m in members)
    assert members[0].trainer.method.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    worst = max(assert_same_run(g, s) for g, s in zip(grp, sep))
    print(f"channels-last: worst gap {worst:.3g} of the tolerance")


def test_an_interrupted_group_keeps_every_checkpoint_and_resumes_as_the_separate_runs(runs, monkeypatch):
    """A signal at step 3 of epoch 2 stops the group with each member's epoch-1 checkpoint; the same group
    built again (each trainer resumed from its checkpoint, momentum included) ends as the separate runs."""
    import signal

    root, sep, _, _ = runs
    dirs = [root / f"int{i}" for i in range(len(VARIANTS))]
    real = StackedGroup._step

    def signal_at_step_3_of_epoch_2(self, epoch, step, steps, batch):
        real(self, epoch, step, steps, batch)
        if (epoch, step) == (1, 2):
            self._note_signal(signal.SIGTERM)

    monkeypatch.setattr(StackedGroup, "_step", signal_at_step_3_of_epoch_2)
    with pytest.raises(Interrupted, match="during epoch 2"):
        run_group(dirs)
    monkeypatch.undo()
    assert [_checkpoint(d)["epoch"] for d in dirs] == [1] * len(dirs)
    members = run_group(dirs)
    assert all(m.alive for m in members) and all(m.trainer.start_epoch == 1 for m in members)
    for d, s in zip(dirs, sep):
        assert_same_run(d, s)
