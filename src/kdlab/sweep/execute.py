"""Expand a resolved grid into runs and execute them: teacher reuse, claims, local and submitit executors.

Every distinct config of the grid (the base, shared by all ablations, and each variant) runs once per seed.
A run is the pipeline's student stage; the teacher it needs is a separate task keyed by the teacher-relevant
config parts (:func:`~kdlab.sweep.store.teacher_key`), trained once and reused by every student that
needs it. A student task starts when its teacher's record says done; a failed teacher fails its students
(recorded, with the teacher's error) without stopping anything else.

Executors run one task per process:

* ``local``: a pool of ``jobs`` worker processes (``multiprocessing``, ``spawn`` context; default: one per
  GPU when CUDA is present, else one per core), each running one run at a time with ``cores // jobs`` torch
  threads; a worker that dies is replaced and its run recorded as failed;
* ``submitit``: ``submitit.AutoExecutor`` (SLURM when available, else submitit's local executor; force one
  with ``executor_options={"cluster": "local" | "slurm" | "debug"}``, pass SLURM settings such as
  ``slurm_partition``, ``gpus_per_node``, ``cpus_per_task``, ``timeout_min`` the same way).

The orchestrator claims a run folder before it launches its worker, and the worker joins that claim (see
:mod:`kdlab.sweep.store`), so a second ``kdlab ablate`` on the same folder waits for runs another process
holds instead of running them twice.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any, Callable

from kdlab.engine.progress import clock, eta
from kdlab.experiment.identity import run_identity
from kdlab.experiment.schema import ExperimentConfig
from kdlab.experiment.stages import group_key, teacher_group_key
from kdlab.sweep.grid import SweepError, SweepGrid
from kdlab.sweep.groups import auto_group_size, form_groups
from kdlab.sweep.store import Store, run_key, teacher_config, teacher_key

__all__ = ["Task", "RunSpec", "expand", "run_task", "execute", "ExecutionSummary", "default_jobs", "make_executor"]

STAGES_MODULE = "kdlab.experiment.stages"
#: the group size cap when the runs' machines are not this one (submitit on SLURM) and --group-size is not given
DEFAULT_REMOTE_GROUP = 4


@dataclass
class Task:
    kind: str  # "teacher" | "student"
    key: str
    run_dir: str
    config: dict
    store_root: str
    seed: int
    stages: str = STAGES_MODULE
    threads: int | None = None
    teacher_key: str | None = None
    teacher_dir: str | None = None
    label: str = ""
    claim_token: str | None = None  # set by the orchestrator, which claims before it launches
    group_key: str = ""  # runs of one kind with equal non-empty keys may train as one program (sweep.groups)
    members: list[Task] = field(default_factory=list)  # kind "group": the tasks it trains (all students or all teachers)


@dataclass
class RunSpec:
    """One (config, seed) of the grid: its student key and the teacher it needs."""

    key: str
    seed: int
    config: ExperimentConfig
    teacher_key: str | None


def _needs_teacher(cfg: ExperimentConfig) -> bool:
    return bool(cfg.distill.methods) and not cfg.teacher.checkpoint


def expand(grid: SweepGrid) -> tuple[dict[str, dict[int, RunSpec]], dict[str, ExperimentConfig]]:
    """Runs per distinct config (by the config's seedless identity) and teacher configs by teacher key.

    Returns ``(runs, teachers)``: ``runs[config_id][seed] -> RunSpec``; ``config_id`` is the run key of the
    config with seed 0 (stable, used in grid.json to tie variants to runs).
    """
    runs: dict[str, dict[int, RunSpec]] = {}
    teachers: dict[str, ExperimentConfig] = {}
    for cfg in grid.configs():
        cid = config_id(cfg)
        per_seed = {}
        for seed in grid.seeds:
            c = cfg.model_copy(update={"seed": int(seed), "name": "ablation-run"})
            tkey = None
            if _needs_teacher(c):
                tkey = teacher_key(c)
                teachers.setdefault(tkey, teacher_config(c))
            per_seed[int(seed)] = RunSpec(run_key(c), int(seed), c, tkey)
        runs[cid] = per_seed
    return runs, teachers


def config_id(cfg: ExperimentConfig) -> str:
    return run_identity(cfg, "variant")


# ------------------------------------------------------------------------------------------ worker
def _record(task: Task, summary: dict, started: float, teacher_rec: dict | None) -> dict:
    stage = task.kind
    last = Path(task.run_dir) / "checkpoints" / "last.pt"
    metrics = {f"{stage}.{k}": v for k, v in (summary.get("metrics") or {}).items()}
    if teacher_rec is not None:
        metrics.update({k: v for k, v in (teacher_rec.get("metrics") or {}).items() if k.startswith("teacher.")})
    return {
        "key": task.key,
        "stage": stage,
        "status": summary.get("status", "failed"),
        "error": summary.get("error"),
        "failed_stage": stage if summary.get("status") != "done" else None,
        "seed": task.seed,
        "teacher_key": task.teacher_key,
        "metrics": metrics,
        "summary": summary,
        "checkpoint": str(last) if last.exists() else None,  # none when the run failed before its first epoch
        "config": task.config,
        "label": task.label,
        "started": started,
        "finished": time.time(),
        "duration_s": round(time.time() - started, 3),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def run_task(task: Task) -> str:
    """Run one task in this process (what every executor calls). Returns done | failed | busy | finished |
    interrupted. The record is written here, atomically; an interrupted run writes none (it resumes)."""
    if task.kind == "group":
        return run_group_task(task)
    store = Store(task.store_root)
    run_dir = Path(task.run_dir)
    if store.record(run_dir) is not None:
        return "finished"
    claim = store.adopt_claim(run_dir, task.claim_token) if task.claim_token else store.try_claim(run_dir)
    if claim is None:
        return "finished" if store.record(run_dir) is not None else "busy"
    started = time.time()
    try:
        if task.threads:
            import torch

            torch.set_num_threads(task.threads)
        cfg = ExperimentConfig.model_validate(task.config)
        if task.threads:
            cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"threads": task.threads, "progress": False})})
        teacher_rec = None
        try:
            stages = importlib.import_module(task.stages)
            if task.kind == "teacher":
                summary = stages.run_teacher(cfg, run_dir)
            else:
                ckpt = None
                if task.teacher_dir:
                    teacher_rec = store.record(Path(task.teacher_dir))
                    ckpt = Path(task.teacher_dir) / "checkpoints" / "last.pt"
                summary = stages.run_student(cfg, run_dir, ckpt)
        except (KeyboardInterrupt, SystemExit):
            return "interrupted"
        except Exception as exc:  # noqa: BLE001 - every failure becomes a record
            if type(exc).__name__ == "Interrupted":
                return "interrupted"
            tb = traceback.format_exc(limit=-3)
            summary = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": tb, "metrics": {}}
        if not isinstance(summary, dict):
            summary = {"status": "failed", "error": f"stage returned {type(summary).__name__}, not a summary dict", "metrics": {}}
        status = summary.get("status")
        if status == "interrupted":
            return "interrupted"
        if status not in ("done", "failed"):
            summary = dict(summary, status="failed", error=summary.get("error") or f"stage ended with status {status!r}")
        store.write_record(run_dir, _record(task, summary, started, teacher_rec))
        return summary["status"]
    finally:
        claim.release()


def run_group_task(task: Task) -> str:
    """Run a group's tasks as one program (``stages.run_student_group``, or ``stages.run_teacher_group`` for
    teachers), one record per member; a stages module without groups runs them one after another. Returns done
    (every member has a record), interrupted, or the first other status."""
    stages = importlib.import_module(task.stages)
    teachers = task.members[0].kind == "teacher"
    if not hasattr(stages, "run_teacher_group" if teachers else "run_student_group"):
        statuses = [run_task(member) for member in task.members]
        return "interrupted" if "interrupted" in statuses else "done"
    store = Store(task.store_root)
    held = []
    for member in task.members:
        if store.record(Path(member.run_dir)) is not None:
            continue
        claim = (store.adopt_claim(Path(member.run_dir), member.claim_token) if member.claim_token
                 else store.try_claim(Path(member.run_dir)))
        if claim is not None:
            held.append((member, claim))
    if not held:
        return "done"
    started = time.time()
    try:
        if task.threads:
            import torch

            torch.set_num_threads(task.threads)
        first = held[0][0]
        teacher_rec = store.record(Path(first.teacher_dir)) if first.teacher_dir else None
        ckpt = Path(first.teacher_dir) / "checkpoints" / "last.pt" if first.teacher_dir else None
        cfgs = []
        for member, _ in held:
            cfg = ExperimentConfig.model_validate(member.config)
            if task.threads:
                cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"threads": task.threads,
                                                                                       "progress": False})})
            cfgs.append(cfg)
        interrupted = False
        try:
            dirs = [Path(m.run_dir) for m, _ in held]
            summaries = (stages.run_teacher_group(cfgs, dirs) if teachers
                         else stages.run_student_group(cfgs, dirs, ckpt))
        except (KeyboardInterrupt, SystemExit):
            return "interrupted"
        except Exception as exc:  # noqa: BLE001 - a failure before the members train fails them all
            if type(exc).__name__ != "Interrupted":
                error = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc(limit=-3), "metrics": {}}
                summaries = [error] * len(held)
            else:  # the members that had ended (done, failed) are recorded; the others resume
                interrupted = True
                summaries = getattr(exc, "summaries", None) or [None] * len(held)
        for (member, _), summary in zip(held, summaries):
            if summary is None or (interrupted and summary.get("status") not in ("done", "failed")):
                continue
            if summary.get("status") not in ("done", "failed"):
                summary = dict(summary, status="failed",
                               error=summary.get("error") or f"stage ended with status {summary.get('status')!r}")
            store.write_record(Path(member.run_dir), _record(member, summary, started, teacher_rec))
        return "interrupted" if interrupted else "done"
    finally:
        for _, claim in held:
            claim.release()


# ---------------------------------------------------------------------------------------- executors
def default_jobs(executor: str) -> int:
    if executor != "local":
        return 64
    try:
        import torch

        if torch.cuda.is_available():
            return max(1, torch.cuda.device_count())
    except Exception:  # pragma: no cover
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores)


class _Handle:
    def __init__(self, task: Task, worker: "_Worker"):
        self.task, self.worker, self.status = task, worker, None


@contextlib.contextmanager
def _main_not_reimported():
    """Start spawn children without re-running the caller's ``__main__`` script.

    Workers only need kdlab modules, so a script that calls ``run_plan`` without an
    ``if __name__ == "__main__":`` guard must not be executed again in every worker.
    """
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    try:
        if main is not None:
            for k in saved:
                if k == "__file__":
                    delattr(main, k)
                else:
                    setattr(main, k, None)
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


class _Worker:
    def __init__(self, ctx, gpu: str | None = None):
        parent, child = ctx.Pipe()
        self.conn = parent
        self.gpu = gpu
        self.proc = ctx.Process(target=_worker_loop, args=(child, gpu), name="kdlab-ablate-worker", daemon=False)
        with _main_not_reimported():
            self.proc.start()
        child.close()
        self.handle: _Handle | None = None
        self.count = 0


def _worker_loop(conn, gpu: str | None = None) -> None:  # pragma: no cover - runs in the child
    """A pool worker: run one task at a time until told to stop (None) or the parent goes away."""
    import signal

    if gpu is not None:  # before torch initialises CUDA: this worker sees one GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator decides; SIGTERM stops a run cleanly
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            status = run_task(task)
        except BaseException as exc:  # noqa: BLE001 - report, keep the worker alive
            status = f"worker error: {type(exc).__name__}: {exc}"
        try:
            conn.send(status)
        except (BrokenPipeError, OSError):
            return


def _visible_gpus() -> list[str]:
    """CUDA device ids as CUDA_VISIBLE_DEVICES would name them (respecting an existing mask)."""
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return []
    mask = [m.strip() for m in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if m.strip()]
    return (mask or [str(i) for i in range(n)])[:n]


class LocalExecutor:
    """A pool of ``jobs`` spawned worker processes, each running one run at a time.

    Workers are reused, so the interpreter, torch and data-library imports (several seconds) are paid once
    per worker rather than once per run; a worker that dies is replaced and its run recorded as failed;
    workers are recycled after ``recycle_after`` runs.
    """

    name = "local"
    poll_s = 0.5

    def __init__(self, jobs: int, recycle_after: int = 25):
        self.jobs = jobs
        self.recycle_after = recycle_after
        self.ctx = mp.get_context("spawn")
        self.workers: list[_Worker] = []
        self.gpus = _visible_gpus()  # with several GPUs, each worker gets its own (round robin)

    def submit(self, task: Task) -> _Handle:
        idle = [w for w in self.workers if w.handle is None and w.proc.is_alive()]
        for w in [w for w in self.workers if w.handle is None and w not in idle]:
            self._retire(w)
        if idle:
            w = idle[0]
        else:
            gpu = None
            if len(self.gpus) > 1:
                used = [x.gpu for x in self.workers]
                gpu = min(self.gpus, key=lambda g: (used.count(g), self.gpus.index(g)))
            w = _Worker(self.ctx, gpu)
            self.workers.append(w)
        h = _Handle(task, w)
        w.handle = h
        w.count += 1
        w.conn.send(task)
        return h

    def wait(self, handles: list, timeout: float) -> list:
        busy = [h.worker for h in handles if h.status is None]
        if busy:
            mp_wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=timeout)
        for w in busy:
            h = w.handle
            if h is None:
                continue
            if w.conn.poll():
                try:
                    h.status = w.conn.recv()
                except (EOFError, OSError):
                    h.status = None
            if h.status is None and not w.proc.is_alive():
                w.proc.join()
                code = w.proc.exitcode
                h.status = (f"worker process died (exit code {code})" if code is not None and code >= 0
                            else f"worker process killed by signal {-(code or 0)}")
                self.workers.remove(w)
            if h.status is not None:
                w.handle = None
                if w in self.workers and w.count >= self.recycle_after:
                    self._retire(w)
        return [h for h in handles if h.status is not None]

    def result(self, h: _Handle) -> str:
        status = h.status
        if status in ("done", "failed"):
            return "ok"
        return str(status)

    def _retire(self, w: _Worker) -> None:
        try:
            w.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        w.proc.join(10)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join()
        if w in self.workers:
            self.workers.remove(w)

    def stop(self, handles: list) -> None:
        """Interrupt: SIGTERM the busy workers (the trainer checkpoints and stops), then close the pool."""
        for h in handles:
            if h.worker.proc.is_alive():
                h.worker.proc.terminate()
        deadline = time.time() + 30
        for h in handles:
            h.worker.proc.join(max(0.0, deadline - time.time()))
            if h.worker.proc.is_alive():
                h.worker.proc.kill()
                h.worker.proc.join()
        self.close()

    def close(self) -> None:
        for w in list(self.workers):
            if w.handle is None:
                self._retire(w)
            else:
                w.proc.kill()
                w.proc.join()
                self.workers.remove(w)


class SubmititExecutor:
    """Tasks as submitit jobs (SLURM, or submitit's local executor)."""

    name = "submitit"

    def __init__(self, folder: Path, jobs: int, options: dict[str, Any] | None = None):
        try:
            import submitit
        except ImportError:
            raise SweepError("--executor submitit needs the submitit package: pip install submitit") from None
        opts = dict(options or {})
        cluster = opts.pop("cluster", None)
        self.poll_s = float(opts.pop("poll_s", 1.0))
        self.cancel_on_interrupt = bool(opts.pop("cancel_on_interrupt", cluster in ("local", "debug")))
        self.jobs = jobs
        if cluster == "local":
            self.ex = submitit.AutoExecutor(folder=str(folder), cluster="local")
        elif cluster == "debug":
            self.ex = submitit.AutoExecutor(folder=str(folder), cluster="debug")
        else:
            self.ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params = {"timeout_min": 24 * 60, "name": "kdlab-ablate"}
        params.update(opts)
        self.ex.update_parameters(**params)
        self.cluster = self.ex.cluster
        _export_pythonpath()

    def submit(self, task: Task):
        return self.ex.submit(run_task, task)

    def wait(self, handles: list, timeout: float) -> list:
        done = [h for h in handles if h.done()]
        if not done:
            time.sleep(min(timeout, self.poll_s))
            done = [h for h in handles if h.done()]
        return done

    def result(self, h) -> str:
        try:
            status = h.result()
        except Exception as exc:  # noqa: BLE001 - the job died outside run_task
            first = str(exc).strip().splitlines()
            return f"submitit job {h.job_id} failed ({first[-1] if first else type(exc).__name__})"
        return "ok" if status in ("done", "failed") else str(status)

    def close(self) -> None:
        pass

    def stop(self, handles: list) -> None:
        if self.cancel_on_interrupt:
            for h in handles:
                try:
                    h.cancel(check=False)
                except Exception:  # noqa: BLE001
                    pass


def _slurm_available() -> bool:
    import shutil

    return shutil.which("sbatch") is not None


def _export_pythonpath() -> None:
    """Make ``kdlab`` importable in job processes started from a source checkout (PYTHONPATH=src)."""
    import kdlab

    root = str(Path(kdlab.__file__).resolve().parent.parent)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root] + parts)


