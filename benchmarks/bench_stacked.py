"""Teacher groups (issue 16): one training step of k same-architecture networks as one program vs k separate steps.

Each candidate does a full step of all k networks on one shared batch (teacher variants with one seed see the
same batches): forward, cross-entropy backward, SGD step (momentum 0.9, weight decay 5e-4, PyTorch's fused
kernel as kdlab's Trainer uses it).

* ``separate`` -- k networks, k forwards, k backwards, k optimizer steps (what k runs do);
* ``grouped``  -- ``stack_networks(nets, "grouped")``: one network of grouped convolutions, one step;
* ``vmap``     -- ``stack_networks(nets, "vmap")``: stacked parameters, ``vmap(functional_call)``, one step.

Candidates are interleaved round by round (benchmarks/_common.py); figures are medians, ratios are to
``separate`` in the same run.

    python benchmarks/bench_stacked.py [--archs resnet20,resnet56,resnet8x4] [--ks 2,4,8] [--batch 64]
        [--device cpu|cuda] [--no-channels-last] [--amp bf16] [--per-copy] [--rounds 7] [--iters 3] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from _common import apply_timing_args, interleaved, machine, md_table, timing_args

from kdlab.models import build_model
from kdlab.models.stacked import stack_networks


def make_nets(arch: str, k: int, classes: int, device: str) -> list[torch.nn.Module]:
    nets = []
    for i in range(k):
        torch.manual_seed(i)
        nets.append(build_model(arch, num_classes=classes).to(device))
    return nets


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)


def candidates(arch: str, k: int, a) -> dict:
    cl = a.channels_last
    amp = (lambda: torch.autocast(a.device, dtype=torch.bfloat16)) if a.amp == "bf16" else contextlib.nullcontext
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, 3, 32, 32, generator=g)
    y = torch.randint(0, a.classes, (a.batch,), generator=g).to(a.device)
    xs = torch.randn(k, a.batch, 3, 32, 32, generator=g).to(a.device) if a.per_copy else None
    x = x.to(a.device)
    x_sep = [xs[i] for i in range(k)] if a.per_copy else [x] * k
    if cl:
        x_sep = [t.contiguous(memory_format=torch.channels_last) for t in x_sep]

    nets = make_nets(arch, k, a.classes, a.device)
    if cl:
        nets = [n.to(memory_format=torch.channels_last) for n in nets]
    opts = [sgd(n.parameters()) for n in nets]

    def separate():
        for net, opt, xi in zip(nets, opts, x_sep):
            with amp():
                loss = F.cross_entropy(net(xi).logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def stacked_step(strategy: str):
        st = stack_networks(make_nets(arch, k, a.classes, a.device), strategy)
        if cl:
            st.to_channels_last()
        opt = sgd(st.parameters())
        inp = xs if a.per_copy else x

        def step():
            with amp():
                loss = sum(F.cross_entropy(o.logits, y) for o in st(inp))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    return {"separate": separate, "grouped": stacked_step("grouped"), "vmap": stacked_step("vmap")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="resnet20,resnet56,resnet8x4")
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--per-copy", action="store_true", help="each copy its own batch instead of one shared batch")
    timing_args(ap, rounds=7)
    a = ap.parse_args()
    apply_timing_args(a)
    rows = []
    for arch in a.archs.split(","):
        for k in (int(v) for v in a.ks.split(",")):
            t = interleaved(candidates(arch, k, a), rounds=a.rounds, iters=a.iters, warmup=a.warmup)
            base = t["separate"]
            rows.append([arch, k, 1000 * base, 1000 * t["grouped"], 1000 * t["vmap"],
                         t["grouped"] / base, t["vmap"] / base])
            print(md_table(["arch", "k", "separate ms", "grouped ms", "vmap ms", "grouped / separate",
                            "vmap / separate"], rows[-1:]).splitlines()[-1], flush=True)
    inputs = "k batches" if a.per_copy else "one shared batch"
    print(f"\nmachine: {machine()}; {a.device}, batch {a.batch} ({inputs}), {a.classes} classes, "
          f"channels_last {a.channels_last}, amp {a.amp}, {a.rounds} rounds x {a.iters} steps\n")
    print(md_table(["arch", "k", "separate ms", "grouped ms", "vmap ms", "grouped / separate", "vmap / separate"],
                   rows))


if __name__ == "__main__":
    main()
