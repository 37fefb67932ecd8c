"""Tables, Markdown report and plots of an ablation, built from its results store alone.

``build_report(OUT)`` reads ``OUT/grid.json`` (the resolved plan, with the run keys of every variant and
seed) and the run records, and writes:

* ``OUT/report.md``: the ablations of the plan that were not run (and why), then per ablation what was
  changed (knob, config path, values), a table with each requested metric as mean ± sample std over the
  seeds that finished (the value alone for one seed), Δ vs the base over paired seeds with its 95 % CI
  (:mod:`kdlab.ablation.stats`), n ok/failed and the pairs, a legend, the metrics kdlab does not measure,
  the warnings, the failed runs with their errors, and the plots;
* ``OUT/plots/*.png``: metric vs value with error bars for numeric sweeps (bars for categorical ones), and
  training curves (test top-1 and train loss per epoch, mean over seeds) from each run's ``metrics.jsonl``;
* ``OUT/results.csv`` (one row per run) and ``OUT/tables.json`` (the tables with per-seed values and the
  paired intervals, machine-readable). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.engine.checkpoint import atomic_write_json, atomic_write_text
from kdlab.experiment.terms import term_value
from kdlab.sweep.grid import SweepError, format_value
from kdlab.sweep.stats import PairedDelta, finite, paired_delta, summarize_values
from kdlab.sweep.store import Store, read_json

__all__ = ["Table", "Row", "ReportResult", "build_report", "rebuild_report", "render_table", "format_delta", "mean_std_text"]

MARK = "*"  # after a Δ whose 95 % interval excludes 0


@dataclass
class Cell:
    """One metric of one row: the finished seeds' values (seed -> value) and their mean ± sample std."""

    mean: float | None
    std: float | None  # None for fewer than two values: a sample std of one value is undefined
    n: int
    per_seed: dict[int, float] = field(default_factory=dict)

    def text(self) -> str:
        if self.mean is None:
            return "n/a"
        return mean_std_text(self.mean, self.std)


@dataclass
class Row:
    label: str
    value: Any
    is_base: bool
    same_as_base: bool
    n_ok: int
    n_failed: int
    n_missing: int
    cells: dict[str, Cell]
    delta: dict[str, PairedDelta]  # per column: Δ vs the base row over paired seeds (empty for the base row)
    errors: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    seeds_ok: list[int] = field(default_factory=list)  # the seeds whose run finished done
    pairs: int = 0  # seeds where this row and the base row both finished

    def delta_text(self, column: str, like: float | None) -> str:
        """``+0.42 [0.12, 0.72]*`` (``*``: the 95 % CI excludes 0); one pair: the difference alone."""
        d = self.delta.get(column)
        if d is None or d.mean is None:
            return "n/a"
        return format_delta(d, like) + (f" ({d.pairs} pairs)" if d.pairs != self.pairs else "")


@dataclass
class Table:
    index: int
    name: str
    part: str
    action: str
    knob: str
    path: str
    how: str
    numeric: bool
    base_value: Any
    columns: list[tuple[str, str]]  # (record metric key, header)
    rows: list[Row]
    not_measured: list[str]
    unrecorded: list[str]
    base_note: str = ""  # set when the ablation has a base of its own
    notes: list[str] = field(default_factory=list)  # metrics left out or not recorded, and why
    warnings: list[str] = field(default_factory=list)  # settings meaningless on the base's data

    def to_dict(self) -> dict:
        return {
            "index": self.index, "name": self.name, "part": self.part, "action": self.action, "knob": self.knob,
            "path": self.path, "numeric": self.numeric, "base_value": self.base_value,
            "columns": [c for c, _ in self.columns], "not_measured": self.not_measured, "unrecorded": self.unrecorded,
            "base_note": self.base_note, "notes": self.notes, "warnings": self.warnings,
            "rows": [
                {"label": r.label, "value": r.value, "is_base": r.is_base, "same_as_base": r.same_as_base,
                 "n_ok": r.n_ok, "n_failed": r.n_failed, "n_missing": r.n_missing, "runs": r.keys,
                 "seeds_ok": r.seeds_ok, "pairs": r.pairs,
                 "metrics": {c: {"mean": x.mean, "std": x.std, "n": x.n,
                                 "per_seed": {str(s): v for s, v in x.per_seed.items()}} for c, x in r.cells.items()},
                 "delta": {c: d.mean for c, d in r.delta.items()},
                 "delta_ci95": {c: d.to_dict() for c, d in r.delta.items()}, "errors": r.errors}
                for r in self.rows
            ],
        }


