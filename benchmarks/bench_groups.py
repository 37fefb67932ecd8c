"""Issue 16: k KD students sharing one frozen teacher, trained as a group vs as k separate runs, one process.

Per round and pair, interleaved:

* ``separate``: one optimizer step of each of the k students, each forwarding the teacher itself (k runs);
* ``grouped``: the same k steps on the same batch with the teacher forwarded once (``SharedForward``, as
  ``StudentGroup`` does);
* ``teacher``: the teacher's forward alone; ``student``: one student step whose teacher output is already
  computed. From these, the bound ``(t_teacher + k·t_student) / (k·(t_teacher + t_student))``.

The k students differ in the KD temperature (distinct runs of one ablation). Targets (CPU, k = 5):
grouped/separate ≤ 0.66 for resnet32x4 → resnet8x4 and wrn_40_2 → wrn_16_2, ≤ 0.70 for resnet56 → resnet20,
and within 5 % of the bound.

    python benchmarks/bench_groups.py [--k 5] [--batch 64] [--device cpu|cuda] [--pairs resnet56:resnet20,...]
"""

from __future__ import annotations

import argparse

import torch

from _common import interleaved, machine, md_table
from kdlab.data.base import Batch
from kdlab.distillers import Distillation
from kdlab.distillers.base import DistillContext
from kdlab.engine.group import SharedForward
from kdlab.experiment.schema import DistillConfig
from kdlab.models import build_model, probe

PAIRS = "resnet56:resnet20,resnet32x4:resnet8x4,wrn_40_2:wrn_16_2"


def students(k: int, teacher: torch.nn.Module, arch: str, device: str, classes: int):
    """k KD students (temperatures 1..k) of ``arch`` with their optimizers, distilling ``teacher``."""
    shape = (3, 32, 32)
    out = []
    for i in range(k):
        s = build_model(arch, classes)
        ctx = DistillContext(probe(s, shape), probe(teacher, shape), classes, 50000, shape, 240)
        cfg = DistillConfig(methods=["kd"], kd={"T": float(i + 1)})
        method = Distillation(s, teacher, cfg, ctx).to(device).to(memory_format=torch.channels_last)
        out.append((method, torch.optim.SGD(list(method.trainable_parameters()), lr=0.01, momentum=0.9)))
    return out


def step(method, opt, batch: Batch) -> None:
    _, losses = method.forward_train(batch, 1.0)
    opt.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    opt.step()


def measure(teacher_arch: str, student_arch: str, k: int, batch: int, device: str, rounds: int) -> dict:
    classes = 100
    torch.manual_seed(0)
    teacher = build_model(teacher_arch, classes).to(device).to(memory_format=torch.channels_last).eval()
    teacher.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    b = Batch([x], torch.randint(0, classes, (batch,), generator=g).to(device),
              torch.randint(0, 50000, (batch,), generator=g).to(device))
    separate = students(k, teacher, student_arch, device, classes)
    grouped = students(k, teacher, student_arch, device, classes)
    shared = SharedForward(teacher)
    for method, _ in grouped:
        method.share_teacher(shared)
    warm = SharedForward(teacher)  # always holds this batch's output: a student step without the teacher
    lone_method, lone_opt = students(1, teacher, student_arch, device, classes)[0]
    lone_method.share_teacher(warm)

    def run_separate():
        for method, opt in separate:
            step(method, opt, b)

    def run_grouped():
        shared.clear()
        for method, opt in grouped:
            step(method, opt, b)

    def run_teacher():
        with torch.no_grad():
            teacher(x)

    def run_student():
        step(lone_method, lone_opt, b)

    t = interleaved({"separate": run_separate, "grouped": run_grouped, "teacher": run_teacher,
                     "student": run_student}, rounds=rounds, iters=2, warmup=1)
    bound = (t["teacher"] + k * t["student"]) / (k * (t["teacher"] + t["student"]))
    ratio = t["grouped"] / t["separate"]
    return {"pair": f"{teacher_arch} → {student_arch}", "k": k, "separate_s": t["separate"],
            "grouped_s": t["grouped"], "teacher_share": t["teacher"] / (t["teacher"] + t["student"]),
            "ratio": ratio, "bound": bound, "ratio_over_bound": ratio / bound}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", default=PAIRS, help="teacher:student,... (default: %(default)s)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for pair in args.pairs.split(","):
        t_arch, s_arch = pair.split(":")
        r = measure(t_arch, s_arch, args.k, args.batch, args.device, args.rounds)
        rows.append([r["pair"], r["k"], r["separate_s"], r["grouped_s"], r["teacher_share"], r["ratio"], r["bound"],
                     r["ratio_over_bound"]])
    print(f"{machine()}; batch {args.batch}, channels_last, {args.rounds} rounds (median)")
    print(md_table(["pair", "k", "k separate steps (s)", "grouped (s)", "teacher share of a KD step",
                    "grouped / separate", "bound", "ratio / bound"], rows))


if __name__ == "__main__":
    main()
