"""Several runs trained as one program: each batch read once, a shared frozen network forwarded once.

Student runs that distil the same frozen teacher with the same seed and data settings read the same batches
(the loader's order and augmentation come from its own generators, seeded by ``(seed, epoch)``), so one
process can feed every batch to all of them and compute the teacher's output once. Everything else stays
per run: network, heads, memories, optimizer, learning-rate schedule, run folder, checkpoints and metrics.

What makes a grouped run equal to its separate run, step for step:

* **Batches:** one loader, shared; each member would have drawn the same batches alone.
* **Teacher outputs:** :class:`SharedForward` computes the frozen network once per input tensor and hands
  every member the same output; the computation is the one a separate run does, so the values are equal.
* **Global random state:** a member's terms may draw from torch's global generator (CRD's negatives, CoCoRD's
  bank samples). Each member keeps its own generator state and has it swapped in around each of its steps and
  epochs, so its draws are those of its separate run whatever the other members draw.

A member that fails (non-finite loss, or any error inside its step) stops alone; the others go on. A signal
stops every member at its last checkpoint, as for a single run.
"""

from __future__ import annotations

import signal
import traceback
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kdlab.engine.trainer import DivergedError, Interrupted, Trainer, stop_signals_caught


class SharedForward(nn.Module):
    """A frozen network whose output for an input tensor is computed once and reused until :meth:`clear`.

    Outputs are keyed by the input tensor's identity and version counter: the same batch tensor passed by
    another member is a hit; a new tensor, or one changed in place since, is computed afresh. The group
    clears the memo before each batch, so at most one step's outputs are held.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self._memo: dict[int, tuple[Tensor, int, object]] = {}
        self.hits = 0
        self.misses = 0
        self.sharing = True  # off while members run alone (initialisation phases): no memo then

    def forward(self, x: Tensor):
        if not self.sharing:
            return self.net(x)
        entry = self._memo.get(id(x))
        if entry is not None and entry[0] is x and entry[1] == x._version:
            self.hits += 1
            return entry[2]
        self.misses += 1
        out = self.net(x)
        self._memo[id(x)] = (x, x._version, out)  # holding x keeps its id from being reused this step
        return out

    def clear(self) -> None:
        self._memo.clear()


@dataclass
class _RandomState:
    """One member's global generator states (CPU and, when used, the current CUDA device)."""

    cpu: Tensor
    cuda: Tensor | None = None

    @classmethod
    def current(cls, device: torch.device) -> "_RandomState":
        return cls(torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)

    def install(self, device: torch.device) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, device)


@dataclass
class Member:
    """One run of a group: its trainer, its random state, and how it ended (None while it trains)."""

    trainer: Trainer
    random: _RandomState
    error: BaseException | None = None
    traceback: str = ""
    metrics: dict = field(default_factory=dict)
    shared_with: int = 0  # how many runs trained in this member's program (itself included); 0: the whole group

    @classmethod
    def of(cls, trainer: Trainer) -> "Member":
        """A member for ``trainer`` holding the global random state of now (the one its separate run has)."""
        return cls(trainer, _RandomState.current(trainer.rt.device))

    @property
    def alive(self) -> bool:
        return self.error is None

    def trains_in(self, epoch: int) -> bool:
        return self.alive and self.trainer.start_epoch <= epoch < self.trainer.epochs

    def run(self, fn, *args):
        """``fn(*args)`` with this member's global random state in place; a failure ends this member only."""
        device = self.trainer.rt.device
        self.random.install(device)
        try:
            return fn(*args)
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - a member's failure is recorded and the group goes on
            self.error = exc
            self.traceback = "" if isinstance(exc, DivergedError) else traceback.format_exc(limit=-3)
            return None
        finally:
            self.random = _RandomState.current(device)


