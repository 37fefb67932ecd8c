"""The initialisation phase of the two-phase distillers (AB, FT, FSP: ``distill.<method>.init_epochs``).

What it trains is checked module by module against copies taken before the phase; that it runs once is
checked across a real interruption and resume of the student stage; that it learns, on a fixed tiny batch set.
"""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
import torch

from kdlab.config import OptimConfig
from kdlab.data.base import Batch
from kdlab.engine import prephase
from kdlab.engine import trainer as trainer_mod
from kdlab.engine.distributed import DistInfo
from kdlab.engine.prephase import PrePhase
from kdlab.engine.runtime import Runtime
from kdlab.engine.trainer import Interrupted
from kdlab.experiment.schema import load_config
from kdlab.experiment.stages import DataBundle, run_student, run_teacher
from tests.unit.test_distillers import NUM_TRAIN, SHAPE, make_distillation

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, channels_last=False, compile=False, progress=False,
              dist=DistInfo())


class FixedLoader:
    """The same few batches every epoch; records the epochs it was asked for."""

    def __init__(self, n_batches=3, b=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.batches = [Batch(views=[torch.randn(b, *SHAPE, generator=g)], labels=torch.randint(0, 10, (b,), generator=g),
                              index=torch.randperm(NUM_TRAIN, generator=g)[:b]) for _ in range(n_batches)]
        self.epochs: list[int] = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _phase(lr=0.05, log=None):
    return PrePhase(FixedLoader(), CPU, OptimConfig(lr=lr, momentum=0.9, weight_decay=5e-4),
                    log if log is not None else (lambda record: None))


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def test_ft_phase_trains_the_paraphraser_only():
    m = make_distillation(["ft"], ft={"init_epochs": 2})
    term = m.terms["ft"]
    student, para, trans = _snapshot(m.student), _snapshot(term.paraphraser), _snapshot(term.translator)
    teacher = _snapshot(m.teacher)
    records = []
    assert m.pre_train(_phase(log=records.append)) is True
    assert set(_changed(para, term.paraphraser)) == set(para)  # every paraphraser weight moved
    assert _changed(student, m.student) == set()  # weights and BN statistics: RepDistiller's student is in eval
    assert _changed(trans, term.translator) == set()
    assert _changed(teacher, m.teacher) == set()
    assert bool(term.init_done)
    # frozen again for distillation, and left out of the main optimiser
    assert not any(p.requires_grad for p in term.paraphraser.parameters())
    assert not any(p is q for p in term.paraphraser.parameters() for q in m.trainable_parameters())
    assert [r["init_epoch"] for r in records] == [1, 2] and {r["phase"] for r in records} == {"ft"}
    assert records[0]["init_lr"] == 0.05  # student_arch unknown here: the student's base rate


@pytest.mark.parametrize("method", ["ab", "fsp"])
def test_ab_and_fsp_phases_train_the_student_layers_and_the_connectors(method):
    m = make_distillation([method], t_arch="wrn_16_2" if method == "ab" else "resnet8",
                          **{method: {"init_epochs": 1}})
    student, teacher = _snapshot(m.student), _snapshot(m.teacher)
    term_before = _snapshot(m.terms[method])
    m.pre_train(_phase())
    changed = _changed(student, m.student)
    classifier = {k for k in student if k.startswith("fc.")}
    assert classifier and not (changed & classifier)  # the init loss does not reach the classifier
    convs = {k for k in student if k.endswith("weight") and student[k].dim() == 4}
    assert convs <= changed  # every convolution of the student moved
    assert any(k.endswith("running_mean") for k in changed)  # its BN layers ran in train mode
    assert _changed(teacher, m.teacher) == set()
    if method == "ab":  # wrn_16_2 teacher: a ConvReg connector per pair, trained too
        assert {k for k in term_before if "connectors" in k and k.endswith("weight")} <= _changed(term_before, m.terms["ab"])


@pytest.mark.parametrize("method", ["ab", "fsp", "ft"])
def test_phase_loss_decreases_on_a_tiny_case(method):
    m = make_distillation([method], **{method: {"init_epochs": 8}})
    records = []
    m.pre_train(_phase(lr=0.1, log=records.append))
    losses = [r["init_loss"] for r in records]
    assert len(losses) == 8 and all(v >= 0 for v in losses)
    assert all(b < a for a, b in pairwise(losses)), losses  # every epoch lower than the one before
    assert losses[-1] < 0.95 * losses[0], losses


def test_phase_runs_once_and_draws_its_own_loader_epochs():
    m = make_distillation(["ab", "fsp"], ab={"init_epochs": 2}, fsp={"init_epochs": 1})
    phase = _phase()
    assert m.pre_train(phase) is True
    assert phase.loader.epochs == [-2, -1, -1]  # AB's two epochs, then FSP's one, none a main epoch
    assert m.pre_train(phase) is False and phase.loader.epochs == [-2, -1, -1]
    # the flag travels with the state: a fresh module loading it skips the phase too
    fresh = make_distillation(["ab", "fsp"], ab={"init_epochs": 2}, fsp={"init_epochs": 1})
    fresh.load_state_dict(m.state_dict())
    assert fresh.pre_train(_phase()) is False


def test_phase_survives_an_interruption_and_resume_of_the_student_stage(tmp_path, tiny_overrides, monkeypatch):
    over = tiny_overrides + ["student.epochs=2", "distill.methods=[ft,kd]", "distill.ft.init_epochs=2"]
    teacher_cfg = load_config("demo", tiny_overrides + ["teacher.epochs=1", "objective.kind=ce"])
    data = DataBundle(teacher_cfg)
    teacher = run_teacher(teacher_cfg, tmp_path / "teacher", data)
    ckpt = teacher["checkpoint"]
    cfg = load_config("demo", over + [f"teacher.checkpoint={ckpt}", "objective.kind=ce", "teacher.epochs=1"])

    calls = []
    real_phase = prephase.train_phase

    def counting_phase(*args, **kwargs):
        calls.append(kwargs["name"])
        return real_phase(*args, **kwargs)

    from kdlab.distillers import composite

    monkeypatch.setattr(composite, "train_phase", counting_phase)
    straight = run_student(cfg, tmp_path / "straight", data=data)
    assert straight["status"] == "done" and calls == ["ft"]

    real_epoch = trainer_mod.Trainer._train_epoch

    def killed_in_first_main_epoch(self, epoch):
        if epoch == 0:
            raise Interrupted("simulated kill during epoch 1")
        return real_epoch(self, epoch)

    calls.clear()
    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch", killed_in_first_main_epoch)
    with pytest.raises(Interrupted):
        run_student(cfg, tmp_path / "resumed", data=data)
    assert calls == ["ft"]
    saved = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)
    assert saved["epoch"] == 0 and bool(saved["method"]["terms.ft.init_done"])
    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch", real_epoch)
    resumed = run_student(cfg, tmp_path / "resumed", data=data)
    assert resumed["status"] == "done" and calls == ["ft"]  # not run again

    log = [json.loads(line) for line in (tmp_path / "resumed/init_metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["init_epoch"]) for r in log] == [("ft", 1), ("ft", 2)]
    assert log[0]["init_lr"] == 0.01  # resnet8 student: RepDistiller's paraphraser rate
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)["method"]
    b = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)["method"]
    for k, v in a.items():
        assert torch.equal(v, b[k]), k  # the resumed run is the uninterrupted one


