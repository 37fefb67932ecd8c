"""An initialisation phase before the main training loop, for methods that train in two phases.

Some methods first train a few modules on a loss of their own and only then start the main objective
(RepDistiller's AB, FT and FSP: ``--init_epochs``). :class:`TrainMethod.pre_train` receives a
:class:`PrePhase` (the stage's own loader, runtime and optimiser settings, a log and a stop check) and runs
such phases with :func:`train_phase`; the trainer calls it once before its first epoch and writes a
checkpoint when a phase ran, so a resumed run finds the phase done (the method records that in its own state)
and does not repeat it. The trainer knows nothing about any particular method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdlab.config import OptimConfig
from kdlab.data.base import Batch
from kdlab.engine.distributed import current
from kdlab.engine.runtime import Runtime


class PhaseStopped(RuntimeError):
    """A stop signal arrived during an initialisation phase (the phase is not recorded as done)."""


class PhaseDiverged(RuntimeError):
    """An initialisation phase's loss became NaN/Inf."""


@dataclass
class PrePhase:
    """What an initialisation phase may use: the stage's training loader and runtime, the stage's optimiser
    settings (for momentum, weight decay and the base learning rate), ``log(record)`` for one record per
    phase epoch, and ``should_stop()`` (true once a stop signal arrived)."""

    loader: object
    runtime: Runtime
    optim: OptimConfig
    log: Callable[[dict], None]
    should_stop: Callable[[], bool] = lambda: False


def _average_gradients(params: list[Tensor]) -> None:
    """Average the gradients over the ranks (what DDP does in the main loop); a no-op in one process."""
    info = current()
    if not info.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(info.world)


def train_phase(phase: PrePhase, *, name: str, params: Iterable[nn.Parameter], epochs: int, lr: float,
                loss_fn: Callable[[Batch], Tensor], set_modes: Callable[[], None]) -> list[dict]:
    """Train ``params`` for ``epochs`` epochs on ``loss_fn(batch)`` alone: SGD at the constant rate ``lr`` with
    the stage's momentum and weight decay (a new optimiser, not the main one). ``set_modes()`` puts the
    modules in the phase's train/eval modes before every epoch. Epoch ``e`` of the phase draws the loader's
    epoch ``e - epochs`` (negative: its order and augmentation are not those of any main epoch).

    Returns one record per epoch ``{"phase", "init_epoch", "init_loss" (mean over steps), "init_lr",
    "init_time_s"}``, each also passed to ``phase.log``. Parameters that the loss does not reach keep no
    gradient and are left untouched (no weight decay either)."""
    import time

    params = list(params)
    rt = phase.runtime
    fused = True if params and all(p.device.type in ("cpu", "cuda") for p in params) else None
    opt = torch.optim.SGD(params, lr=lr, momentum=phase.optim.momentum, weight_decay=phase.optim.weight_decay,
                          fused=fused)
    records = []
    for e in range(epochs):
        set_modes()
        phase.loader.set_epoch(e - epochs)
        start = time.perf_counter()
        total = torch.zeros((), dtype=torch.float64, device=rt.device)
        steps = 0
        for batch in phase.loader:
            with rt.autocast():
                loss = loss_fn(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _average_gradients(params)
            opt.step()
            total += loss.detach().double()
            steps += 1
            if phase.should_stop():
                raise PhaseStopped(f"stopped during epoch {e + 1} of the {name} initialisation phase")
        mean = float(total) / max(steps, 1)
        if not math.isfinite(mean):
            raise PhaseDiverged(f"the {name} initialisation loss became {mean} in its epoch {e + 1}; lower "
                                f"the student's learning rate or set init_epochs=0")
        record = {"phase": name, "init_epoch": e + 1, "init_loss": mean, "init_lr": lr,
                  "init_time_s": time.perf_counter() - start}
        records.append(record)
        phase.log(record)
    return records