@dataclass
class ReportResult:
    out: Path
    report_path: Path
    tables: list[Table]
    plots: list[Path]
    text: str
    n_done: int
    n_failed: int
    n_missing: int


# --------------------------------------------------------------------------------------------- maths
def _num(x: float, like: float | None = None) -> str:
    """A number with decimals suited to its size (or to the size of ``like``: std and Δ follow the mean)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    ax = abs(x) if like is None else abs(like)
    if like is not None and ax != 0 and ax < 0.01:
        return f"{x:.2e}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    if ax == 0:
        return "0"
    if ax >= 0.01:
        return f"{x:.3f}"
    return f"{x:.2e}"


def mean_std_text(mean: float, std: float | None) -> str:
    """``mean ± std`` in :func:`_num`'s decimals, or with as many as the std needs to show its first significant
    digit when those would round it to zero (``1.941 ± 0.005``, not ``1.94 ± 0.00``); the mean alone without std."""
    if std is None:
        return _num(mean)
    text = _num(std, like=mean)
    if std == 0 or float(text) != 0:
        return f"{_num(mean)} ± {text}"
    places = -math.floor(math.log10(abs(std)))
    return f"{mean:.{places}f} ± {std:.{places}f}"


def _signed(x: float, like: float | None) -> str:
    return f"+{_num(x, like)}" if x >= 0 else _num(x, like)


def format_delta(d: PairedDelta, like: float | None) -> str:
    """``+0.42 [+0.12, +0.72]*`` (``*``: the 95 % CI excludes 0); one pair: the difference alone; ``n/a`` for none."""
    if d.mean is None:
        return "n/a"
    ends = [] if d.lo is None else [d.lo, d.hi]
    hidden = [abs(x) for x in (d.mean, *ends) if x != 0 and float(_num(x, like)) == 0]
    if hidden:  # a bound printed as +0.00 beside a * would contradict it: show each number's first digit
        places = -math.floor(math.log10(min(hidden)))
        sign = lambda x: f"{x:+.{places}f}"  # noqa: E731
    else:
        sign = lambda x: _signed(x, like)  # noqa: E731
    text = sign(d.mean)
    if ends:
        text += f" [{sign(d.lo)}, {sign(d.hi)}]" + (MARK if d.excludes_zero else "")
    return text


# ---------------------------------------------------------------------------------------------- tables
def _columns(ab: dict) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """The table's columns (``stage.key``, header), the plan metrics not measured, and the notes on metrics."""
    cols: list[tuple[str, str]] = []
    not_measured: list[str] = []
    notes: list[str] = []
    for m in ab["metrics"]:
        if m.get("note"):
            notes.append(f"{m['name']}: {m['note']}")
        if not m["keys"]:
            not_measured.append(m["name"])
            continue
        both = m.get("stage") == "both" or (not m.get("stage") and ab.get("teacher_varies"))
        stages = ["student", "teacher"] if both else [m.get("stage") or "student"]
        for stage in stages:
            for key in m["keys"]:
                col = f"{stage}.{key}"
                if col not in [c for c, _ in cols]:
                    cols.append((col, f"{key} ({stage})"))
    if not cols:
        cols.append(("student.top1", "top1 (student)"))
    return cols, not_measured, notes


