"""Shared timing helpers: ratios measured in one process, with the candidates interleaved round by round
so that machine noise hits every candidate alike. Figures are medians over rounds."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def interleaved(cands: dict[str, Callable[[], None]], *, rounds: int = 7, iters: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each candidate; each round times ``iters`` calls of every candidate."""
    for fn in cands.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(rounds):
        for name, fn in cands.items():
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            samples[name].append((time.perf_counter() - start) / iters)
    return {k: statistics.median(v) for k, v in samples.items()}


def md_table(header: list[str], rows: list[list[object]]) -> str:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def machine() -> str:
    import os
    import platform

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    return f"{dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.python_version()}"


def timing_args(ap, *, rounds: int) -> None:
    """The options every interleaved benchmark of stacked networks shares: device, precision, repeats, threads."""
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def apply_timing_args(a) -> None:
    """Set the torch thread count and, on CUDA, cuDNN's autotuner, as the parsed ``timing_args`` ask."""
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
