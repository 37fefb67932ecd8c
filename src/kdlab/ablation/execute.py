"""Expand a resolved grid into runs and execute them: teacher reuse, claims, local and submitit executors.

Every distinct config of the grid (the base, shared by all ablations, and each variant) runs once per seed.
A run is the pipeline's student stage; the teacher it needs is a separate task keyed by the teacher-relevant
config parts (:func:`~kdlab.ablation.store.teacher_key`), trained once and reused by every student that
needs it. A student task starts when its teacher's record says done; a failed teacher fails its students
(recorded, with the teacher's error) without stopping anything else.

Executors run one task per process:

* ``local``: ``multiprocessing`` ``spawn`` processes, ``jobs`` at a time (default: one per GPU when CUDA is
  present, else one per 2 cores... at least 1), each with ``cores // jobs`` torch threads;
* ``submitit``: ``submitit.AutoExecutor`` (SLURM when available, else submitit's local executor; force one
  with ``executor_options={"cluster": "local" | "slurm" | "debug"}``, pass SLURM settings such as
  ``slurm_partition``, ``gpus_per_node``, ``cpus_per_task``, ``timeout_min`` the same way).

The worker claims its run folder first (see :mod:`kdlab.ablation.store`), so a second ``kdlab ablate`` on
the same folder waits for runs another process holds instead of running them twice.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any, Callable

from kdlab.ablation.plan import AblationError
from kdlab.ablation.resolve import Grid
from kdlab.ablation.store import Store, run_key, teacher_config, teacher_key
from kdlab.config import ExperimentConfig

__all__ = ["Task", "RunSpec", "expand", "run_task", "execute", "ExecutionSummary", "default_jobs", "make_executor"]

STAGES_MODULE = "kdlab.engine.stages"

# exit codes of a local worker process
_EXIT = {"done": 0, "failed": 0, "busy": 3, "finished": 4, "interrupted": 5}
_EXIT_BACK = {3: "busy", 4: "finished", 5: "interrupted"}


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


@dataclass
class RunSpec:
    """One (config, seed) of the grid: its student key and the teacher it needs."""

    key: str
    seed: int
    config: ExperimentConfig
    teacher_key: str | None


def _needs_teacher(cfg: ExperimentConfig) -> bool:
    return bool(cfg.distill.methods) and not cfg.teacher.checkpoint


def expand(grid: Grid) -> tuple[dict[str, dict[int, RunSpec]], dict[str, ExperimentConfig]]:
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
    return run_key(cfg.model_copy(update={"seed": 0, "name": "ablation-run"}))


# ------------------------------------------------------------------------------------------ worker
def _record(task: Task, summary: dict, started: float, teacher_rec: dict | None) -> dict:
    stage = task.kind
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
        "checkpoint": str(Path(task.run_dir) / "checkpoints" / "last.pt"),
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
    store = Store(task.store_root)
    run_dir = Path(task.run_dir)
    claim = store.try_claim(run_dir)
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


def _process_entry(task: Task) -> None:  # pragma: no cover - runs in the child
    try:
        status = run_task(task)
    except KeyboardInterrupt:
        status = "interrupted"
    sys.stdout.flush()
    os._exit(_EXIT.get(status, 1))


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


class LocalExecutor:
    """One spawned process per task, ``jobs`` at a time."""

    name = "local"
    poll_s = 0.5

    def __init__(self, jobs: int):
        self.jobs = jobs
        self.ctx = mp.get_context("spawn")

    def submit(self, task: Task):
        p = self.ctx.Process(target=_process_entry, args=(task,), name=f"kdlab-{task.kind}-{task.key[:8]}")
        p.start()
        return p

    def wait(self, handles: list, timeout: float) -> list:
        if not handles:
            return []
        mp_wait([h.sentinel for h in handles], timeout=timeout)
        return [h for h in handles if h.exitcode is not None]

    def result(self, h) -> str:
        h.join()
        code = h.exitcode
        if code == 0:
            return "ok"
        if code in _EXIT_BACK:
            return _EXIT_BACK[code]
        return f"worker process died (exit code {code})" if code >= 0 else f"worker process killed by signal {-code}"

    def stop(self, handles: list) -> None:
        for h in handles:
            if h.is_alive():
                h.terminate()  # SIGTERM: the trainer checkpoints and stops
        deadline = time.time() + 20
        for h in handles:
            h.join(max(0.0, deadline - time.time()))
            if h.is_alive():
                h.kill()
                h.join()


class SubmititExecutor:
    """Tasks as submitit jobs (SLURM, or submitit's local executor)."""

    name = "submitit"

    def __init__(self, folder: Path, jobs: int, options: dict[str, Any] | None = None):
        try:
            import submitit
        except ImportError:
            raise AblationError("--executor submitit needs the submitit package: pip install submitit") from None
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

    def stop(self, handles: list) -> None:
        if self.cancel_on_interrupt:
            for h in handles:
                try:
                    h.cancel(check=False)
                except Exception:  # noqa: BLE001
                    pass


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
            raise AblationError(f"executor options {sorted(options)} only apply to --executor submitit")
        return LocalExecutor(jobs)
    if kind == "submitit":
        return SubmititExecutor(out / "submitit", jobs, options)
    raise AblationError(f"unknown executor {kind!r}: use local or submitit")


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
    grid: Grid,
    store: Store,
    *,
    executor: str = "local",
    jobs: int | None = None,
    retry_failed: bool = False,
    executor_options: dict | None = None,
    stages: str = STAGES_MODULE,
    echo: Callable[[str], None] = print,
) -> ExecutionSummary:
    """Run every missing run of the grid; return what was executed and skipped."""
    t0 = time.time()
    runs, teacher_cfgs = expand(grid)
    jobs = jobs or default_jobs(executor)
    if jobs < 1:
        raise AblationError(f"--jobs must be >= 1, got {jobs}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // jobs) if executor == "local" else (executor_options or {}).get("cpus_per_task")

    labels: dict[str, str] = {}
    for a in grid.ablations:
        for v in a.variants:
            cid = config_id(v.config)
            labels.setdefault(cid, f"{a.knob.name}={v.label}")
    base_cid = config_id(grid.base)
    labels[base_cid] = "base"

    teacher_tasks: dict[str, Task] = {}
    for tkey, tcfg in teacher_cfgs.items():
        d = store.teacher_dir(tkey)
        teacher_tasks[tkey] = Task("teacher", tkey, str(d), tcfg.model_dump(mode="json"), str(store.root),
                                   int(tcfg.seed), stages, threads, label=f"teacher seed {tcfg.seed}")
    student_tasks: list[Task] = []
    for cid, per_seed in runs.items():
        for seed, spec in per_seed.items():
            d = store.run_dir(spec.key)
            student_tasks.append(Task(
                "student", spec.key, str(d), spec.config.model_dump(mode="json"), str(store.root), seed, stages,
                threads, spec.teacher_key, str(store.teacher_dir(spec.teacher_key)) if spec.teacher_key else None,
                label=f"{labels.get(cid, cid[:8])} seed {seed}",
            ))

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
        echo(f"Running {len(pending_s)} student runs and {len(pending_t)} teacher trainings "
             f"({len(summary.skipped)} runs already done) with the {executor} executor, {jobs} at a time"
             + (f", {threads} threads each" if threads else "") + f"; output in {store.root}")
    ex = make_executor(executor, store.root, jobs, executor_options) if total else None
    running: dict[Any, Task] = {}
    done_count = 0
    waiting_note = False

    def teacher_state(tkey: str | None) -> str:
        if tkey is None:
            return "done"
        rec = store.record(store.teacher_dir(tkey))
        if rec is None:
            return "pending"
        return rec["status"]

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
                    echo(f"[{done_count}/{total}] failed  {t.label}: {err}")
            in_flight = {t.key for t in running.values()}
            ready = [t for t in pending_t.values()] + [
                t for t in pending_s.values() if teacher_state(t.teacher_key) == "done"
            ]
            blocked = 0
            for t in ready:
                if len(running) >= jobs:
                    break
                if t.key in in_flight:
                    continue
                state = store.claim_state(Path(t.run_dir))
                if state == "busy":
                    blocked += 1
                    continue
                h = ex.submit(t)
                running[h] = t
                in_flight.add(t.key)
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
                t = running.pop(h)
                status = ex.result(h)
                coll = pending_t if t.kind == "teacher" else pending_s
                rec = store.record(Path(t.run_dir))
                if status == "ok" and rec is not None:
                    coll.pop(t.key, None)
                    done_count += 1
                    (summary.executed_teachers if t.kind == "teacher" else summary.executed).append(t.key)
                    echo(f"[{done_count}/{total}] {_line(t, rec)}")
                elif status == "finished" or (rec is not None and status in ("busy", "ok")):
                    coll.pop(t.key, None)
                    done_count += 1
                    if t.kind == "student":
                        summary.waited.append(t.key)
                elif status == "busy":
                    pass  # another process holds it: keep it pending, wait
                elif status == "interrupted":
                    raise KeyboardInterrupt
                else:  # the worker died without a record
                    store.clear_stale_claim(Path(t.run_dir))
                    if store.record(Path(t.run_dir)) is None:
                        summ = {"status": "failed", "error": status, "metrics": {}}
                        store.write_record(Path(t.run_dir), _record(t, summ, time.time(), None))
                    coll.pop(t.key, None)
                    done_count += 1
                    (summary.executed_teachers if t.kind == "teacher" else summary.executed).append(t.key)
                    echo(f"[{done_count}/{total}] failed  {t.kind} {t.label}: {status}")
    except KeyboardInterrupt:
        if ex is not None and running:
            echo(f"Interrupted: stopping {len(running)} running task(s); run the same command again to resume.")
            ex.stop(list(running))
        raise
    finally:
        summary.wall_s = time.time() - t0
    summary.failed = [t.key for t in student_tasks if (store.record(Path(t.run_dir)) or {}).get("status") == "failed"]
    return summary


def _line(t: Task, rec: dict) -> str:
    m = rec.get("metrics") or {}
    top1 = m.get(f"{t.kind}.top1")
    acc = f" top1 {top1:.2f}" if isinstance(top1, (int, float)) else ""
    if rec["status"] == "done":
        return f"done    {t.kind:<7} {t.label}{acc} ({rec.get('duration_s', 0):.1f} s)"
    return f"failed  {t.kind:<7} {t.label}: {rec.get('error')}"