def _row(label, value, is_base, same, runs: dict[int, str], store: Store, cols) -> Row:
    """The row of one config from its records (``runs``: seed -> run key)."""
    recs = {seed: store.record(store.run_dir(k)) for seed, k in runs.items()}
    ok = {seed: r for seed, r in recs.items() if r is not None and r["status"] == "done"}
    failed = [r for r in recs.values() if r is not None and r["status"] == "failed"]
    cells = {}
    for c, _ in cols:
        per_seed = {seed: float(v) for seed, r in ok.items() if finite(v := term_value(r.get("metrics", {}), c))}
        sm = summarize_values(per_seed.values())
        cells[c] = Cell(sm.mean, sm.std, sm.n, per_seed)
    errors = []
    for r in failed:
        e = f"seed {r.get('seed')}: {r.get('error')}"
        if e not in errors:
            errors.append(e)
    return Row(label, value, is_base, same, len(ok), len(failed), sum(r is None for r in recs.values()), cells, {},
               errors, list(runs.values()), seeds_ok=sorted(ok))


def _seed_runs(runs: dict[str, str]) -> dict[int, str]:
    return {int(s): runs[s] for s in sorted(runs, key=int)}


def _tables(grid: dict, store: Store) -> list[Table]:
    tables = []
    for i, ab in enumerate(grid["ablations"], 1):
        cols, not_measured, notes = _columns(ab)
        own = ab.get("base_runs")  # an ablation with a base of its own (see resolve.needed_distillers)
        base = _row("base", ab.get("base_value"), True, False, _seed_runs(own or grid["base_runs"]), store, cols)
        rows = [base]
        for v in ab["variants"]:
            rows.append(_row(v["label"], v["value"], False, v.get("same_as_base", False), _seed_runs(v["runs"]),
                             store, cols))
        for r in rows[1:]:
            r.delta = {c: paired_delta(r.cells[c].per_seed, base.cells[c].per_seed) for c, _ in cols}
            r.pairs = len(set(r.seeds_ok) & set(base.seeds_ok))
        unrecorded = [h for c, h in cols if all(r.cells[c].mean is None for r in rows) and any(r.n_ok for r in rows)]
        tables.append(Table(ab.get("index", i), ab["name"], ab.get("part", ""), ab.get("action", "REPLACE"),
                            ab["knob"]["name"], ab["knob"]["path"], ab.get("how", "grid file"), bool(ab.get("numeric")),
                            ab.get("base_value"), cols, rows, not_measured, unrecorded, ab.get("base_note", ""), notes,
                            list(ab.get("warnings", []))))
    return tables


