"""The one training loop, for teacher and student stages alike.

SGD with momentum (or Adam/AdamW), step/cosine schedule with warm-up (the learning rate is a pure function of the
fractional epoch, so there is no scheduler state to lose), bf16 autocast and channels_last when the
runtime asks for them, evaluation every epoch, atomic checkpoints every epoch and resume from them.
A non-finite loss stops the run with the step it happened at, keeping the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.config import OptimConfig
from kdlab.engine.checkpoint import (CheckpointError, atomic_write_text, load_latest, naming, remove_temp_files,
                                     save_checkpoint)
from kdlab.engine.distributed import any_rank, convert_sync_bn
from kdlab.engine.events import EventLog
from kdlab.engine.method import TrainMethod
from kdlab.engine.prephase import PhaseDiverged, PhaseStopped, PrePhase
from kdlab.engine.metrics import ECE_BINS, calibration_sums, epoch_loss_stats, expected_calibration_error, summarize
from kdlab.engine.progress import RunProgress
from kdlab.engine.runtime import Runtime, peak_memory_mb

CHECKPOINT_FORMAT = "kdlab-checkpoint/1"


class DivergedError(RuntimeError):
    """The training loss became NaN/Inf."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; the last completed epoch is checkpointed."""


def lr_at(cfg: OptimConfig, epochs: int, progress: float) -> float:
    """Learning rate at fractional epoch ``progress`` (0 <= progress < epochs)."""
    if cfg.warmup_epochs and progress < cfg.warmup_epochs:
        return cfg.lr * (progress + 1e-3) / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        span = max(epochs - cfg.warmup_epochs, 1e-9)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (progress - cfg.warmup_epochs) / span))
    passed = sum(1 for m in cfg.milestones if int(progress) >= round(m * epochs if m < 1 else m))
    return cfg.lr * cfg.gamma**passed


def build_optimizer(params: list[Tensor], optim: OptimConfig) -> torch.optim.Optimizer:
    """``optim.optimizer`` over ``params``, with PyTorch's fused kernel where every parameter's device has one.

    The fused kernel applies the same update as the per-parameter loop in one pass over all parameters; on
    CPU that is about 4 % of a resnet20 step (benchmarks/BENCHMARKS.md, target 3).
    """
    fused = True if params and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) else None
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                               nesterov=optim.nesterov, fused=fused)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optim.optimizer]
    return cls(params, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused)


@dataclass
class StageInfo:
    """What a checkpoint records about the network it holds (so a later stage can check it)."""

    stage: str  # "teacher" | "student"
    arch: str
    num_classes: int
    input_shape: tuple[int, int, int]
    dataset: str
    config: dict = field(default_factory=dict)


@dataclass
class _EpochSums:
    """What an epoch accumulates on the device (read back once, at its end)."""

    losses: Tensor  # one entry per step
    correct: Tensor
    started: float
    terms: dict[str, Tensor] = field(default_factory=dict)
    seen: int = 0
    lr: float = 0.0

    @classmethod
    def new(cls, steps: int, device: torch.device) -> "_EpochSums":
        return cls(torch.zeros(steps, device=device), torch.zeros((), device=device), time.perf_counter())


