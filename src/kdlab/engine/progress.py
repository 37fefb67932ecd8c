"""What a person watching a run sees while it trains (``runtime.progress``; rank 0 only).

On a terminal (stdout and stderr both TTYs): one bar for the whole run on stderr, with the run's total ETA, the
epoch, the loss and the last epoch's test top-1. Anywhere else (a log file, a pipe, nohup, SLURM, CI): one plain
line per epoch on stdout, flushed, e.g.::

    demo-1a2b3c4d/teacher_ce  epoch 3/12  loss 0.4123  top-1 93.21  elapsed 0:12  ETA 0:48
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator


def on_terminal() -> bool:
    """True when a person is looking at a terminal that a redrawn bar cannot garble."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    s = max(0, round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def eta(elapsed: float, done: int, total: int) -> float:
    """Seconds left when ``done`` of ``total`` equal pieces took ``elapsed`` seconds."""
    return elapsed / done * (total - done) if done else float("nan")


class RunProgress:
    """Progress of one run from ``first_epoch`` (a resumed run starts later) to ``epochs``."""

    def __init__(self, label: str, epochs: int, first_epoch: int, enabled: bool):
        self.label, self.epochs, self.first = label, epochs, first_epoch
        self.enabled = enabled
        self.bar_mode = enabled and on_terminal()
        self._bar = None
        self._start = time.perf_counter()
        self._epoch = first_epoch
        self._top1: float | None = None

    def steps(self, loader, epoch: int) -> Iterable:
        """The epoch's batches, advancing the bar as they are taken."""
        self._epoch = epoch
        if not self.bar_mode:
            return loader
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=(self.epochs - self.first) * len(loader), desc=self.label, leave=False,
                             dynamic_ncols=True, unit="step")
        return self._advance(loader)

    def _advance(self, loader) -> Iterator:
        for batch in loader:
            yield batch
            self._bar.update(1)

    def step(self, loss: float) -> None:
        """The loss at a logged step (the bar shows it; the plain lines wait for the epoch's mean)."""
        if self._bar is not None:
            self._bar.set_postfix_str(self._status(loss), refresh=False)

    def epoch(self, record: dict) -> None:
        """An epoch ended (``record`` as written to metrics.jsonl)."""
        if not self.enabled:
            return
        self._top1 = record.get("test_top1")
        if self._bar is not None:
            self._bar.set_postfix_str(self._status(record["train_loss"]))
            return
        elapsed = time.perf_counter() - self._start
        left = eta(elapsed, record["epoch"] - self.first, self.epochs - self.first)
        print(f"{self.label}  {self._status(record['train_loss'])}  elapsed {clock(elapsed)}  ETA {clock(left)}",
              flush=True)

    def _status(self, loss: float) -> str:
        top1 = f"  top-1 {self._top1:.2f}" if self._top1 is not None else ""
        return f"epoch {self._epoch + 1}/{self.epochs}  loss {loss:.4f}{top1}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
