"""Stages built from an :class:`ExperimentConfig`: train a teacher, distil a student, or both.

Each stage owns a run folder::

    run_dir/config.yaml      the resolved config
    run_dir/env.json         versions, git hash, device
    run_dir/metrics.jsonl    one record per epoch (metrics.csv beside it at the end)
    run_dir/checkpoints/     last.pt (+ last.prev.pt), best.pt
    run_dir/summary.json     status, error, summary metrics, checkpoint path
    run_dir/owner.json       the process running it (pid, host, start time)

Running a stage on a folder that already holds a finished summary returns it; a folder with a
checkpoint resumes from it. That is what makes a killed run or a killed sweep cheap to finish.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

import kdlab
from kdlab.analysis.geometry import feature_geometry, soft_label_stats
from kdlab.config import ConfigError, StageConfig
from kdlab.data import (
    ArrayDataset,
    DeviceLoader,
    augment_for,
    build_augment,
    load_dataset,
)
from kdlab.distillers import Distillation, DistillContext
from kdlab.distillers.composite import distill_views
from kdlab.engine.checkpoint import (
    CheckpointError,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    read_card,
)
from kdlab.engine.group import Member, SharedForward, StudentGroup
from kdlab.engine.stacked_group import StackedGroup
from kdlab.engine.metrics import summarize
from kdlab.engine.owner import OWNER, me
from kdlab.engine.runtime import Runtime, resolve_runtime, seed_everything
from kdlab.engine.trainer import DivergedError, Interrupted, StageInfo, Trainer
from kdlab.experiment.identity import (
    IDENTITY_VERSION,
    identity_tree,
    legacy_stage_hash,
    run_identity,
)
from kdlab.experiment.schema import ExperimentConfig, ObjectiveConfig, to_yaml
from kdlab.models import build_model, probe
from kdlab.models.checkpoint import load_weights
from kdlab.models.stacked import stack_refusal
from kdlab.objectives import TeacherObjective

SUMMARY = "summary.json"


def same_run(summary: dict, cfg: ExperimentConfig, stage: str) -> bool:
    """Whether a stage folder's summary is a run of ``cfg`` at ``stage``, whatever identity version wrote it."""
    if summary.get("stage") != stage:
        return False
    if summary.get("identity_version") == IDENTITY_VERSION:
        return summary.get("identity") == run_identity(cfg, stage)
    if isinstance(summary.get("config"), dict):  # an earlier identity tree: today's rule applied to it
        return run_identity(summary["config"], stage) == run_identity(cfg, stage)
    return summary.get("config_hash") == legacy_stage_hash(cfg)


def default_run_dir(cfg: ExperimentConfig, stage: str, suffix: str = "") -> Path:
    """``out/<name>-<identity[:8]><suffix>``, or the folder an earlier version named for the same config."""
    new = Path(cfg.out) / f"{cfg.name}-{run_identity(cfg, stage)[:8]}{suffix}"
    old = Path(cfg.out) / f"{cfg.name}-{legacy_stage_hash(cfg)[:8]}{suffix}"
    return old if old.exists() and not new.exists() else new


def _identity_fields(cfg: ExperimentConfig, stage: str) -> dict:
    return {"identity": run_identity(cfg, stage), "identity_version": IDENTITY_VERSION,
            "config": identity_tree(cfg, stage)}