def make_executor(kind: str, out: Path, jobs: int, options: dict | None):
    if kind == "local":
        if options:
            raise SweepError(f"executor options {sorted(options)} only apply to --executor submitit")
        return LocalExecutor(jobs)
    if kind == "submitit":
        return SubmititExecutor(out / "submitit", jobs, options)
    raise SweepError(f"unknown executor {kind!r}: use local or submitit")


# ---------------------------------------------------------------------------------------- orchestration
@dataclass
class ExecutionSummary:
    executed: list[str] = field(default_factory=list)  # student keys run (done or failed) by this call
    executed_teachers: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # student keys already finished
    failed: list[str] = field(default_factory=list)  # student keys whose record is failed (any call)
    waited: list[str] = field(default_factory=list)  # keys finished by another process while we waited
    wall_s: float = 0.0


def execute(
    grid: SweepGrid,
    store: Store,
    *,
    executor: str = "local",
    jobs: int | None = None,
    retry_failed: bool = False,
    executor_options: dict | None = None,
    stages: str = STAGES_MODULE,
    echo: Callable[[str], None] = print,
    group_size: int | None = None,
    teacher_group_size: int | None = None,
) -> ExecutionSummary:
    """Run every missing run of the grid; return what was executed and skipped.

    Student runs that read the same batches and distil the same teacher train as groups (one program, one
    teacher forward per batch; :mod:`kdlab.sweep.groups`): ``group_size`` caps a group (None: what memory
    allows, 1: no groups). Teachers that differ only in their objective train as stacked groups of at most
    ``teacher_group_size`` when it is 2 or more (and memory allows); by default they train alone."""
    t0 = time.time()
    runs, teacher_cfgs = expand(grid)
    opts = dict(executor_options or {})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    on_this_machine = executor == "local" or opts.get("cluster") in ("local", "debug") or (
        executor == "submitit" and opts.get("cluster") is None and not _slurm_available())
    jobs = jobs or (default_jobs("local") if on_this_machine else default_jobs(executor))
    if jobs < 1:
        raise SweepError(f"--jobs must be >= 1, got {jobs}")
    if group_size is not None and group_size < 1:
        raise SweepError(f"--group-size must be >= 1 (1 trains every run alone), got {group_size}")
    if teacher_group_size is not None and teacher_group_size < 1:
        raise SweepError(f"--teacher-group-size must be >= 1 (1 trains every teacher alone), got {teacher_group_size}")
    stack_teachers = (teacher_group_size or 1) > 1
    # runs on this machine share its cores; SLURM jobs get cpus_per_task each
    threads = max(1, cores // jobs) if on_this_machine else opts.get("cpus_per_task")

    labels: dict[str, str] = {}
    for a in grid.ablations:
        for v in a.variants:
            cid = config_id(v.config)
            labels.setdefault(cid, f"{a.knob}={v.label}")
    for a in grid.ablations:
        if a.base is not None:
            labels[config_id(a.base)] = f"{a.name}: base"
    base_cid = config_id(grid.base)
    labels[base_cid] = "base"

    teacher_tasks: dict[str, Task] = {}
    for tkey, tcfg in teacher_cfgs.items():
        d = store.teacher_dir(tkey)
        teacher_tasks[tkey] = Task("teacher", tkey, str(d), tcfg.model_dump(mode="json"), str(store.root),
                                   int(tcfg.seed), stages, threads, label=f"teacher seed {tcfg.seed}",
                                   group_key=teacher_group_key(tcfg) if stack_teachers else "")
    student_tasks: list[Task] = []
    for cid, per_seed in runs.items():
        for seed, spec in per_seed.items():
            d = store.run_dir(spec.key)
            tdir = str(store.teacher_dir(spec.teacher_key)) if spec.teacher_key else None
            student_tasks.append(Task(
                "student", spec.key, str(d), spec.config.model_dump(mode="json"), str(store.root), seed, stages,
                threads, spec.teacher_key, tdir, label=f"{labels.get(cid, cid[:8])} seed {seed}",
                group_key=group_key(spec.config, tdir) if group_size != 1 else "",
            ))

    for t in student_tasks:
        tt = teacher_tasks.get(t.teacher_key or "")
        if tt is not None and tt.label.startswith("teacher seed"):
            tt.label = f"of {t.label}"
    summary = ExecutionSummary()
    if retry_failed:
        for t in list(teacher_tasks.values()) + student_tasks:
            rec = store.record(Path(t.run_dir))
            if rec is not None and rec["status"] == "failed":
                os.replace(Path(t.run_dir) / "record.json", Path(t.run_dir) / f"record.failed-{int(time.time())}.json")

    pending_t = {k: t for k, t in teacher_tasks.items() if store.record(Path(t.run_dir)) is None}
    pending_s = {t.key: t for t in student_tasks if store.record(Path(t.run_dir)) is None}
    summary.skipped = [t.key for t in student_tasks if t.key not in pending_s]
    total = len(pending_t) + len(pending_s)
    if total == 0:
        echo(f"All {len(student_tasks)} runs are already in {store.root}; nothing to run.")
    else:
        reused = len(teacher_tasks) - len(pending_t)
        echo(f"Running {len(pending_s)} student runs and {len(pending_t)} teacher trainings "
             f"({len(summary.skipped)} runs and {reused} teachers already done) with the {executor} executor, "
             f"{jobs} at a time"
             + (f", {threads} threads each" if threads else "")
             + ("" if group_size == 1 else "; runs that share a teacher and seed train in groups")
             + (f"; teachers that differ only in their objective train stacked, {teacher_group_size} at most"
                if stack_teachers else "")
             + f"; output in {store.root}")
    caps: dict[tuple[str, int], int] = {}
    # groups that share a device: the local pool's jobs on one machine, or one job per GPU when each has its own;
    # elsewhere (SLURM) the orchestrator cannot see the jobs' machines, so groups are sized by --group-size alone
    gpus = _visible_gpus() if executor == "local" else []
    per_device = max(1, jobs // len(gpus)) if gpus else jobs

    def cap(members: list[Task]) -> int:  # how many of these runs one group may hold (estimated once per key)
        kind = members[0].kind
        key = (kind, members[0].group_key, len(members))
        if key not in caps:
            asked = teacher_group_size if kind == "teacher" else group_size
            fits = lambda: auto_group_size([ExperimentConfig.model_validate(t.config) for t in members],  # noqa: E731
                                           per_device, stage=kind)
            if kind == "teacher":  # stacked copies hold k steps' activations: asked for, and within memory
                caps[key] = min(asked, fits()) if on_this_machine else asked
            elif asked:
                caps[key] = asked
            else:
                caps[key] = fits() if on_this_machine else DEFAULT_REMOTE_GROUP
        return caps[key]

    ex = make_executor(executor, store.root, jobs, executor_options) if total else None
    running: dict[Any, Task] = {}
    claims: dict[str, Any] = {}
    done_count = 0
    waiting_note = False

    def finished_line(text: str) -> None:  # one line per finished task, with the sweep's ETA
        left = eta(time.time() - t0, done_count, total)
        echo(f"[{done_count}/{total}] {text}" + (f"; sweep ETA {clock(left)}" if done_count < total else ""))

    def teacher_state(tkey: str | None) -> str:
        if tkey is None:
            return "done"
        rec = store.record(store.teacher_dir(tkey))
        if rec is None:
            return "pending"
        return rec["status"]

    old_term = None
    if threading.current_thread() is threading.main_thread():
        def _on_term(signum, frame):  # SIGTERM (e.g. scancel of the orchestrator): stop like Ctrl-C
            raise KeyboardInterrupt

        old_term = signal.signal(signal.SIGTERM, _on_term)
    try:
        while pending_t or pending_s or running:
            # students whose teacher failed: fail them without running
            for key, t in list(pending_s.items()):
                if teacher_state(t.teacher_key) == "failed" and t.teacher_key not in pending_t:
                    trec = store.record(store.teacher_dir(t.teacher_key)) or {}
                    err = f"teacher failed: {trec.get('error')}"
                    rec = _record(t, {"status": "failed", "error": err, "metrics": {}}, time.time(), trec)
                    rec["failed_stage"] = "teacher"
                    store.write_record(Path(t.run_dir), rec)
                    summary.executed.append(key)
                    del pending_s[key]
                    done_count += 1
                    finished_line(f"failed  {t.label}: {err}")
            in_flight = {m.key for t in running.values() for m in (t.members or [t])}
            ready_t = [t for t in pending_t.values() if t.key not in in_flight]
            ready_s = [t for t in pending_s.values()
                       if t.key not in in_flight and teacher_state(t.teacher_key) == "done"]
            idle = jobs - len(running)
            units = form_groups(ready_t, key=lambda t: t.group_key, cap=cap, free=idle)
            units += form_groups(ready_s, key=lambda t: t.group_key, cap=cap, free=idle - len(units))
            blocked = 0
            for unit in units:
                if len(running) >= jobs:
                    break
                claimed = []
                for t in unit:
                    claim = store.try_claim(Path(t.run_dir))
                    if claim is None:
                        if store.record(Path(t.run_dir)) is not None:  # finished by someone else meanwhile
                            (pending_t if t.kind == "teacher" else pending_s).pop(t.key, None)
                            done_count += 1
                            if t.kind == "student":
                                summary.waited.append(t.key)
                        else:
                            blocked += 1
                        continue
                    t.claim_token = claim.token
                    claims[t.key] = claim
                    claimed.append(t)
                if not claimed:
                    continue
                task = claimed[0] if len(claimed) == 1 else _group_task(claimed)
                try:
                    h = ex.submit(task)
                except BaseException:
                    for t in claimed:
                        claims.pop(t.key).release()
                    raise
                running[h] = task
            if not running:
                if pending_t or pending_s:
                    if not waiting_note:
                        echo(f"Waiting for {blocked or len(pending_s) + len(pending_t)} runs held by another process ...")
                        waiting_note = True
                    time.sleep(getattr(ex, "poll_s", 1.0))
                    for coll in (pending_t, pending_s):
                        for key, t in list(coll.items()):
                            if store.record(Path(t.run_dir)) is not None:
                                del coll[key]
                                done_count += 1
                                if t.kind == "student":
                                    summary.waited.append(key)
                    continue
                break
            finished = ex.wait(list(running), timeout=getattr(ex, "poll_s", 1.0))
            for h in finished:
                task = running.pop(h)
                status = ex.result(h)
                for t in task.members or [task]:
                    c = claims.pop(t.key, None)
                    coll = pending_t if t.kind == "teacher" else pending_s
                    rec = store.record(Path(t.run_dir))
                    if status == "ok" and rec is not None:
                        coll.pop(t.key, None)
                        done_count += 1
                        (summary.executed_teachers if t.kind == "teacher" else summary.executed).append(t.key)
                        finished_line(_line(t, rec, len(task.members)))
                    elif status == "finished" or (rec is not None and status in ("busy", "ok")):
                        coll.pop(t.key, None)
                        done_count += 1
                        if t.kind == "student":
                            summary.waited.append(t.key)
                    elif status in ("busy", "ok"):
                        pass  # another process holds it (or took it from the group): keep it pending, wait
                    elif status == "interrupted":
                        for held in [c, *(claims.pop(m.key, None) for m in task.members)]:
                            if held is not None:
                                held.release()
                        raise KeyboardInterrupt
                    elif len(task.members) > 1 and rec is None:  # a group's worker died (out of memory?)
                        t.group_key = ""  # retried alone: its checkpoints resume it, and it no longer risks the others
                        finished_line(f"retry   {t.kind} {t.label} alone: its group's worker stopped ({status})")
                    else:  # the worker died without a record
                        if store.record(Path(t.run_dir)) is None:
                            summ = {"status": "failed", "error": status, "metrics": {}}
                            store.write_record(Path(t.run_dir), _record(t, summ, time.time(), None))
                        coll.pop(t.key, None)
                        done_count += 1
                        (summary.executed_teachers if t.kind == "teacher" else summary.executed).append(t.key)
                        finished_line(f"failed  {t.kind} {t.label}: {status}")
                    if c is not None:
                        c.release()  # the worker normally removed it already
    except KeyboardInterrupt:
        if ex is not None and running:
            echo(f"Interrupted: stopping {len(running)} running task(s); run the same command again to resume.")
            ex.stop(list(running))
        raise
    finally:
        if getattr(ex, "name", "") == "local" or not running:
            for c in claims.values():
                c.release()
        if ex is not None:
            ex.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    summary.wall_s = time.time() - t0
    summary.failed = [t.key for t in student_tasks if (store.record(Path(t.run_dir)) or {}).get("status") == "failed"]
    return summary


def _group_task(members: list[Task]) -> Task:
    """One task that trains ``members`` (tasks of one kind and one group key) as one program."""
    first = members[0]
    return Task("group", first.key, first.run_dir, {}, first.store_root, first.seed, first.stages, first.threads,
                first.teacher_key, first.teacher_dir, label=f"group of {len(members)}", group_key=first.group_key,
                members=members)


def _line(t: Task, rec: dict, group: int = 0) -> str:
    m = rec.get("metrics") or {}
    top1 = m.get(f"{t.kind}.top1")
    acc = f" top1 {top1:.2f}" if isinstance(top1, (int, float)) else ""
    if rec["status"] == "done":
        shared = f", in a group of {group}" if group > 1 else ""
        return f"done    {t.kind:<7} {t.label}{acc} ({rec.get('duration_s', 0):.1f} s{shared})"
    return f"failed  {t.kind:<7} {t.label}: {rec.get('error')}"
