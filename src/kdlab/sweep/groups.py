"""Which pending student runs of a sweep train together as one program (:mod:`kdlab.engine.group`).

Runs may share when :func:`kdlab.experiment.stages.group_key` says they read the same batches and distil the
same teacher: same seed, data section, views per image, runtime and teacher. The decision is made from the
configs (the run identity's parts), never from names or labels.

**Size.** A group holds every member's network, heads, memories and optimizer state and, during its step,
one member's activations (members step one after another; the teacher's outputs for one batch are kept).
:func:`member_bytes` estimates one member as ``4 × parameter bytes`` (weights, gradients, momentum, one
spare for EMA copies and heads) plus ``3 × the activations of one batch`` (forward outputs kept for backward,
their gradients, and the teacher's). The activations come from one forward of the student network at the
data's resolution with a hook on every module, so a wide network counts as wide. The cap is the number of
members that fit in half the memory available now (``MemAvailable`` on CPU, free device memory on CUDA),
shared by the sweep's parallel jobs. ``--group-size N`` sets the cap by hand; ``--no-group`` is ``1``.

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


def member_bytes(cfg: ExperimentConfig, num_classes: int = 1000) -> int:
    """An estimate of one grouped student's memory (see the module docstring for the rule)."""
    net = build_model(cfg.student.arch, num_classes=num_classes)
    param_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(_numel(out))) for m in net.modules()]
    side = input_size(cfg)
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, side, side))
    finally:
        for h in hooks:
            h.remove()
    activation_bytes = 4 * sum(sizes) * cfg.data.batch_size * distill_views(cfg.distill)
    return 4 * param_bytes + 3 * activation_bytes


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


def auto_group_size(cfg: ExperimentConfig, jobs: int) -> int:
    """How many students of ``cfg``'s kind fit in one group when ``jobs`` groups run at once (at least 1)."""
    budget = MEMORY_FRACTION * available_bytes(cfg.runtime.device) / max(jobs, 1)
    return max(1, int(budget // max(member_bytes(cfg), 1)))


def form_groups(items: list, key: Callable[[object], str], cap: Callable[[object], int], free: int) -> list[list]:
    """Partition ``items`` (in order) into groups of equal non-empty ``key``, each at most ``cap(first)`` long;
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
        size = max(1, cap(members[0]))
        groups += [members[i:i + size] for i in range(0, len(members), size)]
    while len(groups) < free:
        largest = max(groups, key=len, default=[])
        if len(largest) < 2:
            break
        groups.remove(largest)
        half = math.ceil(len(largest) / 2)
        groups += [largest[:half], largest[half:]]
    return groups