# ------------------------------------------------------------------------------------------- data
class DataBundle:
    """Both splits of a dataset, loaded once and shared by the stages of a pipeline.

    In-memory datasets (everything up to Tiny-ImageNet) live on the training device as uint8 tensors;
    ``data.streaming`` folders (ImageNet size) are decoded by worker processes each epoch and augmented
    on the device by the same batched augmentations.
    """

    def __init__(self, cfg: ExperimentConfig):
        d = cfg.data
        if d.streaming:
            from kdlab.data.streaming import EVAL_CROP_FRACTION, StreamingImageFolder

            root = Path(d.root)
            self.train = StreamingImageFolder(root, "train", image_size=d.image_size)
            test_split = "val" if (root / "val").is_dir() else "test"
            # evaluation as the field does it: shorter side to image_size / 0.875 (256 for 224), centre crop
            self.test = StreamingImageFolder(root, test_split, image_size=d.image_size,
                                             resize=round(d.image_size / EVAL_CROP_FRACTION),
                                             classes=self.train.classes)
        else:
            self.train, self.test = load_dataset(d.name, d.root, split_seed=d.split_seed, subset=d.subset,
                                                 test_subset=d.test_subset, download=d.download)
        if d.batch_size > len(self.train):
            raise ConfigError(
                f"data.batch_size={d.batch_size} is larger than the training set ({len(self.train)} images); "
                f"use data.batch_size<={len(self.train)}"
            )

    def loaders(self, cfg: ExperimentConfig, rt: Runtime, views: int):
        d, ds = cfg.data, self.train
        kw = {"channels_last": rt.channels_last}
        if d.crop_padding is not None:
            kw["crop_padding"] = d.crop_padding
        shard = dict(rank=rt.dist.rank, world_size=rt.dist.world)
        if d.streaming:
            from kdlab.data.streaming import StreamingLoader

            size = ds.image_shape[1:]
            make = lambda policy: build_augment(policy, mean=ds.mean, std=ds.std, image_size=size, **kw)  # noqa: E731
            augment = make(d.augment if d.augment is not None else ["rrc", "flip"])
            view_augment = make(d.view_augment) if d.view_augment is not None else None
            common = dict(device=rt.device, channels_last=rt.channels_last, num_workers=d.workers, seed=cfg.seed)
            train = StreamingLoader(ds, batch_size=d.batch_size, augment=augment, views=views,
                                    view_augment=view_augment, shuffle=True, drop_last=True, **shard, **common)
            test = StreamingLoader(self.test, batch_size=d.eval_batch_size, augment=None, shuffle=False,
                                   drop_last=False, **common)
            return train, test
        augment = augment_for(ds, d.augment, **kw)
        view_augment = augment_for(ds, d.view_augment, **kw) if d.view_augment is not None else None
        train = DeviceLoader(ds, batch_size=d.batch_size, device=rt.device, augment=augment, views=views,
                             view_augment=view_augment, shuffle=True, drop_last=True, seed=cfg.seed,
                             channels_last=rt.channels_last, **shard)
        test = DeviceLoader(self.test, batch_size=d.eval_batch_size, device=rt.device, augment=None, views=1,
                            shuffle=False, drop_last=False, seed=cfg.seed, channels_last=rt.channels_last)
        return train, test


# ----------------------------------------------------------------------------------------- stages
def run_teacher(cfg: ExperimentConfig, run_dir: Path, data: DataBundle | None = None) -> dict:
    """Train (or resume, or return the finished) teacher of ``cfg`` in ``run_dir``."""
    return _run_stage("teacher", cfg, Path(run_dir), data, teacher_checkpoint=None)


def run_student(cfg: ExperimentConfig, run_dir: Path, teacher_checkpoint: Path | None = None,
                data: DataBundle | None = None) -> dict:
    """Distil ``cfg.student`` from a teacher checkpoint (default ``cfg.teacher.checkpoint``).

    With ``distill.methods=[]`` the student trains alone with cross-entropy (the baseline) and no
    teacher is needed.
    """
    return _run_stage("student", cfg, Path(run_dir), data, teacher_checkpoint=teacher_checkpoint)


def run_pipeline(cfg: ExperimentConfig, run_dir: Path, data: DataBundle | None = None) -> dict:
    """Teacher then student, in ``run_dir/teacher`` and ``run_dir/student``."""
    run_dir = Path(run_dir)
    data = data or DataBundle(cfg)
    if cfg.teacher.checkpoint:
        teacher = {"status": "done", "checkpoint": cfg.teacher.checkpoint, "metrics": {}}
    else:
        teacher = _reused_teacher(cfg, run_dir / "teacher") or run_teacher(cfg, run_dir / "teacher", data)
        if teacher["status"] != "done":
            return {"status": teacher["status"], "error": teacher.get("error"), "teacher": teacher, "student": None}
    student = run_student(cfg, run_dir / "student", Path(teacher["checkpoint"]), data)
    return {"status": student["status"], "error": student.get("error"), "teacher": teacher, "student": student}


def _reused_teacher(cfg: ExperimentConfig, own_dir: Path) -> dict | None:
    """A finished teacher of ``cfg``'s identity trained by another command (the demo, train-teacher, another
    pipeline), when ``own_dir`` holds no finished one."""
    if (read_summary(own_dir) or {}).get("status") == "done":
        return None
    found = find_teacher(cfg, Path(cfg.out))
    if found is not None:
        print(f"note: reusing the finished teacher {found['run_dir']} (same data, teacher, objective and seed)",
              file=sys.stderr)
    return found


