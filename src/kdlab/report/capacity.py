"""The capacity gap (the paper's open question 3): does the intra teacher's gain over a CE teacher depend
on the student's size?

Run one plan that sweeps the student architecture twice, once with the intra teacher (the base) and once
with ``objective.kind=ce``, then ``kdlab capacity-gap INTRA_DIR CE_DIR`` pairs the two sweeps by student
architecture and plots the gain (intra minus CE student top-1, mean over seeds, with the standard error
of the difference) against the student's parameter count. See studies/capacity_gap/README.md.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from kdlab.analysis.curves import markdown_table
from kdlab.config import ConfigError
from kdlab.engine.checkpoint import atomic_write_bytes, atomic_write_text
from kdlab.sweep.store import Store, read_json

ARCH_PATH = "student.arch"


def student_top1_by_arch(out_dir: Path, metric: str = "student.top1") -> dict[str, list[float]]:
    """``{student arch: [top-1 of each finished seed]}`` from an ablation folder that sweeps student.arch."""
    out_dir = Path(out_dir)
    grid = read_json(out_dir / "grid.json")
    if not isinstance(grid, dict):
        raise ConfigError(f"{out_dir} holds no ablation (grid.json missing): run `kdlab ablate` there first")
    sweeps = [ab for ab in grid["ablations"] if ab["knob"]["path"] == ARCH_PATH]
    if not sweeps:
        raise ConfigError(f"{out_dir}: no ablation of the student architecture ({ARCH_PATH}) in this plan")
    store = Store(out_dir)
    runs: dict[str, dict[str, str]] = {grid["base"]["student"]["arch"]: grid["base_runs"]}
    for variant in sweeps[0]["variants"]:
        runs[str(variant["value"])] = variant["runs"]
    out: dict[str, list[float]] = {}
    for arch, by_seed in runs.items():
        values = []
        for key in by_seed.values():
            rec = store.record(store.run_dir(key))
            if rec and rec["status"] == "done" and metric in rec["metrics"]:
                values.append(float(rec["metrics"][metric]))
        out[arch] = values
    return out


def parameter_count(arch: str) -> int:
    """Trainable parameters of ``arch`` with a 10-class head on 3-channel input (a size axis, not a figure)."""
    from kdlab.models import build_model

    return sum(p.numel() for p in build_model(arch, num_classes=10).parameters())


def capacity_gap(intra_dir: Path, ce_dir: Path, out: Path) -> tuple[str, Path]:
    """Pair the two sweeps; write ``capacity_gap.md`` and ``capacity_gap.png`` in ``out``; return (table, png)."""
    intra, ce = student_top1_by_arch(intra_dir), student_top1_by_arch(ce_dir)
    archs = sorted((a for a in intra if intra[a] and ce.get(a)), key=parameter_count)
    if not archs:
        raise ConfigError(f"{intra_dir} and {ce_dir} share no student architecture with finished runs")
    rows = []
    for arch in archs:
        (mi, si), (mc, sc) = _mean_std(intra[arch]), _mean_std(ce[arch])
        se = math.sqrt(si**2 / len(intra[arch]) + sc**2 / len(ce[arch]))
        rows.append([arch, parameter_count(arch) / 1e6, mc, mi, mi - mc, se, f"{len(intra[arch])}/{len(ce[arch])}"])
    out = Path(out)
    png = _plot(rows, out / "capacity_gap.png")
    table = markdown_table(["student", "params (M)", "KD from CE teacher", "KD from intra teacher", "gain",
                            "± s.e.", "seeds (intra/CE)"], rows)
    atomic_write_text(out / "capacity_gap.md", "# Capacity gap: gain of the intra teacher by student size\n\n"
                      f"intra sweep: `{intra_dir}`, CE sweep: `{ce_dir}`; student top-1 (%), mean over seeds.\n\n"
                      f"{table}\n\n![gain]({png.name})\n")
    return table, png


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def _plot(rows: list[list], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r[1] for r in rows]
    ax.errorbar(x, [r[4] for r in rows], yerr=[r[5] for r in rows], marker="o", capsize=3)
    for r in rows:
        ax.annotate(r[0], (r[1], r[4]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xscale="log", xlabel="student parameters (M)", ylabel="student top-1 gain (intra − CE teacher, %)",
           title="Capacity gap")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
