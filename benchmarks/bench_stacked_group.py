"""Teacher groups (issue 16), engine level: k intra-class teachers as one ``StackedGroup`` step vs k trainers' steps.

Both candidates run kdlab's own training code on one CIFAR-size random batch (2 views, 100 classes) whose
teachers differ only in the objective (λ of the intra-class term; margin off, so every row is an anchor):

* ``separate`` -- k :class:`Trainer` objects, each doing its ``train_step`` (what k separate runs do per batch);
* ``stacked``  -- one :class:`StackedGroup` over k such trainers doing one group step (``_step``, what its
  ``fit`` does per batch): one stacked forward, k objectives, one backward, one optimizer step, k records.

Candidates are interleaved round by round (benchmarks/_common.py); figures are medians, the ratio is stacked /
separate in the same run. bench_stacked.py times the bare networks (cross-entropy only) for comparison.

    python benchmarks/bench_stacked_group.py [--archs resnet20,resnet56] [--k 4] [--batch 64]
        [--strategy grouped|vmap] [--device cpu|cuda] [--amp bf16] [--rounds 5] [--iters 3] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import apply_timing_args, interleaved, machine, md_table, timing_args

from kdlab.config import OptimConfig
from kdlab.data.base import Batch
from kdlab.engine.runtime import Runtime
from kdlab.engine.stacked_group import StackedGroup
from kdlab.engine.trainer import StageInfo, Trainer
from kdlab.experiment.schema import ObjectiveConfig
from kdlab.models import build_model, probe
from kdlab.objectives.teacher import TeacherObjective

STEPS = 50  # steps per (synthetic) epoch: sets where the trainers' every-25-steps sync points fall


class OneBatch:
    """A loader that yields the same batch ``STEPS`` times per epoch (the trainers only need its length)."""

    def __init__(self, batch: Batch):
        self.batch = batch

    def __len__(self) -> int:
        return STEPS

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return iter([self.batch] * STEPS)


def make_batch(a) -> Batch:
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(a.batch, 3, 32, 32, generator=g).to(a.device).contiguous(memory_format=torch.channels_last)
             for _ in range(2)]
    labels = torch.randint(0, a.classes, (a.batch,), generator=g).to(a.device)
    return Batch(views, labels, torch.arange(a.batch, device=a.device))


def make_trainers(arch: str, a, rt: Runtime, root: Path, loader: OneBatch) -> list[Trainer]:
    """k intra-class teachers (λ = 0.02, 0.04, ...) of ``arch``, same seed, each with its own trainer."""
    trainers = []
    for i in range(a.k):
        torch.manual_seed(0)
        net = build_model(arch, num_classes=a.classes)
        cfg = ObjectiveConfig(kind="intra", intra={"lambda_": 0.02 * (i + 1), "margin": False})
        method = TeacherObjective(net, cfg, views=2, num_classes=a.classes,
                                  feature_dim=probe(net, (3, 32, 32)).pooled_dim, num_train=50_000, epochs=240)
        run_dir = root / f"{arch}-{i}"
        run_dir.mkdir(parents=True)
        trainers.append(Trainer(rt.prepare_model(method), loader, loader, epochs=240, optim=OptimConfig(lr=0.05),
                                runtime=rt, run_dir=run_dir, info=StageInfo("teacher", arch, a.classes, (3, 32, 32),
                                                                            "random"), tensorboard=False))
    return trainers


def candidates(arch: str, a, rt: Runtime, root: Path) -> dict:
    loader = OneBatch(make_batch(a))
    separate = make_trainers(arch, a, rt, root / "separate", loader)
    group = StackedGroup(loader, a.strategy)
    for t in make_trainers(arch, a, rt, root / "stacked", loader):
        group.add(t)
    group._check_members()
    group._stack()
    for t in separate + [m.trainer for m in group.members]:
        t.begin_epoch(0)
        t.open_progress()
    counter = {"separate": 0, "stacked": 0}

    def run_separate():
        step = counter["separate"] = (counter["separate"] + 1) % STEPS
        for t in separate:
            t.train_step(0, step, loader.batch)

    def run_stacked():
        step = counter["stacked"] = (counter["stacked"] + 1) % STEPS
        group._step(0, step, STEPS, loader.batch)

    return {"separate": run_separate, "stacked": run_stacked}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="resnet20,resnet56")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--strategy", choices=["grouped", "vmap"], default="grouped")
    timing_args(ap, rounds=5)
    a = ap.parse_args()
    apply_timing_args(a)
    device = torch.device(a.device)
    rt = Runtime(device, torch.bfloat16 if a.amp == "bf16" else None, True, False, False)
    header = ["arch", "k", "separate ms", "stacked ms", "stacked / separate"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.archs.split(","):
            t = interleaved(candidates(arch, a, rt, Path(tmp)), rounds=a.rounds, iters=a.iters, warmup=a.warmup)
            rows.append([arch, a.k, 1000 * t["separate"], 1000 * t["stacked"], t["stacked"] / t["separate"]])
            print(md_table(header, rows[-1:]).splitlines()[-1], flush=True)
    print(f"\nmachine: {machine()}; {a.device}, batch {a.batch} x 2 views, {a.classes} classes, strategy "
          f"{a.strategy}, channels_last, amp {a.amp}, {a.rounds} rounds x {a.iters} steps\n")
    print(md_table(header, rows))


if __name__ == "__main__":
    main()