def find_teacher(cfg: ExperimentConfig, out: Path) -> dict | None:
    """The summary of a finished teacher run with ``cfg``'s teacher identity in a run folder one or two levels
    below ``out`` (where train-teacher, pipeline and demo put theirs), or None."""
    want = run_identity(cfg, "teacher")
    for path in sorted([*out.glob(f"*/{SUMMARY}"), *out.glob(f"*/*/{SUMMARY}")]):
        summary = read_summary(path.parent)
        if not summary or summary.get("status") != "done" or summary.get("stage") != "teacher":
            continue
        checkpoint = path.parent / "checkpoints" / "last.pt"
        if _teacher_identity(summary, path.parent) == want and checkpoint.exists():
            return dict(summary, run_dir=str(path.parent), checkpoint=str(checkpoint))
    return None


def _teacher_identity(summary: dict, run_dir: Path) -> str | None:
    """A teacher folder's identity: recorded in its summary, or computed from its config.yaml when an earlier
    version wrote it."""
    if summary.get("identity_version") == IDENTITY_VERSION:
        return summary["identity"]
    if isinstance(summary.get("config"), dict):
        return run_identity(summary["config"], "teacher")
    try:
        previous = yaml.safe_load((run_dir / "config.yaml").read_text())
        return run_identity(previous, "teacher") if isinstance(previous, dict) else None
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def read_summary(run_dir: Path) -> dict | None:
    p = Path(run_dir) / SUMMARY
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def _run_stage(stage: str, cfg: ExperimentConfig, run_dir: Path, data: DataBundle | None,
               teacher_checkpoint: Path | None) -> dict:
    done = _finished_summary(stage, cfg, run_dir)
    if done is not None:
        return done
    run = _StageRun.build(stage, cfg, run_dir, data, teacher_checkpoint)
    try:
        metrics = run.trainer.fit()
    except (DivergedError, Interrupted) as exc:
        return run.stopped(exc)
    return run.finished(metrics)


def _finished_summary(stage: str, cfg: ExperimentConfig, run_dir: Path) -> dict | None:
    """The summary of a finished run of ``cfg`` in ``run_dir`` (brought to today's identity), or None."""
    done = read_summary(run_dir)
    if done is None or done.get("status") != "done":
        return None
    if not same_run(done, cfg, stage):
        raise ConfigError(
            f"{run_dir} already holds a finished {done.get('stage')} run of a different config; pass a new "
            "out=... or name=... (or --run-dir), or delete the folder to start over"
        )
    if done.get("identity_version") != IDENTITY_VERSION:  # an earlier version's: record today's identity
        done.update(_identity_fields(cfg, stage))
        atomic_write_json(run_dir / SUMMARY, done)
    return done