def render_table(t: Table) -> str:
    """The Markdown table of one ablation (also readable in a terminal), with its legend under it."""
    head = ["variant"]
    for _, h in t.columns:
        head += [h, "Δ vs base [95 % CI]"]
    head += ["n ok/failed", "pairs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t.rows:
        label = f"base ({format_value(t.base_value)})" if r.is_base else r.label + (" (= base)" if r.same_as_base else "")
        cells = [label]
        for c, _ in t.columns:
            cells += [r.cells[c].text(), "" if r.is_base else r.delta_text(c, t.rows[0].cells[c].mean)]
        cells.append(f"{r.n_ok}/{r.n_failed}" + (f" ({r.n_missing} missing)" if r.n_missing else ""))
        cells.append("" if r.is_base else str(r.pairs))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", _legend(t)])


def _legend(t: Table) -> str:
    """How to read the table: what the cells, Δ, the interval and the mark are, for the n this table has."""
    ns = {c.n for r in t.rows for c in r.cells.values() if c.n}
    pairs = {r.pairs for r in t.rows[1:]}
    if ns and max(ns) <= 1:
        return ("n=1: one seed per row, so each cell is a single value (no ± std) and Δ is the single difference "
                "to the base (no confidence interval); run more seeds (--seeds 3) for intervals.")
    text = ("Cells: mean ± sample std over the seeds that finished (a single value where only one did). "
            "Δ: mean of the paired differences variant − base over the seeds both finished (same seed = same "
            f"initialisation and data order), with its 95 % t-interval (pairs − 1 degrees of freedom); {MARK} marks "
            "an interval that excludes 0.")
    if 1 in pairs:
        text += " A row with one pair has a difference but no interval."
    return text


# ---------------------------------------------------------------------------------------------- plots
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "ablation"


def _history(path: Path) -> list[dict]:
    out = []
    try:
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    except OSError:
        pass
    return out


def _mean_curve(histories: list[list[dict]], key: str) -> tuple[list[int], list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for h in histories:
        for r in h:
            if finite(r.get(key)) and "epoch" in r:
                by_epoch.setdefault(int(r["epoch"]), []).append(float(r[key]))
    xs = sorted(by_epoch)
    return xs, [sum(by_epoch[x]) / len(by_epoch[x]) for x in xs]


def _plots(t: Table, grid_ab: dict, store: Store, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return []
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    stem = f"{t.index:02d}-{_slug(t.name)}"
    cols = t.columns[:6]
    ncol = min(3, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    numeric = t.numeric and finite(t.base_value) if t.base_value is not None else t.numeric
    for ax, (c, header) in zip(axes.flat, cols):
        rows = [r for r in t.rows if r.cells[c].mean is not None]
        if numeric:
            pts = sorted(((float(t.base_value) if r.is_base else float(r.value), r) for r in rows
                          if r.is_base or finite(r.value)), key=lambda p: p[0])
            xs = [p[0] for p in pts]
            ys = [p[1].cells[c].mean for p in pts]
            es = [p[1].cells[c].std or 0.0 for p in pts]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4)
            for x, r in pts:
                if r.is_base:
                    ax.plot([x], [r.cells[c].mean], marker="*", markersize=14, color="tab:red", label="base", zorder=5)
            pos = [x for x in xs if x > 0]
            if pos and len(pos) == len(xs) and max(pos) / min(pos) >= 100:
                ax.set_xscale("log")
            ax.set_xlabel(f"{t.knob} ({t.path})", fontsize=8)
            if any(r.is_base for _, r in pts):
                ax.legend(fontsize=7)
        else:
            labels = [(f"base ({format_value(t.base_value)})" if r.is_base else r.label) for r in rows]
            ys = [r.cells[c].mean for r in rows]
            es = [r.cells[c].std or 0.0 for r in rows]
            colors = ["tab:red" if r.is_base else "tab:blue" for r in rows]
            ax.bar(range(len(rows)), ys, yerr=es, capsize=4, color=colors)
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
            if ys:
                lo, hi = min(y - e for y, e in zip(ys, es)), max(y + e for y, e in zip(ys, es))
                pad = (hi - lo) * 0.3 or abs(hi) * 0.05 or 1.0
                if lo > 0 and lo - pad > 0:
                    ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(header, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    fig.suptitle(f"{t.name}: {t.knob}", fontsize=10)
    fig.tight_layout()
    p = plots_dir / f"{stem}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    # training curves
    stages = ["student"] + (["teacher"] if grid_ab.get("teacher_varies") else [])
    fig, axes = plt.subplots(len(stages), 2, figsize=(10, 3.3 * len(stages)), squeeze=False)
    any_curve = False
    for si, stage in enumerate(stages):
        for r in t.rows:
            if r.same_as_base:
                continue
            hists = []
            for k in r.keys:
                if stage == "student":
                    hists.append(_history(store.run_dir(k) / "metrics.jsonl"))
                else:
                    rec = store.record(store.run_dir(k)) or read_json(store.run_dir(k) / "record.json") or {}
                    tk = rec.get("teacher_key")
                    if tk:
                        hists.append(_history(store.teacher_dir(tk) / "metrics.jsonl"))
            label = "base" if r.is_base else r.label
            for j, key in enumerate(("test_top1", "train_loss")):
                xs, ys = _mean_curve(hists, key)
                if xs:
                    any_curve = True
                    axes[si][j].plot(xs, ys, marker=".", label=label, linewidth=2.2 if r.is_base else 1.2)
        for j, key in enumerate(("test top-1 (%)", "train loss")):
            axes[si][j].set_title(f"{stage}: {key} per epoch (mean over seeds)", fontsize=9)
            axes[si][j].set_xlabel("epoch", fontsize=8)
            axes[si][j].grid(alpha=0.3)
            if axes[si][j].lines:
                axes[si][j].legend(fontsize=7)
    fig.tight_layout()
    if any_curve:
        p = plots_dir / f"{stem}-curves.png"
        fig.savefig(p, dpi=110)
        paths.append(p)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------- report
def _results_csv(grid: dict, store: Store) -> str:
    labels: dict[str, list[str]] = {}
    for s, k in grid["base_runs"].items():
        labels.setdefault(k, []).append("base")
    for ab in grid["ablations"]:
        for k in ab.get("base_runs", {}).values():
            labels.setdefault(k, []).append(f"{ab['name']}: base")
        for v in ab["variants"]:
            for s, k in v["runs"].items():
                labels.setdefault(k, []).append(f"{ab['name']}: {v['label']}")
    recs = []
    keys: list[str] = []
    for k, names in labels.items():
        rec = store.record(store.run_dir(k))
        row = {"key": k, "variants": "; ".join(dict.fromkeys(names)),
               "status": rec["status"] if rec else "missing", "seed": rec.get("seed") if rec else None,
               "error": rec.get("error") if rec else None, "teacher_key": rec.get("teacher_key") if rec else None}
        for mk, mv in sorted((rec or {}).get("metrics", {}).items()):
            if finite(mv) or mv is None:
                row[mk] = mv
        recs.append(row)
        keys += [c for c in row if c not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(recs)
    return buf.getvalue()


def _not_run(grid: dict, n_run: int) -> list[str]:
    """The "Not run" section: each ablation that did not resolve, the reason, and the fix where one exists."""
    unresolved = grid.get("unresolved") or []
    if not unresolved:
        return []
    n = len(unresolved)
    md = ["## Not run", "",
          f"{n} of {n + n_run} ablations of the plan could not be resolved and were not run "
          "(`kdlab ablate PLAN --explain` shows how each was read):", ""]
    for u in unresolved:
        line = f", line {u['line']}" if u.get("line") else ""
        md.append(f"- **#{u['index']} {u['name']}** ({u['action']} \"{u['part']}\"{line})")
        for p in u["problems"]:
            md.append(f"  - {p['reason']}" + (f"; fix: {p['fix']}" if p.get("fix") else ""))
        close = ", ".join(f"{k} ({sc:.2f})" for k, sc, _ in u.get("candidates", [])[:3] if sc > 0)
        if close:
            md.append(f"  - closest knobs: {close}")
    return md + [""]


def build_report(out: str | Path) -> ReportResult:
    """Rebuild tables, report.md, plots, results.csv and tables.json of an ablation output folder."""
    out = Path(out)
    store = Store(out)
    grid = store.read_grid()
    if grid is None:
        raise SweepError(f"{out} holds no grid.json: not a `kdlab ablate` output folder (or nothing ran there yet)")
    tables = _tables(grid, store)
    plan = grid.get("plan")  # absent for a grid file run with `kdlab sweep`
    base = grid["base"]
    md = [
        f"# Ablation report: {plan['title'] if plan else grid.get('name', out.name)}",
        "",
        f"Plan `{plan['source']}` ({plan['format']}), method **{grid['scope']}** ({grid['scope_reason']})."
        if plan else f"Grid `{grid.get('base_name', '')}`.",
        f"Base `{grid.get('base_name', 'grid base')}`" + (f" with overrides `{' '.join(grid['overrides'])}`" if grid.get("overrides") else "")
        + f": teacher {base['teacher']['arch']} ({base['teacher']['epochs']} epochs, objective {base['objective']['kind']}) -> "
        f"student {base['student']['arch']} ({base['student']['epochs']} epochs, {'+'.join(base['distill']['methods']) or 'CE only'}) "
        f"on {base['data']['name']}; seeds {', '.join(map(str, grid['seeds']))}.",
        *[f"- Warning (base): {w}" for w in grid.get("warnings", [])],
        "",
        "top1/top5 are the last epoch's test accuracy (%), convergence_epoch the first epoch reaching 95 % of the final "
        "top-1, loss_std / loss_spikes the stability of the per-step training loss, peak_mem_mb the peak memory, "
        "`<term>_loss` the last epoch's mean of that weighted term of the training loss. Each table says how to "
        "read its cells, Δ and the confidence intervals under it.",
        "",
    ]
    not_run = _not_run(grid, len(tables))
    md += not_run
    plots: list[Path] = []
    text_parts = ["\n".join(not_run).strip()] if not_run else []
    n_done = n_failed = n_missing = 0
    for t, ab in zip(tables, grid["ablations"]):
        md.append(f"## {t.index}. {t.name}")
        md.append("")
        if t.part:
            md.append(f"- Ablated part: {t.part}")
        md.append(f"- Action: {t.action} -> knob `{t.knob}` = `{t.path}` ({t.how}); base value `{format_value(t.base_value)}`")
        if t.base_note:
            md.append(f"- Base row: {t.base_note}")
        for v in ab["variants"]:
            ov = ", ".join(f"`{k}={format_value(x)}`" for k, x in v["overrides"].items())
            raw = f" (plan: \"{v['raw']}\")" if v.get("raw") and v["raw"] != v["label"] else ""
            md.append(f"  - {v['label']}: {ov}{raw}")
        md.append("")
        table = render_table(t)
        md.append(table)
        md.append("")
        if t.not_measured:
            md.append(f"Not measured (no kdlab metric of that name): {', '.join(t.not_measured)}.")
        if t.unrecorded:
            md.append(f"Not recorded by these runs: {', '.join(t.unrecorded)}.")
        md += [f"- Metric: {n}" for n in t.notes]
        md += [f"- Warning: {w}" for w in t.warnings]
        errs = [(r.label, e) for r in t.rows for e in r.errors]
        if errs:
            md.append("")
            md.append("Failed runs:")
            for label, e in errs:
                md.append(f"- {label}, {e}")
        md.append("")
        for p in _plots(t, ab, store, out):
            plots.append(p)
            md.append(f"![{p.stem}](plots/{p.name})")
        md.append("")
        text_parts.append("\n".join([f"[{t.index}] {t.name} ({t.knob} = {t.path})", table]
                                    + ([f"not measured: {', '.join(t.not_measured)}"] if t.not_measured else [])
                                    + [f"metric: {n}" for n in t.notes] + [f"warning: {w}" for w in t.warnings]))
    all_keys = set(grid["base_runs"].values()) | {k for ab in grid["ablations"] for v in ab["variants"] for k in v["runs"].values()}
    all_keys |= {k for ab in grid["ablations"] for k in ab.get("base_runs", {}).values()}
    for k in all_keys:
        rec = store.record(store.run_dir(k))
        if rec is None:
            n_missing += 1
        elif rec["status"] == "done":
            n_done += 1
        else:
            n_failed += 1
    md.append(f"Runs: {n_done} done, {n_failed} failed, {n_missing} missing (of {len(all_keys)}).")
    report_path = out / "report.md"
    atomic_write_text(report_path, "\n".join(md) + "\n")
    atomic_write_text(out / "results.csv", _results_csv(grid, store))
    atomic_write_json(out / "tables.json", [t.to_dict() for t in tables])
    text = "\n\n".join(text_parts) + f"\n\nRuns: {n_done} done, {n_failed} failed, {n_missing} missing. Report: {report_path}"
    return ReportResult(out, report_path, tables, plots, text, n_done, n_failed, n_missing)


def rebuild_report(out: str | Path) -> str:
    """What ``kdlab report DIR`` prints: rebuild everything from the store and return the tables as text."""
    return build_report(out).text
