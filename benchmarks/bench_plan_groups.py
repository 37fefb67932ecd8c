"""A whole ablation plan, end to end, with and without groups (issue 16): `kdlab ablate PLAN` run once per
grouping mode, each into a fresh output folder, wall time of the whole command measured from outside.

Modes: ``no-group`` (every run alone: ``--no-group``), ``default`` (student groups by the memory cap, teachers
alone) and ``teacherN`` (``--teacher-group-size N``: teachers that differ only in their objective stacked, N at
most). Modes run one after another, alternating when ``--rounds`` > 1, so that drift hits each alike; the
table gives each mode's median wall time and its ratio to ``no-group``, and whether every mode's report
finished all its runs.

    python benchmarks/bench_plan_groups.py --plan ../shared/seeds/000_108249a72c064f76.txt          # embedded default
    python benchmarks/bench_plan_groups.py --plan PLAN --base studies/cifar10_kd/base.yaml --jobs 4   # a GPU machine
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, md_table


def mode_flags(mode: str) -> list[str]:
    if mode == "no-group":
        return ["--no-group"]
    if mode == "default":
        return []
    if mode.startswith("teacher") and mode[len("teacher"):].isdigit():
        return ["--teacher-group-size", mode[len("teacher"):]]
    raise SystemExit(f"unknown mode {mode!r}: no-group, default or teacherN (e.g. teacher4)")


def run_once(args, mode: str, out: Path) -> tuple[float, int]:
    cmd = [sys.executable, "-c", "import sys; from kdlab.cli import main; sys.exit(main())", "ablate", args.plan, "--seeds", str(args.seeds), "--out", str(out),
           *(["--base", args.base] if args.base else []), *(["--jobs", str(args.jobs)] if args.jobs else []),
           *mode_flags(mode), *args.overrides]
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        print(f"{mode}: exit {done.returncode}\n{done.stderr[-2000:]}", file=sys.stderr)
    return wall, done.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", required=True)
    p.add_argument("--base", default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=None)
    p.add_argument("--modes", default="no-group,default,teacher4")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("overrides", nargs="*", help="config overrides passed to kdlab ablate")
    args = p.parse_args()
    modes = args.modes.split(",")
    walls: dict[str, list[float]] = {m: [] for m in modes}
    codes: dict[str, set[int]] = {m: set() for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            out = Path(tempfile.mkdtemp(prefix=f"plan-{mode}-"))
            try:
                wall, code = run_once(args, mode, out)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            walls[mode].append(wall)
            codes[mode].add(code)
            print(f"{mode}: {wall:.1f} s (exit {code})", flush=True)
    ref = statistics.median(walls[modes[0]])
    rows = [[m, statistics.median(walls[m]), statistics.median(walls[m]) / ref, ",".join(map(str, sorted(codes[m])))]
            for m in modes]
    print(machine())
    print(md_table(["mode", "wall (s, median)", f"/ {modes[0]}", "exit"], rows))


if __name__ == "__main__":
    main()