@dataclass
class _StageRun:
    """A stage built and resumed, ready to train: its trainer, and the summary its end will write."""

    stage: str
    cfg: ExperimentConfig
    run_dir: Path
    rt: Runtime
    trainer: Trainer
    num_classes: int
    summary: dict
    started: float

    @classmethod
    def build(cls, stage: str, cfg: ExperimentConfig, run_dir: Path, data: DataBundle | None,
              teacher_checkpoint: Path | None, loaders=None) -> _StageRun:
        """Seed, build the network and its method, the loaders (unless given) and the trainer, then resume."""
        started = time.time()
        rt = resolve_runtime(cfg.runtime)
        if rt.dist.is_main:
            _prepare_run_dir(run_dir, cfg, stage)
        seed_everything(cfg.seed)
        data = data or DataBundle(cfg)
        spec: StageConfig = cfg.teacher if stage == "teacher" else cfg.student
        in_shape = data.train.image_shape
        num_classes = data.train.num_classes
        net = build_model(spec.arch, num_classes=num_classes, in_channels=in_shape[0])
        if spec.checkpoint:  # start from given weights (a resumed run then restores its own checkpoint)
            load_weights(net, _weights_of(Path(spec.checkpoint)), model_name=spec.arch)
        if stage == "teacher":
            method, views = _teacher_method(cfg.objective, cfg, net, data.train)
        else:
            method, views = _student_method(cfg, net, data.train, teacher_checkpoint, rt)
        method = rt.prepare_model(method)
        train_loader, test_loader = loaders or data.loaders(cfg, rt, views)
        info = StageInfo(stage, spec.arch, num_classes, in_shape, data.train.name, cfg.model_dump(mode="json"))
        trainer = Trainer(method, train_loader, test_loader, epochs=spec.epochs, optim=spec.optim, runtime=rt,
                          run_dir=run_dir, info=info, tensorboard=cfg.runtime.tensorboard)
        warning = trainer.resume()
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        summary = {"status": "running", "error": None, "stage": stage, **_identity_fields(cfg, stage),
                   "arch": spec.arch, "run_dir": str(run_dir), "checkpoint": str(run_dir / "checkpoints" / "last.pt"),
                   "teacher_checkpoint": str(teacher_checkpoint) if teacher_checkpoint else None}
        return cls(stage, cfg, run_dir, rt, trainer, num_classes, summary, started)

    @property
    def method(self):
        return self.trainer.method

    def finished(self, metrics: dict) -> dict:
        """Training ended: add the final geometry, write the summary and metrics.csv."""
        metrics.update(final_geometry(self.method.model, self.trainer.test_loader, self.num_classes,
                                      self.cfg.distill.kd.T, self.rt))
        self.summary.update(status="done", metrics=metrics)
        return self._write()

    def stopped(self, exc: BaseException, trace: str = "") -> dict:
        """Training stopped early: a signal (re-raised after the summary is written) or a failure."""
        interrupted = isinstance(exc, Interrupted)
        last = self.run_dir / "checkpoints" / "last.pt"
        error = str(exc) if isinstance(exc, (DivergedError, Interrupted)) else f"{type(exc).__name__}: {exc}"
        # a run stopped before its first epoch ended has no checkpoint to point to
        self.summary.update(status="interrupted" if interrupted else "failed", error=error,
                            metrics=_partial(self.trainer), checkpoint=str(last) if last.exists() else None)
        if trace:
            self.summary["traceback"] = trace
        if interrupted:
            if self.rt.dist.is_main:
                atomic_write_json(self.run_dir / SUMMARY, self.summary)
            raise exc
        return self._write()

    def _write(self) -> dict:
        self.summary["wall_time_s"] = time.time() - self.started
        if self.rt.dist.is_main:
            _write_csv(self.run_dir / "metrics.csv", self.trainer.history)
            atomic_write_json(self.run_dir / SUMMARY, self.summary)
        return self.summary


# ----------------------------------------------------------------------------------- student groups
def group_key(cfg: ExperimentConfig, teacher_checkpoint: Path | str | None = None) -> str:
    """Runs with equal keys read the same batches and distil the same frozen teacher, so they may train as one
    :func:`run_student_group`: the seed, the data section, the number of views per image, the runtime, and the
    teacher (its checkpoint, else its run identity). Student-alone runs (no teacher) and compiled runs
    (``runtime.compile``) have no key."""
    if not cfg.distill.methods or cfg.runtime.compile:  # a compiled step would trace the shared teacher's memo
        return ""
    teacher = str(teacher_checkpoint or cfg.teacher.checkpoint or "") or run_identity(cfg, "teacher")
    parts = {"seed": cfg.seed, "data": cfg.data.model_dump(mode="json"), "views": distill_views(cfg.distill),
             "runtime": cfg.runtime.model_dump(mode="json"), "teacher": teacher, "teacher_arch": cfg.teacher.arch}
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def run_student_group(cfgs: list[ExperimentConfig], run_dirs: list[Path], teacher_checkpoint: Path | None = None,
                      data: DataBundle | None = None) -> list[dict]:
    """Train the student runs ``cfgs`` (one folder each) as one program and return their summaries in order.

    Each batch is read and augmented once and the teacher forwards once per batch; each student has its own
    network, heads, memories, optimizer, schedule, checkpoints and folder, and ends exactly as its separate
    :func:`run_student` would (same initialisation, batches, teacher outputs and random draws). Finished runs are
    returned as they are; a run that fails (while it is built, in a step, at its end) fails alone. A signal stops
    every member at its last checkpoint and raises :class:`Interrupted` after each has written its summary; the
    exception's ``summaries`` holds those of the members that had ended (done or failed), None for the others.
    """
    if len(cfgs) != len(run_dirs):
        raise ValueError("run_student_group needs one run folder per config")
    keys = {group_key(c, teacher_checkpoint) for c in cfgs}
    if len(keys) > 1 or "" in keys:
        raise ConfigError("a student group needs runs that distil the same teacher with the same seed, data, views "
                          "and runtime (kdlab.experiment.stages.group_key); run the others separately")

    def new_group(loader, first: _StageRun) -> StudentGroup:
        return StudentGroup(loader, SharedForward(first.method.teacher))

    def joined(group: StudentGroup, run: _StageRun) -> None:
        run.method.share_teacher(group.shared)  # the teacher copy this run built (same weights) is dropped

    return _run_group("student", cfgs, run_dirs, teacher_checkpoint, data, new_group, joined)


