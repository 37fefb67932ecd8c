"""Which pending runs of a sweep train together as one program: students that share a teacher
(:mod:`kdlab.engine.group`) and, when asked for, teachers stacked into one network
(:mod:`kdlab.engine.stacked_group`).

Runs may share when :func:`kdlab.experiment.stages.group_key` says they read the same batches and distil the
same teacher: same seed, data section, views per image, runtime and teacher. The decision is made from the
configs (the run identity's parts), never from names or labels.

**Size.** Members step one after another, so a group holds every member's state but only one step's
activations at a time. :func:`member_bytes` counts a member's state as ``4 × its parameter bytes`` (weights,
gradients, momentum, and one more for EMA copies and heads); :func:`activation_bytes` counts one step as
``3 × the outputs of every leaf module`` for one batch of all its views (kept for backward, their gradients,
and the teacher's outputs), from one forward of the student network at the data's resolution. A group of k
fits when ``k × the largest member + the largest step`` is within half the memory available now
(``MemAvailable`` on CPU, the device's free memory on CUDA), shared by the jobs that run at once on it.
Not counted: memories that grow with the training set (CRD's two banks, CoCoRD's bank: about 0.5 KB per
image each), which matter on ImageNet; a group whose worker dies (out of memory, say) is retried with each run
alone. ``--group-size N`` sets the cap by hand; ``--no-group`` is ``1``.

**Teacher groups** (``--teacher-group-size N``): teachers with equal
:func:`kdlab.experiment.stages.teacher_group_key` (the same seed, data, views, runtime and teacher section; any
objective) train as one stacked network. Its k copies forward and backward at once, so a group of k holds k
members' state *and* k steps' activations: ``k × (member + step) ≤`` the same budget. They are off by default:
on CPU a stacked teacher step measured 1.19–1.29 × the separate steps (benchmarks/BENCHMARKS.md §7.1), and on
GPU the gain is not yet measured (the command is there).

**Splitting.** When fewer groups than idle workers are ready, the largest groups are split so every worker
has work: on one machine two half groups on two cores finish sooner than one full group on one core.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from kdlab.distillers.composite import distill_views
from kdlab.experiment.schema import ExperimentConfig
from kdlab.models import build_model

MEMORY_FRACTION = 0.5  # of the memory available when the sweep starts, for all groups running at once


def input_size(cfg: ExperimentConfig) -> int:
    """The side of the images the student sees: ``data.image_size`` for streamed folders, 64 for
    Tiny-ImageNet, else 32 (CIFAR; a bound for smaller images)."""
    if cfg.data.streaming:
        return cfg.data.image_size
    return 64 if "tiny" in cfg.data.name.lower() else 32


def _arch(cfg: ExperimentConfig, stage: str) -> str:
    return cfg.teacher.arch if stage == "teacher" else cfg.student.arch


def _views(cfg: ExperimentConfig, stage: str) -> int:
    return cfg.teacher_views() if stage == "teacher" else distill_views(cfg.distill)


def member_bytes(cfg: ExperimentConfig, num_classes: int = 1000, stage: str = "student") -> int:
    """The state one grouped run of ``stage`` holds: 4 × its parameter bytes (``num_classes`` sizes the
    classifier; 1000 is a bound for every dataset kdlab ships)."""
    net = build_model(_arch(cfg, stage), num_classes=num_classes)
    return 4 * sum(p.numel() * p.element_size() for p in net.parameters())


def activation_bytes(cfg: ExperimentConfig, num_classes: int = 1000, stage: str = "student") -> int:
    """One training step's activations: 3 × the outputs of every leaf module for one batch of all its views."""
    net = build_model(_arch(cfg, stage), num_classes=num_classes)
    sizes: list[int] = []
    leaves = [m for m in net.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(_numel(out))) for m in leaves]
    side = input_size(cfg)
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, side, side))
    finally:
        for h in hooks:
            h.remove()
    return 3 * 4 * sum(sizes) * cfg.data.batch_size * _views(cfg, stage)


def _numel(out) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel()
    if isinstance(out, (tuple, list)):
        return sum(_numel(o) for o in out)
    return 0


def available_bytes(device: str = "auto") -> int:
    """Memory free for training now: CUDA's free device memory, else the host's ``MemAvailable``."""
    if device != "cpu" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # no /proc (not Linux): assume 8 GiB


def auto_group_size(cfgs: list[ExperimentConfig], jobs_per_device: int, stage: str = "student") -> int:
    """How many of ``cfgs``' kind fit in one group when ``jobs_per_device`` groups share a device (at least 1):
    sized for the largest member and the largest step among ``cfgs``. Students step one after another, so a
    group holds one step's activations; a stacked teacher group steps all at once and holds k of them."""
    budget = MEMORY_FRACTION * available_bytes(cfgs[0].runtime.device) / max(jobs_per_device, 1)
    state = max(member_bytes(c, stage=stage) for c in cfgs)
    step = max(activation_bytes(c, stage=stage) for c in cfgs)
    if stage == "teacher":
        return max(1, int(budget // max(state + step, 1)))
    return max(1, int((budget - step) // max(state, 1)))


def form_groups(items: list, key: Callable[[object], str], cap: Callable[[list], int], free: int) -> list[list]:
    """Partition ``items`` (in order) into groups of equal non-empty ``key``, each at most ``cap(members)`` long
    (``members``: all the items of that key);
    items with an empty key are alone. With fewer groups than ``free`` workers, split the largest groups in
    halves until there are ``free`` groups or none can be split."""
    by_key: dict[str, list] = {}
    groups: list[list] = []
    for item in items:
        k = key(item)
        if k:
            by_key.setdefault(k, []).append(item)
        else:
            groups.append([item])
    for members in by_key.values():
        size = max(1, cap(members))
        groups += [members[i:i + size] for i in range(0, len(members), size)]
    while len(groups) < free:
        largest = max(groups, key=len, default=[])
        if len(largest) < 2:
            break
        groups.remove(largest)
        half = math.ceil(len(largest) / 2)
        groups += [largest[:half], largest[half:]]
    return groups
