"""Which process holds a folder (its pid, host and start time) and whether that process still lives.

A run folder records its owner in ``owner.json`` when a stage starts, so ``kdlab runs`` can tell a run that is
going from one whose process was killed (``kill -9``, a lost node) and left no summary; ablation claims list
their holders the same way (:mod:`kdlab.sweep.store`).
"""

from __future__ import annotations

import os
import socket

OWNER = "owner.json"


def proc_start(pid: int) -> str | None:
    """Start time of a process (Linux /proc), to tell a live holder from a recycled pid."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
        return data.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) is not alive for our purpose
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def me() -> dict:
    """This process as a holder: pid, host, start time."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": proc_start(os.getpid())}


def holder_alive(holder: dict) -> bool | None:
    """Whether ``holder`` (as :func:`me` wrote it) still runs; None when it ran on another host (unknowable here)."""
    if holder.get("host") != socket.gethostname():
        return None
    pid, start = int(holder.get("pid", -1)), holder.get("start")
    return pid_alive(pid) and not (start and proc_start(pid) not in (None, start))