def _run_group(stage: str, cfgs: list[ExperimentConfig], run_dirs: list[Path], teacher_checkpoint: Path | None,
               data: DataBundle | None, new_group, joined=lambda group, run: None) -> list[dict]:
    """Build the unfinished runs of ``cfgs`` one after another on the first one's loaders, add each to the group
    ``new_group(loader, first_run)`` right after its build (so each member keeps the random state its separate
    run has), train them together and write each member's summary (see :func:`run_student_group`)."""
    summaries: list[dict | None] = [_member_step(lambda c=c, d=d: _finished_summary(stage, c, Path(d)))
                                    for c, d in zip(cfgs, run_dirs)]
    todo = [i for i, s in enumerate(summaries) if s is None]
    if not todo:
        return summaries
    data = data or DataBundle(cfgs[todo[0]])
    runs: dict[int, _StageRun] = {}
    group = None
    loaders = None  # the first member's (train, test) loaders, read by every member
    for i in todo:
        try:
            run = _StageRun.build(stage, cfgs[i], Path(run_dirs[i]), data, teacher_checkpoint, loaders)
        except Exception as exc:  # noqa: BLE001 - this member fails (e.g. a pair its distiller refuses); the rest go on
            summaries[i] = _failed(exc)
            continue
        if group is None:
            loaders = (run.trainer.train_loader, run.trainer.test_loader)
            group = new_group(loaders[0], run)
        group.add(run.trainer)  # now, before the next build draws: this run's random state is its own
        joined(group, run)
        runs[i] = run
    if group is None:
        return summaries
    try:
        members = dict(zip(runs, group.fit()))
    except Interrupted as exc:
        members = dict(zip(runs, group.members))
        for i, run in runs.items():
            summaries[i] = _close_member(run, members[i], len(runs), interrupted=exc)
        exc.summaries = summaries  # the members that ended (done or failed) are recorded by the caller
        raise
    for i, run in runs.items():
        summaries[i] = _close_member(run, members[i], len(runs))
    return summaries


# ----------------------------------------------------------------------------------- teacher groups
def teacher_group_key(cfg: ExperimentConfig) -> str:
    """Teachers with equal keys may train as one stacked network (:func:`run_teacher_group`): the same seed (so
    the same initial weights and batches), data section, views per image, runtime and teacher section (network,
    epochs, optimizer, starting weights); they may differ in everything the objective section sets. Networks
    that stacking cannot compute exactly (:func:`kdlab.models.stacked.stack_refusal`) and compiled runs have
    no key."""
    if cfg.runtime.compile or stack_refusal_for(cfg.teacher.arch):
        return ""
    parts = {"seed": cfg.seed, "data": cfg.data.model_dump(mode="json"), "views": cfg.teacher_views(),
             "runtime": cfg.runtime.model_dump(mode="json"), "teacher": cfg.teacher.model_dump(mode="json")}
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=None)
def stack_refusal_for(arch: str) -> str | None:
    """Why teachers of ``arch`` cannot be stacked (None when they can)."""
    return stack_refusal(build_model(arch, num_classes=10), "grouped")


def run_teacher_group(cfgs: list[ExperimentConfig], run_dirs: list[Path], data: DataBundle | None = None) -> list[dict]:
    """Train the teacher runs ``cfgs`` (one folder each, equal :func:`teacher_group_key`) as one stacked network
    (:class:`kdlab.engine.stacked_group.StackedGroup`) and return their summaries in order.

    Each batch is read and augmented once and all networks forward and backward as one program; each teacher has
    its own objective (heads, class cache, λ schedule), checkpoints and folder, and ends as its separate
    :func:`run_teacher` would, up to floating-point summation order (tests/unit/test_stacked_group.py gives the
    tolerance). Runs that resume from different epochs cannot share steps: they are trained one after another.
    Failures and signals are handled as in :func:`run_student_group`.
    """
    if len(cfgs) != len(run_dirs):
        raise ValueError("run_teacher_group needs one run folder per config")
    keys = {teacher_group_key(c) for c in cfgs}
    if len(keys) > 1 or "" in keys:
        raise ConfigError("a teacher group needs teachers with the same seed, data, views, runtime and teacher "
                          "section (kdlab.experiment.stages.teacher_group_key); run the others separately")
    return _run_group("teacher", cfgs, run_dirs, None, data, lambda loader, first: _StackedByStart(loader))


