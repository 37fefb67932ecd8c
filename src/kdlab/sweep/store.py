"""The results store of an ablation: one record per run, atomic writes, per-run claims.

Layout of an output folder::

    OUT/grid.json                 the resolved plan (what `kdlab report OUT` rebuilds tables from)
    OUT/teachers/<tkey>/          a teacher run (shared by every student run that needs it)
        record.json               its result record, written atomically when it ends
        claim.json                present while a process runs it
        config.yaml metrics.jsonl summary.json checkpoints/   (written by the stage itself)
    OUT/runs/<key>/               a student run (the pipeline's second stage), same files
    OUT/named/<ablation>/<value>-seed<s>[-teacher] -> ../../runs/<key>   readable names (relative symlinks):
                                  `tensorboard --logdir OUT/named` shows the runs by them
    OUT/report.md OUT/plots/ OUT/results.csv OUT/tables.json

``key`` is the run identity of the resolved student config and ``tkey`` that of its teacher stage
(``kdlab.experiment.identity``: one rule for what counts). ``OUT/store.json`` records the identity version;
a folder written under an earlier version (no store.json: version 1) is renamed to the current keys when a run opens it
(:meth:`Store.upgrade`), and a folder whose records cannot be read that way is refused with the reason.

Claims: before it launches a run, the orchestrator creates ``claim.json`` with ``O_CREAT | O_EXCL`` while
holding an ``fcntl`` lock on ``OUT/.lock``; the worker process then joins the claim (same token) and removes
it when the record is written. A claim lists its holders (pid, host, process start time); it is stale when
every holder is gone: on this host, its pid is dead or belongs to a newer process; on another host, the
claim's heartbeat (the file's mtime, touched every minute by every live holder) is older than
``STALE_AFTER_S``. Stale claims are taken over; live ones are waited for. So two ``kdlab ablate`` processes
on one folder never run one run twice, and a killed process leaves nothing that blocks a re-run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from kdlab.engine.checkpoint import atomic_write_json
from kdlab.experiment.identity import IDENTITY_VERSION, run_identity
from kdlab.experiment.schema import ExperimentConfig
from kdlab.engine.owner import holder_alive, me

__all__ = [
    "RECORD",
    "CLAIM",
    "STALE_AFTER_S",
    "run_key",
    "teacher_key",
    "teacher_config",
    "readable_names",
    "Store",
    "StoreError",
    "Claim",
]

RECORD = "record.json"
CLAIM = "claim.json"
NAMED = "named"
STALE_AFTER_S = 600.0
HEARTBEAT_S = 60.0
STORE = "store.json"


# -------------------------------------------------------------------------------------------- keys
def run_key(cfg: ExperimentConfig | dict) -> str:
    """Folder name of a student run: its run identity (``kdlab.experiment.identity``)."""
    return run_identity(cfg, "student")


def teacher_key(cfg: ExperimentConfig | dict) -> str:
    """Folder name of a teacher run: the identity of its teacher stage."""
    return run_identity(cfg, "teacher")


def teacher_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config a teacher run is started with: a function of its teacher key only (student parts reset),
    so whichever student needs it first, the teacher folder's config.yaml is the same."""
    ref = ExperimentConfig()
    return cfg.model_copy(update={"name": "ablation-teacher", "student": ref.student, "distill": ref.distill})


# ------------------------------------------------------------------------------------------- names
def _slug(text: Any) -> str:
    return re.sub(r"[^a-z0-9_.=+-]+", "-", str(text).lower()).strip("-.")[:60] or "unnamed"


def _knobs(overrides: dict) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items())


def readable_names(grid: dict) -> list[tuple[str, str, str]]:
    """``(name, folder, knobs)`` for the runs of a grid record (grid.json): ``folder`` is relative to the store,
    ``knobs`` what the run's variant changes. Names: ``base/seed0``, ``<ablation>/base-seed0`` (an ablation's own
    base), ``<ablation>/<value>-seed0``; a teacher is named once, after the first run that needs it, with
    ``-teacher``. A run shared by two variants (one equal to the base) has a name for each."""
    out: list[tuple[str, str, str]] = []
    named_teachers: set[str] = set()

    def add(prefix: str, runs: dict, teachers: dict, knobs: str) -> None:
        for seed, key in runs.items():
            out.append((f"{prefix}seed{seed}", f"runs/{key}", knobs))
            tkey = teachers.get(seed)
            if tkey and tkey not in named_teachers:
                named_teachers.add(tkey)
                out.append((f"{prefix}seed{seed}-teacher", f"teachers/{tkey}", knobs))

    add("base/", grid.get("base_runs", {}), grid.get("base_teachers", {}), "base")
    used: set[str] = {"base"}
    for a in grid.get("ablations", []):
        folder = _slug(a["name"])
        while folder in used:  # two ablations of one name
            folder += "+"
        used.add(folder)
        if a.get("base_runs"):
            add(f"{folder}/base-", a["base_runs"], a.get("base_teachers", {}), f"{a['name']}: base")
        for v in a["variants"]:
            add(f"{folder}/{_slug(v['label'])}-", v.get("runs", {}), v.get("teachers", {}), _knobs(v["overrides"]))
    return out


