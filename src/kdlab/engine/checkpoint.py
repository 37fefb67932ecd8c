"""Atomic checkpoint files: written to a temporary file, fsynced, renamed; loaded with weights_only.

``last.pt`` is the newest checkpoint and ``last.prev.pt`` the one before it, so a checkpoint that is
corrupted (a disk error, a crash mid-rename on an unusual filesystem) falls back to the previous one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdlab.config import ConfigError
from kdlab.models.checkpoint import CheckpointError, safe_torch_load

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def naming(path: Path):
    """An OSError raised inside (a full disk: ``write`` gives ENOSPC without a file name) names ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    _fsync_dir(path.parent)


def remove_temp_files(folder: Path) -> list[str]:
    """Delete the temporary files that interrupted atomic writes left in ``folder`` (``.NAME.*.tmp``); their
    names. Call it only while this process is the folder's one writer (a run at its start)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp.name)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def save_checkpoint(obj: dict, path: Path, *, keep_previous: bool = True) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    if keep_previous and path.exists():
        os.replace(path, path.with_suffix(".prev.pt"))
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Load with ``weights_only=True``; a file that fails gives CheckpointError naming it and why."""
    if not Path(path).exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    obj = safe_torch_load(path, str(path))
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def load_latest(ckpt_dir: Path) -> tuple[dict | None, str | None]:
    """The newest readable of ``last.pt`` / ``last.prev.pt``: (checkpoint, warning or None)."""
    last, prev = ckpt_dir / "last.pt", ckpt_dir / "last.prev.pt"
    if not last.exists() and not prev.exists():
        return None, None
    try:
        return load_checkpoint(last), None
    except CheckpointError as exc:
        if prev.exists():
            return load_checkpoint(prev), f"{exc}; resuming from the previous checkpoint {prev.name}"
        raise


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):  # NumPy scalars
        return o.item()
    return str(o)


def _card(path: Path) -> dict:
    try:
        card = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the card {path} ({exc})") from None
    if not isinstance(card, dict) or card.get("format") != "kdlab-card/1":
        raise ConfigError(f"{path} is not a kdlab export card (format {card.get('format') if isinstance(card, dict) else None!r})")
    return card


def card_recipe(path: Path) -> dict:
    """The config a card's network was trained with (data and its normalisation, architectures, schedules), with
    that network as the teacher: what ``kdlab distill teacher.checkpoint=CARD.json`` runs when no config is given.
    The runtime section (device, threads, ...) belongs to the machine, not the recipe, and is left out."""
    card = _card(path)
    recipe = {k: v for k, v in (card.get("recipe") or {}).items() if k != "runtime"}
    recipe["teacher"] = {**(recipe.get("teacher") or {}), "arch": card["arch"]}
    return recipe


def read_card(path: Path) -> tuple[dict, Path]:
    """A card's contents and the verified weight file it names (sha256 checked)."""
    card = _card(path)
    entry = card["files"]["pt"]
    weights = Path(path).parent / entry["file"]
    if not weights.exists():
        raise ConfigError(f"card {path} names {weights}, which does not exist")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise ConfigError(f"{weights} does not match the sha256 in {path}: the file changed or is corrupted")
    return card, weights