class _StackedByStart:
    """A teacher group as ``_run_group`` drives it: members resumed at the same epoch train as one
    :class:`StackedGroup` (which cannot step copies that are at different epochs); a member alone at its start
    epoch trains as its separate run would."""

    def __init__(self, loader):
        self.loader = loader
        self.members: list[Member] = []

    def add(self, trainer: Trainer) -> Member:
        member = Member.of(trainer)  # with the random state its separate run has now
        self.members.append(member)
        return member

    def fit(self) -> list[Member]:
        by_start: dict[int, list[int]] = {}
        for i, m in enumerate(self.members):
            by_start.setdefault(m.trainer.start_epoch, []).append(i)
        for start in sorted(by_start):
            batch = by_start[start]
            group = StackedGroup(self.loader)  # a member alone trains through its own trainer
            for i in batch:
                self.members[i].random.install(self.members[i].trainer.rt.device)
                self.members[i] = group.add(self.members[i].trainer)
                self.members[i].shared_with = len(batch)
            group.fit()
        return self.members


def _close_member(run: _StageRun, member: Member, size: int, interrupted: Interrupted | None = None) -> dict | None:
    """Write a group member's summary: done, failed, or (when the group was interrupted before the member's
    last epoch) interrupted, returning None for it."""
    trainer = member.trainer
    if not member.alive:
        return run.stopped(member.error, member.traceback)
    if interrupted is not None and (not trainer.history or trainer.history[-1]["epoch"] < trainer.epochs):
        try:
            run.stopped(interrupted)
        except Interrupted:
            return None
    run.summary["group_size"] = member.shared_with or size
    metrics = member.metrics or trainer.summary()
    try:
        return run.finished(metrics)
    except Exception as exc:  # noqa: BLE001 - e.g. the final geometry failed: this member only
        return run.stopped(exc, traceback.format_exc(limit=-3))