# ------------------------------------------------------------------------------------------- files
def read_json(path: Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ claims
class _Heartbeat:
    """One daemon thread per process touching the claim files it holds every HEARTBEAT_S."""

    def __init__(self) -> None:
        self.paths: set[Path] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        with self.lock:
            self.paths.add(path)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, daemon=True, name="kdlab-claims")
                self.thread.start()

    def discard(self, path: Path) -> None:
        with self.lock:
            self.paths.discard(path)

    def _run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self.lock:
                paths = list(self.paths)
            for p in paths:
                with contextlib.suppress(OSError):
                    os.utime(p)


_HEARTBEAT = _Heartbeat()


class Claim:
    """A held claim on a run folder (``token`` identifies it); ``release()`` removes it if it is still ours."""

    def __init__(self, store: "Store", path: Path, token: str):
        self.store, self.path, self.token = store, path, token
        _HEARTBEAT.add(path)

    def release(self) -> None:
        _HEARTBEAT.discard(self.path)
        self.store.release(self.path.parent, self.token)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class StoreError(ValueError):
    """A results folder kdlab cannot use, with a one-line reason."""


class Store:
    """The output folder of one ablation (see module doc)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- identity version
    def version(self) -> int | None:
        """The identity version of the folder's keys: from store.json, 1 for a folder with runs but no
        store.json, None for a new folder."""
        meta = read_json(self.root / STORE)
        if isinstance(meta, dict):
            return int(meta.get("identity_version", 1))
        has_runs = any((self.root / sub).glob("*/") for sub in ("runs", "teachers"))
        return 1 if has_runs else None

    def upgrade(self) -> list[tuple[str, str]]:
        """Bring the folder to the current identity version: rename every run folder to its current key
        (read from its record, or its config.yaml when it has none) and rewrite the keys and paths inside
        its record. Returns the ``(old, new)`` folder names. Raises :class:`StoreError` if a folder's config
        cannot be read or a newer kdlab wrote the folder."""
        version = self.version()
        if version is not None and version > IDENTITY_VERSION:
            raise StoreError(f"{self.root} was written by a newer kdlab (identity version {version}); "
                             "update kdlab or use another --out")
        renamed: list[tuple[str, str]] = []
        if version is not None and version < IDENTITY_VERSION:
            moves = {}  # old path -> new path, teachers first (student records name them)
            merged = {}  # set-aside path -> the path of the folder kept for the same run
            for sub, stage in (("teachers", "teacher"), ("runs", "student")):
                claims: dict[Path, list[Path]] = {}  # new path -> the folders that map to it
                for folder in sorted(p for p in (self.root / sub).glob("*") if p.is_dir()):
                    new = folder.parent / run_identity(self._folder_config(folder), stage)
                    claims.setdefault(new, []).append(folder)
                for new, folders in claims.items():
                    if new.exists() and new not in folders:  # the name is taken by a folder of another run
                        raise StoreError(f"cannot upgrade {folders[0]}: {new.name} exists already and is another "
                                         "run; remove one of the two folders or use another --out")
                    keep = max(folders, key=_worth_keeping)  # a finished run over an unfinished one
                    for loser in (f for f in folders if f != keep):
                        # two folders are one run under today's identity (an earlier version keyed them apart):
                        # the other one is set aside, never deleted
                        aside = self.root / "superseded" / sub / loser.name
                        aside.parent.mkdir(parents=True, exist_ok=True)
                        loser.rename(aside)
                        renamed.append((f"{sub}/{loser.name}", f"superseded/{sub}/{loser.name}"))
                        merged[loser] = new  # records that named the set-aside folder name the kept one
                    if keep != new:
                        moves[keep] = new
            for old, new in moves.items():
                old.rename(new)
                renamed.append((f"{old.parent.name}/{old.name}", f"{new.parent.name}/{new.name}"))
            for folder in [*moves.values(), *(self.root / "runs").glob("*"), *(self.root / "teachers").glob("*")]:
                self._rewrite_record(folder, {**merged, **moves})
        self.root.mkdir(parents=True, exist_ok=True)
        if version != IDENTITY_VERSION:
            atomic_write_json(self.root / STORE, {"identity_version": IDENTITY_VERSION})
        return renamed

    @staticmethod
    def _folder_config(folder: Path) -> dict:
        rec = read_json(folder / RECORD)
        if isinstance(rec, dict) and isinstance(rec.get("config"), dict):
            return rec["config"]
        try:
            cfg = yaml.safe_load((folder / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            cfg = None
        if not isinstance(cfg, dict):
            raise StoreError(f"cannot upgrade {folder}: it has neither a readable record.json nor config.yaml; "
                             "remove the folder or use another --out")
        return cfg

    def _rewrite_record(self, folder: Path, moves: dict[Path, Path]) -> None:
        rec = read_json(folder / RECORD)
        if not isinstance(rec, dict):
            return
        text = json.dumps(rec)
        for old, new in moves.items():
            text = text.replace(str(old), str(new)).replace(f'"{old.name}"', f'"{new.name}"')
        if text != json.dumps(rec):
            atomic_write_json(folder / RECORD, json.loads(text))

    # -- paths
    def run_dir(self, key: str) -> Path:
        return self.root / "runs" / key

    def teacher_dir(self, tkey: str) -> Path:
        return self.root / "teachers" / tkey

    @property
    def grid_path(self) -> Path:
        return self.root / "grid.json"

    # -- records
    def record(self, run_dir: Path) -> dict | None:
        rec = read_json(Path(run_dir) / RECORD)
        return rec if isinstance(rec, dict) and rec.get("status") in ("done", "failed") else None

    def write_record(self, run_dir: Path, record: dict) -> None:
        atomic_write_json(Path(run_dir) / RECORD, record)

    def records(self) -> dict[str, dict]:
        """Every finished student-run record by key."""
        out = {}
        for p in sorted((self.root / "runs").glob(f"*/{RECORD}")):
            rec = read_json(p)
            if isinstance(rec, dict) and rec.get("status") in ("done", "failed"):
                out[p.parent.name] = rec
        return out

    def write_grid(self, grid: dict) -> None:
        atomic_write_json(self.grid_path, grid)

    def write_names(self, names: list[tuple[str, str, str]]) -> None:
        """``OUT/named/<name>``: a relative symlink to each run folder (see :func:`readable_names`), replaced
        atomically. On a filesystem without symlinks there are none; ``kdlab runs`` shows the names all the same."""
        for name, folder, _ in names:
            link = self.root / NAMED / name
            target = os.path.relpath(self.root / folder, link.parent)
            if link.is_symlink() and os.readlink(link) == target:
                continue
            tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
            try:
                link.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.symlink(target, tmp)
                os.replace(tmp, link)
            except OSError:
                return

    def read_grid(self) -> dict | None:
        g = read_json(self.grid_path)
        return g if isinstance(g, dict) else None

    # -- claims
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - non-POSIX: O_EXCL alone
                pass
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def claim_state(self, run_dir: Path) -> str:
        """``free`` (no claim), ``busy`` (a live process holds it) or ``stale`` (its holders are gone)."""
        path = Path(run_dir) / CLAIM
        if not path.exists():
            return "free"
        return "stale" if self._stale(path) else "busy"

    def _stale(self, path: Path) -> bool:
        info = read_json(path)
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return False  # vanished: treat as free next time
        if not isinstance(info, dict):
            return age > 30  # a claim being written (or torn): give it a moment
        for h in info.get("holders") or [info]:
            alive = holder_alive(h)
            if alive or (alive is None and age <= STALE_AFTER_S):  # elsewhere: a fresh heartbeat counts
                return False
        return True

    def try_claim(self, run_dir: Path) -> Claim | None:
        """Claim a run folder for this process; None if it is finished or a live process holds it."""
        import uuid

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / CLAIM
        token = uuid.uuid4().hex
        with self._locked():
            if self.record(run_dir) is not None:
                return None
            if path.exists():
                if not self._stale(path):
                    return None
                with contextlib.suppress(OSError):
                    path.unlink()
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            info = {"token": token, "holders": [me()], "time": time.time()}
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
                fh.flush()
                os.fsync(fh.fileno())
        return Claim(self, path, token)

    def adopt_claim(self, run_dir: Path, token: str) -> Claim | None:
        """A worker joins the claim its orchestrator made for it (same token); None if it was taken over."""
        path = Path(run_dir) / CLAIM
        with self._locked():
            info = read_json(path)
            if not isinstance(info, dict) or info.get("token") != token:
                return None
            info["holders"] = list(info.get("holders") or []) + [me()]
            atomic_write_json(path, info)
        return Claim(self, path, token)

    def release(self, run_dir: Path, token: str) -> None:
        """Remove the claim if it still carries ``token``."""
        path = Path(run_dir) / CLAIM
        with self._locked():
            info = read_json(path)
            if isinstance(info, dict) and info.get("token") == token:
                with contextlib.suppress(OSError):
                    path.unlink()

    def clear_stale_claim(self, run_dir: Path) -> bool:
        """Remove a claim whose holders are gone."""
        path = Path(run_dir) / CLAIM
        with self._locked():
            if path.exists() and self._stale(path):
                with contextlib.suppress(OSError):
                    path.unlink()
                return True
        return False


def _worth_keeping(folder: Path) -> tuple[int, int, float]:
    """Which of several folders of one run to keep: a done record, then any record, then a checkpoint, then
    the most recently changed."""
    rec = read_json(folder / RECORD)
    done = isinstance(rec, dict) and rec.get("status") == "done"
    checkpoint = folder / "checkpoints" / "last.pt"
    return (2 * done + isinstance(rec, dict), int(checkpoint.exists()), folder.stat().st_mtime)