# ------------------------------------------------------------------ two ranks: gradients averaged
def _phase_on_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        m = make_distillation(["ft"], ft={"init_epochs": 2})
        phase = PrePhase(FixedLoader(seed=10 + rank), CPU, OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4),
                         lambda record: None)
        m.pre_train(phase)
        torch.save(m.terms["ft"].paraphraser.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_average_the_phase_gradients(tmp_path):
    """Each rank sees its own shard; with gradients averaged both end equal, and equal to one process that
    sees both shards' batches side by side (the FT reconstruction loss is a mean, the paraphraser has no BN)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_phase_on_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k

    both = FixedLoader(seed=10)
    other = FixedLoader(seed=11)
    both.batches = [Batch(views=[torch.cat([a.views[0], b.views[0]])], labels=torch.cat([a.labels, b.labels]),
                          index=torch.cat([a.index, b.index])) for a, b in zip(both.batches, other.batches)]
    single = make_distillation(["ft"], ft={"init_epochs": 2})
    single.pre_train(PrePhase(both, CPU, OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4), lambda record: None))
    alone = make_distillation(["ft"], ft={"init_epochs": 2})
    alone.pre_train(PrePhase(FixedLoader(seed=10), CPU, OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4),
                             lambda record: None))
    ref, solo = single.terms["ft"].paraphraser.state_dict(), alone.terms["ft"].paraphraser.state_dict()
    for k in r0:
        assert torch.allclose(r0[k], ref[k], rtol=1e-4, atol=1e-6), k
    assert any(not torch.allclose(r0[k], solo[k], rtol=1e-4, atol=1e-6) for k in r0)  # rank 1's data counted
