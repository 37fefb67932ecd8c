"""TensorBoard event files in every run folder (optional: on when the ``tensorboard`` package is present).

Runs of one sweep live under one parent folder, so ``tensorboard --logdir PARENT`` shows them side by side.
"""

from __future__ import annotations

from pathlib import Path


class EventLog:
    """Scalars per epoch (every loss term, lr, accuracy, method statistics, timings) and per logged step."""

    def __init__(self, run_dir: Path, enabled: bool):
        self._writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: event files are skipped, nothing else changes
            return
        self._writer = SummaryWriter(log_dir=str(run_dir / "tb"))

    @property
    def active(self) -> bool:
        return self._writer is not None

    def step(self, global_step: int, loss: float, lr: float) -> None:
        if self._writer is not None:
            self._writer.add_scalar("step/loss", loss, global_step)
            self._writer.add_scalar("step/lr", lr, global_step)

    def epoch(self, record: dict) -> None:
        if self._writer is None:
            return
        epoch = record["epoch"]
        for key, value in record.items():
            if key == "epoch" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            self._writer.add_scalar(_tag(key), value, epoch)
        self._writer.flush()

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        """``values`` as ``prefix/<key>`` at ``step`` (an initialisation phase's epochs, for one)."""
        if self._writer is None:
            return
        for key, value in values.items():
            self._writer.add_scalar(f"{prefix}/{key}", value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _tag(key: str) -> str:
    """Group scalars: loss terms, test metrics, timings, method statistics."""
    if key.startswith("train_"):
        return f"train/{key[6:]}"
    if key.startswith("test_"):
        return f"test/{key[5:]}"
    if key in ("epoch_time_s", "step_time_ms", "peak_mem_mb"):
        return f"cost/{key}"
    if key.startswith("loss_"):
        return f"stability/{key}"
    if key == "lr":
        return "train/lr"
    return f"method/{key}"