class RunGroup:
    """What every group of runs on one loader shares: members added as built, one epoch loop that stops at a
    signal with every member at its last checkpoint, each live member's summary, and cleanup. Subclasses say
    how the epochs are trained (:meth:`_epoch`), which epochs there are (:meth:`_epochs`), and what happens
    before the first (:meth:`_prepare`) and after the last (:meth:`_release`)."""

    kind = "group"

    def __init__(self, loader):
        self.loader = loader
        self.members: list[Member] = []
        self._stop_signal: int | None = None

    def add(self, trainer: Trainer) -> Member:
        """Add a built (and resumed) trainer; the global random state now is the one its separate run has."""
        if trainer.rt.dist.enabled:
            raise ValueError(f"a {self.kind} runs in one process; it cannot run under torchrun")
        trainer.train_loader = self.loader
        member = Member.of(trainer)
        self.members.append(member)
        return member

    def fit(self) -> list[Member]:
        """Train every member to its last epoch; returns the members, each with its metrics or its error.

        Raises :class:`Interrupted` when a signal arrives; every member keeps its last checkpoint.
        """
        for m in self.members:
            m.trainer.open_progress()
        try:
            with stop_signals_caught(self._note_signal):
                self._prepare()
                for epoch in self._epochs():
                    self._epoch(epoch)
                    if self._stop_signal is not None:
                        raise Interrupted(f"stopped by signal {signal.Signals(self._stop_signal).name} after "
                                          f"epoch {epoch + 1}; run the same command again to resume")
            for m in self.members:
                if m.alive:
                    m.metrics = m.run(m.trainer.summary) or {}
        finally:
            for m in self.members:
                m.trainer.close()
            self._release()
        return self.members

    def _prepare(self) -> None:
        """Before the first epoch (inside the signal handler)."""

    def _epochs(self) -> range:
        raise NotImplementedError

    def _epoch(self, epoch: int) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """After the last epoch, or a stop: drop what the group holds."""

    def _stop_during(self, epoch: int) -> None:
        """Raise :class:`Interrupted` when a signal has arrived during ``epoch`` (its checkpoint is the last)."""
        if self._stop_signal is not None:
            raise Interrupted(f"stopped by signal {signal.Signals(self._stop_signal).name} during epoch "
                              f"{epoch + 1}; run the same command again to resume from epoch {epoch}")

    def _note_signal(self, signum: int) -> None:
        self._stop_signal = signum
        for m in self.members:  # an initialisation phase checks its own trainer's flag
            m.trainer._note_signal(signum)


class StudentGroup(RunGroup):
    """Trainers of runs that read the same batches from one loader and share ``shared``'s outputs.

    Build each member's trainer exactly as its separate run would (seed, network, method, resume), then
    hand the trainers over with the global random state each had at that point (:meth:`add`).
    Members may start at different epochs (one resumed, one new) and run for different numbers of epochs:
    each trains in the epochs it has left, and the loader serves every epoch any member needs.
    """

    kind = "student group"

    def __init__(self, loader, shared: SharedForward | None):
        super().__init__(loader)
        self.shared = shared

    def _prepare(self) -> None:
        self._initialisation_phases()

    def _epochs(self) -> range:
        first = min((m.trainer.start_epoch for m in self.members), default=0)
        last = max((m.trainer.epochs for m in self.members), default=0)
        return range(first, last)

    def _release(self) -> None:
        if self.shared is not None:
            self.shared.clear()

    def _initialisation_phases(self) -> None:
        """Each member's initialisation phase (AB, FT, FSP: ``init_epochs``), one member after another, each with
        its own teacher forwards (the phases read the loader on their own; nothing is shared or kept)."""
        if self.shared is not None:
            self.shared.sharing = False
        try:
            for m in self.members:
                m.run(m.trainer.pre_train)
        finally:
            if self.shared is not None:
                self.shared.sharing = True

    def _epoch(self, epoch: int) -> None:
        active = [m for m in self.members if m.trains_in(epoch)]
        if not active:
            return
        for m in active:
            m.run(m.trainer.begin_epoch, epoch)
        self.loader.set_epoch(epoch)
        for step, batch in enumerate(self.loader):
            if self.shared is not None:
                self.shared.clear()
            for m in active:
                if m.alive:
                    m.run(m.trainer.train_step, epoch, step, batch)
            self._stop_during(epoch)
        if self.shared is not None:
            self.shared.clear()
        for m in active:
            if m.alive:
                m.run(lambda t: t.finish_epoch(t.end_epoch(epoch)), m.trainer)