def _member_step(fn):
    """``fn()``, or a failed summary when it raises (a member's problem must not stop the group)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return _failed(exc)


def _failed(exc: BaseException) -> dict:
    """The summary of a run that failed before it trained (nothing is written to its folder)."""
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=-3), "metrics": {}}


@torch.no_grad()
def final_geometry(model: torch.nn.Module, loader, num_classes: int, T: float, rt: Runtime,
                   max_samples: int = 5000) -> dict:
    """Feature geometry and soft labels of the trained network on the test split (docs/ANALYSIS.md).

    ``intra_inter_ratio``: mean same-class over mean different-class pairwise distance of the pooled
    feature; ``soft_label_entropy`` and ``off_true_mass``: of softmax(z/T) at the KD temperature.
    """
    model.eval()
    feats, logits, labels, seen = [], [], [], 0
    for batch in loader:
        with rt.autocast():
            out = model(batch.views[0])
        feats.append(out.pooled.float().cpu())
        logits.append(out.logits.float().cpu())
        labels.append(batch.labels.cpu())
        seen += batch.labels.shape[0]
        if seen >= max_samples:
            break
    f, z, y = torch.cat(feats)[:max_samples], torch.cat(logits)[:max_samples], torch.cat(labels)[:max_samples]
    geo = feature_geometry(f, y, num_classes)
    soft = soft_label_stats(z, y, T)
    return {"intra_inter_ratio": geo["ratio_pairwise"], "intra_inter_ratio_centroid": geo["ratio_centroid"],
            "soft_label_entropy": soft["entropy"], "off_true_mass": soft["off_true_mass"]}


def _partial(trainer: Trainer) -> dict:
    return summarize(trainer.history) if trainer.history else {}


def _teacher_method(obj: ObjectiveConfig, cfg: ExperimentConfig, net, train: ArrayDataset):
    views = cfg.teacher_views()
    p = probe(net, train.image_shape)
    return TeacherObjective(net, obj, views=views, num_classes=train.num_classes, feature_dim=p.pooled_dim,
                            num_train=len(train), epochs=cfg.teacher.epochs), views


def _student_method(cfg: ExperimentConfig, net, train: ArrayDataset, teacher_checkpoint: Path | None, rt: Runtime):
    if not cfg.distill.methods:  # the student alone: plain cross-entropy, no teacher
        return _teacher_method(ObjectiveConfig(kind="ce"), cfg.model_copy(update={"objective": ObjectiveConfig()}),
                               net, train)
    path = teacher_checkpoint or (Path(cfg.teacher.checkpoint) if cfg.teacher.checkpoint else None)
    if path is None:
        raise ConfigError(
            f"distill.methods={cfg.distill.methods} needs a teacher: pass teacher.checkpoint=PATH "
            "(a kdlab run's checkpoints/last.pt or a RepDistiller ckpt) with teacher.arch=NAME"
        )
    teacher = load_teacher(Path(path), cfg.teacher.arch, train)
    ctx = DistillContext(
        student_probe=probe(net, train.image_shape), teacher_probe=probe(teacher, train.image_shape),
        num_classes=train.num_classes, num_train=len(train), input_shape=train.image_shape,
        epochs=cfg.student.epochs, student_arch=cfg.student.arch,
    )
    method = Distillation(net, teacher, cfg.distill, ctx)
    return method, method.views


def _weights_of(path: Path) -> dict:
    """The checkpoint dict of a kdlab run, a kdlab export card (.json) or a RepDistiller-style file."""
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist")
    if path.suffix == ".json":
        meta, weights = read_card(path)
        return {"model": load_checkpoint(weights), "arch": meta["arch"], "num_classes": meta["num_classes"]}
    return load_checkpoint(path)


def load_teacher(path: Path, arch: str, train: ArrayDataset) -> torch.nn.Module:
    """A frozen teacher from a kdlab run checkpoint, a kdlab export card (.json) or a RepDistiller-style file."""
    if not path.exists():
        raise ConfigError(f"teacher checkpoint {path} does not exist (train one with `kdlab train-teacher`)")
    ckpt = _weights_of(path)
    recorded = ckpt.get("arch")
    if recorded is not None and recorded != arch:
        raise ConfigError(f"teacher checkpoint {path} holds a {recorded}, but teacher.arch={arch}; "
                          f"set teacher.arch={recorded}")
    if ckpt.get("num_classes") not in (None, train.num_classes):
        raise ConfigError(f"teacher checkpoint {path} predicts {ckpt['num_classes']} classes but the dataset "
                          f"{train.name} has {train.num_classes}")
    teacher = build_model(arch, num_classes=train.num_classes, in_channels=train.image_shape[0])
    load_weights(teacher, ckpt, model_name=arch)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


# --------------------------------------------------------------------------------------- run dirs
def _prepare_run_dir(run_dir: Path, cfg: ExperimentConfig, stage: str) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run folder {run_dir} ({exc.strerror}); choose another with out=PATH") from None
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"run folder {run_dir} is not writable; choose another with out=PATH")
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists() and (run_dir / "checkpoints").exists():
        previous = yaml.safe_load(cfg_path.read_text())
        if not isinstance(previous, dict) or identity_tree(previous, stage) != identity_tree(cfg, stage):
            raise ConfigError(
                f"{run_dir} already holds a {stage} run of a different config; pass a new out=... or name=..., "
                "or delete the folder to start over"
            )
    atomic_write_text(cfg_path, to_yaml(cfg))
    atomic_write_json(run_dir / "env.json", environment())
    atomic_write_json(run_dir / OWNER, {**me(), "time": time.time()})  # who runs it: `kdlab runs` checks it lives


def environment() -> dict:
    info = {
        "kdlab": kdlab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git": _git_hash(),
        "argv": sys.argv,
    }
    return info


def _git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _write_csv(path: Path, history: list[dict]) -> None:
    if not history:
        return
    keys: list[str] = []
    for r in history:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


__all__ = ["DataBundle", "run_teacher", "run_student", "run_student_group", "group_key", "run_teacher_group", "teacher_group_key", "run_pipeline", "read_summary", "same_run", "default_run_dir", "find_teacher",
           "load_teacher", "CheckpointError"]
