"""Target 2: student step time of each distiller relative to KD on the same pair, one process.
Targets: CRD ≤ 1.5× KD, CoCoRD ≤ 2.5× KD (mdistiller's published figure has CRD at 3.7× KD).
Also reports each method's extra memory (heads excluded: banks, queues, EMA copies), per dataset size.

    python benchmarks/bench_distillers.py [--teacher resnet32x4 --student resnet8x4] [--batch 64]
"""

from __future__ import annotations

import argparse

import torch

from _common import interleaved, machine, md_table
from kdlab.experiment.schema import DistillConfig
from kdlab.data.base import Batch
from kdlab.distillers import Distillation
from kdlab.distillers.base import DistillContext
from kdlab.models import build_model, probe

METHODS = [["kd"], ["rkd"], ["fitnet"], ["at"], ["sp"], ["pkt"], ["dkd"], ["crd"], ["crd", "kd"], ["cocord"],
           ["cocord", "kd"], ["ab"], ["cc"], ["fsp"], ["ft"], ["kdsvd"], ["nst"], ["vid"], ["ofd"], ["reviewkd"],
           ["ctkd"], ["kd+ls"], ["dkd+ls"]]
#: logit standardization is a switch on KD/DKD (Sun et al., CVPR 2024), benchmarked as its own row
SWITCHES = {"kd+ls": ("kd", {"kd": {"logit_std": True}}), "dkd+ls": ("dkd", {"dkd": {"logit_std": True}})}


def make(methods, *, teacher: str, student: str, batch: int, device: str, num_train: int, classes: int = 100):
    torch.manual_seed(0)
    s = build_model(student, classes)
    t = build_model(teacher, classes).eval()
    ctx = DistillContext(probe(s, (3, 32, 32)), probe(t, (3, 32, 32)), classes, num_train, (3, 32, 32), 240)
    extra = {}
    if len(methods) == 1 and methods[0] in SWITCHES:
        name, extra = SWITCHES[methods[0]]
        methods = [name]
    method = Distillation(s, t, DistillConfig(methods=methods, **extra), ctx).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(list(method.trainable_parameters()), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(batch, 3, 32, 32, generator=g).to(device).contiguous(memory_format=torch.channels_last)
             for _ in range(method.views)]
    b = Batch(views, torch.randint(0, classes, (batch,), generator=g).to(device),
              torch.randint(0, num_train, (batch,), generator=g).to(device))

    def step():
        _, losses = method.forward_train(b, 1.0)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        method.after_step()

    return step, method


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default=None, help="comma-separated rows, '+' joins methods (default: all)")
    a = ap.parse_args()
    kw = dict(teacher=a.teacher, student=a.student, batch=a.batch, device=a.device)
    steps, extra = {}, {}
    chosen = [[x] if x in SWITCHES else x.split("+") for x in a.methods.split(",")] if a.methods else METHODS
    if ["kd"] not in chosen:
        chosen = [["kd"], *chosen]  # the reference row
    for m in chosen:
        name = "+".join(m)
        steps[name], method = make(m, num_train=50_000, **kw)
        extra[name] = method.extra_state_bytes()
        extra[name + "@1.28M"] = make(m, num_train=1_281_167, **kw)[1].extra_state_bytes() if "crd" in m else None
    t = interleaved(steps, rounds=a.rounds, iters=3)
    rows = [[k, 1000 * v, v / t["kd"], extra[k] / 2**20,
             "-" if extra[k + "@1.28M"] is None else f"{extra[k + '@1.28M'] / 2**20:.1f}"] for k, v in t.items()]
    print(f"machine: {machine()}; {a.teacher} -> {a.student}, batch {a.batch}, 100 classes\n")
    print(md_table(["method", "ms/step", "× KD", "extra MiB (50k images)", "extra MiB (1.28M images)"], rows))


if __name__ == "__main__":
    main()