class Trainer:
    def __init__(self, method: TrainMethod, train_loader, test_loader, *, epochs: int, optim: OptimConfig,
                 runtime: Runtime, run_dir: Path, info: StageInfo, tensorboard: bool = True):
        self.method = method
        if runtime.sync_bn:  # several CUDA ranks only (resolve_runtime); the frozen teacher is not converted
            convert_sync_bn(method)
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.epochs = epochs
        self.optim_cfg = optim
        self.rt = runtime
        self.run_dir = run_dir
        self.info = info
        self.ckpt_dir = run_dir / "checkpoints"
        self.metrics_path = run_dir / "metrics.jsonl"
        self.init_metrics_path = run_dir / "init_metrics.jsonl"  # the method's initialisation phase, if any
        self.init_history: list[dict] = []
        self.optimizer = build_optimizer(list(method.trainable_parameters()), optim)
        self.history: list[dict] = []
        self.start_epoch = 0
        self.best = {"top1": -1.0, "epoch": -1}
        self._stop_signal: int | None = None
        self.main = runtime.dist.is_main  # only rank 0 writes files
        self.events = EventLog(run_dir, tensorboard and self.main)
        self._forward = method.forward_train
        if runtime.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # Buffers (caches, banks, BN statistics) are not broadcast each step: memories are kept equal
            # by gathering their updates, and each rank's BN statistics follow its shard unless runtime.sync_bn.
            cuda = runtime.device.type == "cuda"
            with warnings.catch_warnings():
                # torch 2.13 deprecates broadcast_buffers for forward_sync_buffers, whose False still syncs the
                # buffers at init; its own advice for rank-local buffers is to keep broadcast_buffers=False
                warnings.filterwarnings("ignore", message=r"`broadcast_buffers` is deprecated", category=FutureWarning)
                self._forward = DistributedDataParallel(method, device_ids=[runtime.device.index] if cuda else None,
                                                        broadcast_buffers=False)
        if runtime.compile:
            self._forward = torch.compile(self._forward)

    # ----------------------------------------------------------------------------- checkpoints
    def _state(self, epoch: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "stage": self.info.stage,
            "arch": self.info.arch,
            "num_classes": self.info.num_classes,
            "input_shape": list(self.info.input_shape),
            "dataset": self.info.dataset,
            "config": self.info.config,
            "epoch": epoch,  # epochs completed
            "model": self.method.model.state_dict(),  # network only: RepDistiller-style {'model': ...}
            "method": self.method.state_dict(),  # network + heads + caches + banks + EMA copies
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.rt.device) if self.rt.device.type == "cuda" else None,
            "best": dict(self.best),
        }

    def resume(self) -> str | None:
        """Restore the newest good checkpoint, if any. Returns a warning to show, if one applies."""
        ckpt, warning = load_latest(self.ckpt_dir)
        if self.main:
            remove_temp_files(self.ckpt_dir)  # left by a write that a crash cut short
        if ckpt is None:
            self._keep_history(0)
            return None
        if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("stage") != self.info.stage:
            raise CheckpointError(f"{self.ckpt_dir} holds no {self.info.stage} checkpoint of this kdlab version")
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if ckpt.get("rng_cuda") is not None and self.rt.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng_cuda"], self.rt.device)
        self.best = dict(ckpt["best"])
        self.start_epoch = int(ckpt["epoch"])
        self._keep_history(self.start_epoch)
        return warning

    def _keep_history(self, epochs: int) -> None:
        """Keep one record per epoch up to ``epochs`` (the checkpoint's): records written after it, or before
        any checkpoint existed, belong to the lost part of a run and would otherwise pile up."""
        by_epoch = {r["epoch"]: r for r in _read_jsonl(self.metrics_path) if r.get("epoch", 0) <= epochs}
        self.history = [by_epoch[e] for e in sorted(by_epoch)]
        if self.main and self.metrics_path.exists():
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.history))

    # ------------------------------------------------------------------------------------ loop
    def fit(self) -> dict:
        """Train from ``start_epoch`` to ``epochs``; returns the summary metrics."""
        self.open_progress()
        try:
            with stop_signals_caught(self._note_signal):
                self.pre_train()
                for epoch in range(self.start_epoch, self.epochs):
                    self._train_epoch(epoch)
        finally:
            self.close()
        return self.summary()

    def _train_epoch(self, epoch: int) -> None:
        self.begin_epoch(epoch)
        for step, batch in enumerate(self.progress.steps(self.train_loader, epoch)):
            self.train_step(epoch, step, batch)
            if self._should_stop(step):  # the previous epoch's checkpoint stands
                raise Interrupted(f"stopped by {self._stop_cause()} during epoch {epoch + 1}; "
                                  f"run the same command again to resume from epoch {epoch}")
        self.finish_epoch(self.end_epoch(epoch))
        if any_rank(self._stop_signal is not None, self.rt.device):  # every rank reaches this
            raise Interrupted(f"stopped by {self._stop_cause()} after epoch {epoch + 1}; "
                              "run the same command again to resume")

    def _note_signal(self, signum: int) -> None:
        self._stop_signal = signum

    def pre_train(self) -> None:
        """The method's initialisation phases not done yet (``TrainMethod.pre_train``); after one ran, a
        checkpoint at the current epoch records it, so a resumed run does not repeat it. Each phase epoch is
        a line of ``init_metrics.jsonl`` (rewritten when a phase starts over) and TensorBoard scalars."""
        self._init_log_started = False
        phase = PrePhase(self.train_loader, self.rt, self.optim_cfg, self._log_init,
                         lambda: any_rank(self._stop_signal is not None, self.rt.device))
        try:
            ran = self.method.pre_train(phase)
        except PhaseStopped as exc:
            raise Interrupted(f"{exc} (by {self._stop_cause()}); run the same command again to restart "
                              "the phase") from None
        except PhaseDiverged as exc:
            raise DivergedError(str(exc)) from None
        if ran and self.main:
            save_checkpoint(self._state(self.start_epoch), self.ckpt_dir / "last.pt")

    def _log_init(self, record: dict) -> None:
        self.init_history.append(record)
        if not self.main:
            return
        mode = "a" if self._init_log_started else "w"
        self._init_log_started = True
        with naming(self.init_metrics_path), open(self.init_metrics_path, mode) as fh:
            fh.write(json.dumps(record) + "\n")
        self.events.scalars(f"init/{record['phase']}", {"loss": record["init_loss"], "lr": record["init_lr"]},
                            record["init_epoch"])
        if self.rt.progress:
            print(f"{self.run_dir.name}: {record['phase']} initialisation epoch {record['init_epoch']}: "
                  f"loss {record['init_loss']:.4f}", flush=True)

    # The pieces of an epoch, also driven one step at a time by a group of students (engine.group) and by a
    # stacked group of teachers (engine.stacked_group).
    def open_progress(self) -> None:
        label = f"{self.run_dir.parent.name}/{self.run_dir.name}"
        self.progress = RunProgress(label, self.epochs, self.start_epoch, self.rt.progress)

    def close(self) -> None:
        self.progress.close()
        self.events.close()

    def summary(self) -> dict:
        return summarize(self.history, extra_state_bytes=self.method.extra_state_bytes())

    def begin_epoch(self, epoch: int) -> None:
        """Switch to train mode and reset the epoch's accumulators (the loader's epoch is set here too)."""
        self.method.train()
        self.train_loader.set_epoch(epoch)
        self._acc = _EpochSums.new(len(self.train_loader), self.rt.device)

    def train_step(self, epoch: int, step: int, batch) -> None:
        """One optimizer step on ``batch``; raises :class:`DivergedError` at a sync point after a non-finite loss."""
        method, acc = self.method, self._acc
        steps = acc.losses.shape[0]
        lr = acc.lr = lr_at(self.optim_cfg, self.epochs, epoch + step / steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.rt.autocast():
            logits, terms = self._forward(batch, epoch + step / steps)
            loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        method.after_step()
        self.record_step(epoch, step, batch, lr, loss, terms, logits)

    def record_step(self, epoch: int, step: int, batch, lr: float, loss: Tensor, terms: dict[str, Tensor],
                    logits: Tensor) -> None:
        """A step's bookkeeping once its optimizer step is done: the epoch's sums (loss, terms, correct, seen)
        and, every 25 steps and at the epoch's last, the finiteness check (:class:`DivergedError`), the step
        event and the progress line. :meth:`train_step` ends with it; a stacked group calls it per member."""
        acc = self._acc
        steps = acc.losses.shape[0]
        acc.lr = lr
        acc.losses[step] = loss.detach()
        for k, v in terms.items():
            acc.terms[k] = acc.terms.get(k, 0.0) + v.detach().float()
        acc.correct += (logits.detach().argmax(1) == batch.labels).sum()
        acc.seen += batch.labels.shape[0]
        if step % 25 == 24 or step == steps - 1:  # one host sync every 25 steps
            self._check_finite(acc.losses, epoch, step)
            loss_now = float(acc.losses[step])
            self.events.step(epoch * steps + step, loss_now, lr)
            self.progress.step(loss_now)

    def end_epoch(self, epoch: int) -> dict:
        """The finished epoch's training record (test metrics are added by :meth:`finish_epoch`)."""
        acc, rt = self._acc, self.rt
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        elapsed = time.perf_counter() - acc.started
        losses = acc.losses.float().cpu()
        steps = losses.shape[0]
        return {
            "epoch": epoch + 1,
            "lr": acc.lr,
            "train_loss": float(losses.mean()),
            **{f"train_{k}": float(v) / steps for k, v in acc.terms.items()},
            "train_top1": 100.0 * float(acc.correct) / max(acc.seen, 1),
            **epoch_loss_stats(losses),
            "epoch_time_s": elapsed,
            "step_time_ms": 1000.0 * elapsed / steps,
            **self.method.epoch_stats(),
        }

    def finish_epoch(self, record: dict) -> None:
        """Evaluate, then record the epoch: metrics.jsonl, events, best.pt and last.pt (rank 0 writes)."""
        record.update(self.evaluate())
        record["peak_mem_mb"] = peak_memory_mb(self.rt.device)
        epoch = record["epoch"] - 1
        improved = record["test_top1"] > self.best["top1"]
        if improved:
            self.best = {"top1": record["test_top1"], "epoch": epoch + 1}
        self.history.append(record)
        self.progress.epoch(record)
        if self.main:
            if improved:
                save_checkpoint(self._state(epoch + 1), self.ckpt_dir / "best.pt", keep_previous=False)
            with naming(self.metrics_path), open(self.metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self.events.epoch(record)
            save_checkpoint(self._state(epoch + 1), self.ckpt_dir / "last.pt")

    def _should_stop(self, step: int) -> bool:
        """A signal arrived: stop now when alone, or at the next 25-step sync point with every rank."""
        if not self.rt.dist.enabled:
            return self._stop_signal is not None
        if step % 25 != 24 or step == len(self.train_loader) - 1:  # the last step: decided after the epoch
            return False
        return any_rank(self._stop_signal is not None, self.rt.device)

    def _stop_cause(self) -> str:
        if self._stop_signal is None:  # ranks stop together: this one was told by another
            return "a signal to another rank"
        return f"signal {signal.Signals(self._stop_signal).name}"

    def _check_finite(self, step_losses: Tensor, epoch: int, step: int) -> None:
        bad = ~torch.isfinite(step_losses[: step + 1])
        here = bool(bad.any())
        if not any_rank(here, step_losses.device):  # every rank stops together
            return
        if here:
            first = int(bad.nonzero()[0])
            what = f"loss became {float(step_losses[first])} at epoch {epoch + 1}, step {first + 1}"
        else:
            what = f"loss became non-finite on another rank by epoch {epoch + 1}, step {step + 1}"
        kept = (f"the checkpoint of epoch {self.history[-1]['epoch']} is kept" if self.history
                else "no epoch had finished, so there is no checkpoint")
        raise DivergedError(f"{what}; {kept}. {divergence_advice(self.info)}")

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Accuracy, loss and ECE on the whole test split. Under torchrun the test loader is not sharded: each
        rank evaluates every test image with its own network (BN statistics follow each rank's shard), and rank
        0's figures, those of the network its checkpoint holds, are the ones recorded and printed."""
        model, rt = self.method.model, self.rt
        model.eval()
        total = 0
        loss_sum = torch.zeros((), device=rt.device)
        c1 = torch.zeros((), device=rt.device)
        c5 = torch.zeros((), device=rt.device)
        calibration = torch.zeros(3, ECE_BINS, device=rt.device)
        for batch in self.test_loader:
            with rt.autocast():
                logits = model(batch.views[0]).logits.float()
            loss_sum += F.cross_entropy(logits, batch.labels, reduction="sum")
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top == batch.labels[:, None]
            c1 += hit[:, 0].sum()
            c5 += hit.any(1).sum()
            calibration += calibration_sums(logits, batch.labels)
            total += batch.labels.shape[0]
        correct1, correct5 = float(c1), float(c5)
        return {
            "test_top1": 100.0 * correct1 / max(total, 1),
            "test_top5": 100.0 * correct5 / max(total, 1),
            "test_loss": float(loss_sum) / max(total, 1),
            "test_ece": expected_calibration_error(calibration),
        }

@contextlib.contextmanager
def stop_signals_caught(note: Callable[[int], None]):
    """Inside, SIGINT and SIGTERM call ``note(signum)`` instead of stopping the process, so the loop can stop
    at a point where its checkpoint is whole. Off the main thread, signals stay with the caller."""
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, lambda signum, frame: note(signum))
        except ValueError:
            pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def divergence_advice(info: StageInfo) -> str:
    """What to lower when this stage's loss diverges: its learning rate and the weights of its own loss terms."""
    cfg = info.config or {}
    knobs = [f"{info.stage}.optim.lr"]
    if info.stage == "teacher":
        kind = (cfg.get("objective") or {}).get("kind", "ce")
        knobs += [f"objective.{kind}.lambda_"] if kind != "ce" else []
    else:
        methods = (cfg.get("distill") or {}).get("methods") or []
        knobs += [f"distill.{m}.{'ctr_weight' if m == 'cocord' else 'weight'}" for m in methods]
    return f"Lower {' or '.join(knobs)}."


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line from a crash
            break
    return out
