"""Target 1: intra teacher step / CE teacher step on the same two views (≤ 1.03), `positive: memory`
against a one-view CE step, and the cost of the cache as Q grows (100 classes).

    python benchmarks/bench_teacher.py [--arch resnet20] [--batch 64] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch

from _common import interleaved, machine, md_table
from kdlab.experiment.schema import ObjectiveConfig
from kdlab.data.base import Batch
from kdlab.models import build_model, probe
from kdlab.objectives.teacher import TeacherObjective


def make_step(kind: str, views: int, *, arch: str, classes: int, batch: int, device: str, **intra):
    torch.manual_seed(0)
    net = build_model(arch, num_classes=classes)
    cfg = ObjectiveConfig(kind=kind, views=views, intra={"margin": False, **intra})
    method = TeacherObjective(net, cfg, views=views, num_classes=classes, feature_dim=probe(net, (3, 32, 32)).pooled_dim,
                              num_train=50_000).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = [torch.randn(batch, 3, 32, 32, generator=g).to(device).contiguous(memory_format=torch.channels_last)
         for _ in range(2)]
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    b = Batch(x, y, torch.arange(batch, device=device))

    def step():
        _, losses = method.forward_train(b, 0.0)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    return step, method


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    kw = dict(arch=a.arch, batch=a.batch, device=a.device)
    cands = {
        "ce, 2 views": make_step("ce", 2, classes=100, **kw)[0],
        "intra, 2 views (Q=128)": make_step("intra", 2, classes=100, **kw)[0],
        "ce, 1 view": make_step("ce", 1, classes=100, **kw)[0],
        "intra, positive: memory (1 view)": make_step("intra", 1, classes=100, positive="memory", **kw)[0],
    }
    for q in (0, 64, 256, 1024):
        name = f"intra, 2 views, Q={q}"
        cache = {"enabled": False} if q == 0 else {"size": q}
        step, method = make_step("intra", 2, classes=100, cache=cache, **kw)
        if method.cache is not None:  # time a full cache: every entry is a negative
            method.cache.fill.fill_(q)
        cands[name] = step
    t = interleaved(cands, rounds=a.rounds)
    base2, base1 = t["ce, 2 views"], t["ce, 1 view"]
    rows = [[k, 1000 * v, v / (base1 if "memory" in k or k == "ce, 1 view" else base2)] for k, v in t.items()]
    print(f"machine: {machine()}; {a.arch}, batch {a.batch}, 100 classes, margin off (every row an anchor)\n")
    print(md_table(["step", "ms", "ratio (vs CE, same views)"], rows))


if __name__ == "__main__":
    main()
