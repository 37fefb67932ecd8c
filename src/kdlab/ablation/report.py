"""Tables, Markdown report and plots of an ablation, built from its results store alone.

``build_report(OUT)`` reads ``OUT/grid.json`` (the resolved plan, with the run keys of every variant and
seed) and the run records, and writes:

* ``OUT/report.md``: per ablation, what was changed (knob, config path, values), a table with each
  requested metric as mean ± std over the seeds that finished, Δ vs the base, and n ok/failed, the failed
  runs with their errors, metrics the plan asked for that kdlab does not measure, and the plots;
* ``OUT/plots/*.png``: metric vs value with error bars for numeric sweeps (bars for categorical ones), and
  training curves (test top-1 and train loss per epoch, mean over seeds) from each run's ``metrics.jsonl``;
* ``OUT/results.csv`` (one row per run) and ``OUT/tables.json`` (the tables, machine-readable).
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

from kdlab.ablation.plan import AblationError
from kdlab.ablation.resolve import format_value
from kdlab.ablation.store import Store, read_json
from kdlab.ablation.text import readable_text
from kdlab.engine.checkpoint import atomic_write_json, atomic_write_text

__all__ = ["Table", "Row", "ReportResult", "build_report", "rebuild_report", "render_table"]


@dataclass
class Cell:
    mean: float | None
    std: float | None
    n: int

    def text(self) -> str:
        if self.mean is None:
            return "n/a"
        return f"{_num(self.mean)} ± {_num(self.std or 0.0, like=self.mean)}"


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
    delta: dict[str, float | None]
    errors: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)


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

    def to_dict(self) -> dict:
        return {
            "index": self.index, "name": self.name, "part": self.part, "action": self.action, "knob": self.knob,
            "path": self.path, "numeric": self.numeric, "base_value": self.base_value,
            "columns": [c for c, _ in self.columns], "not_measured": self.not_measured, "unrecorded": self.unrecorded,
            "base_note": self.base_note,
            "rows": [
                {"label": r.label, "value": r.value, "is_base": r.is_base, "same_as_base": r.same_as_base,
                 "n_ok": r.n_ok, "n_failed": r.n_failed, "n_missing": r.n_missing, "runs": r.keys,
                 "metrics": {c: {"mean": x.mean, "std": x.std, "n": x.n} for c, x in r.cells.items()},
                 "delta": r.delta, "errors": r.errors}
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


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _stats(values: list[float]) -> Cell:
    vals = [float(v) for v in values if _finite(v)]
    if not vals:
        return Cell(None, None, 0)
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return Cell(m, sd, len(vals))


# ---------------------------------------------------------------------------------------------- tables
def _columns(ab: dict) -> tuple[list[tuple[str, str]], list[str]]:
    cols: list[tuple[str, str]] = []
    not_measured: list[str] = []
    for m in ab["metrics"]:
        if not m["keys"]:
            not_measured.append(readable_text(m["name"]))
            continue
        stages = [m["stage"]] if m.get("stage") else (["student", "teacher"] if ab.get("teacher_varies") else ["student"])
        for stage in stages:
            for key in m["keys"]:
                col = f"{stage}.{key}"
                if col not in [c for c, _ in cols]:
                    cols.append((col, f"{key} ({stage})"))
    if not cols:
        cols.append(("student.top1", "top1 (student)"))
    return cols, not_measured


def _row(label, value, is_base, same, keys: list[str], store: Store, cols) -> Row:
    recs = [store.record(store.run_dir(k)) for k in keys]
    ok = [r for r in recs if r is not None and r["status"] == "done"]
    failed = [r for r in recs if r is not None and r["status"] == "failed"]
    cells = {c: _stats([r.get("metrics", {}).get(c) for r in ok]) for c, _ in cols}
    errors = []
    for r in failed:
        e = f"seed {r.get('seed')}: {r.get('error')}"
        if e not in errors:
            errors.append(e)
    return Row(label, value, is_base, same, len(ok), len(failed), sum(r is None for r in recs), cells, {}, errors, keys)


def _tables(grid: dict, store: Store) -> list[Table]:
    tables = []
    base_keys = [grid["base_runs"][s] for s in sorted(grid["base_runs"], key=int)]
    for i, ab in enumerate(grid["ablations"], 1):
        cols, not_measured = _columns(ab)
        own = ab.get("base_runs")  # an ablation with a base of its own (see resolve.needed_distillers)
        keys = [own[s] for s in sorted(own, key=int)] if own else base_keys
        base = _row("base", ab.get("base_value"), True, False, keys, store, cols)
        rows = [base]
        for v in ab["variants"]:
            keys = [v["runs"][s] for s in sorted(v["runs"], key=int)]
            rows.append(_row(readable_text(v["label"]), v["value"], False, v.get("same_as_base", False), keys, store,
                             cols))
        for r in rows:
            for c, _ in cols:
                b, x = base.cells[c].mean, r.cells[c].mean
                r.delta[c] = None if r.is_base or b is None or x is None else x - b
        unrecorded = [h for c, h in cols if all(r.cells[c].mean is None for r in rows) and any(r.n_ok for r in rows)]
        # text from the plan is shown as readable ASCII: its damaged glyphs dropped (ablation.text)
        tables.append(Table(i, readable_text(ab["name"]), readable_text(ab["part"]), ab["action"], ab["knob"]["name"], ab["knob"]["path"], ab["how"],
                            bool(ab.get("numeric")), ab.get("base_value"), cols, rows, not_measured, unrecorded,
                            ab.get("base_note", "")))
    return tables


def render_table(t: Table) -> str:
    """The Markdown table of one ablation (also readable in a terminal)."""
    head = ["variant"]
    for _, h in t.columns:
        head += [h, "Δ vs base"]
    head.append("n ok/failed")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t.rows:
        label = f"base ({format_value(t.base_value)})" if r.is_base else r.label + (" (= base)" if r.same_as_base else "")
        cells = [label]
        for c, _ in t.columns:
            cells.append(r.cells[c].text())
            d = r.delta.get(c)
            like = t.rows[0].cells[c].mean
            cells.append("" if r.is_base else ("n/a" if d is None else (f"+{_num(d, like)}" if d >= 0 else _num(d, like))))
        n = f"{r.n_ok}/{r.n_failed}" + (f" ({r.n_missing} missing)" if r.n_missing else "")
        cells.append(n)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
            if _finite(r.get(key)) and "epoch" in r:
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
    numeric = t.numeric and _finite(t.base_value) if t.base_value is not None else t.numeric
    for ax, (c, header) in zip(axes.flat, cols):
        rows = [r for r in t.rows if r.cells[c].mean is not None]
        if numeric:
            pts = sorted(((float(t.base_value) if r.is_base else float(r.value), r) for r in rows
                          if r.is_base or _finite(r.value)), key=lambda p: p[0])
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
            if _finite(mv) or mv is None:
                row[mk] = mv
        recs.append(row)
        keys += [c for c in row if c not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(recs)
    return buf.getvalue()


def build_report(out: str | Path) -> ReportResult:
    """Rebuild tables, report.md, plots, results.csv and tables.json of an ablation output folder."""
    out = Path(out)
    store = Store(out)
    grid = store.read_grid()
    if grid is None:
        raise AblationError(f"{out} holds no grid.json: not a `kdlab ablate` output folder (or nothing ran there yet)")
    tables = _tables(grid, store)
    plan = grid["plan"]
    base = grid["base"]
    md = [
        f"# Ablation report: {readable_text(plan['title'])}",
        "",
        f"Plan `{plan['source']}` ({plan['format']}), method **{grid['scope']}** ({grid['scope_reason']}).",
        f"Base `{grid['base_name']}`" + (f" with overrides `{' '.join(grid['overrides'])}`" if grid.get("overrides") else "")
        + f": teacher {base['teacher']['arch']} ({base['teacher']['epochs']} epochs, objective {base['objective']['kind']}) -> "
        f"student {base['student']['arch']} ({base['student']['epochs']} epochs, {'+'.join(base['distill']['methods']) or 'CE only'}) "
        f"on {base['data']['name']}; seeds {', '.join(map(str, grid['seeds']))}.",
        "",
        "Cells are mean ± std (sample std over the seeds that finished); Δ is the difference of means to the base row. "
        "top1/top5 are the last epoch's test accuracy (%), convergence_epoch the first epoch reaching 95 % of the final "
        "top-1, loss_std / loss_spikes the stability of the per-step training loss, peak_mem_mb the peak memory.",
        "",
    ]
    plots: list[Path] = []
    text_parts = []
    n_done = n_failed = n_missing = 0
    for t, ab in zip(tables, grid["ablations"]):
        md.append(f"## {t.index}. {t.name}")
        md.append("")
        md.append(f"- Ablated part: {t.part}")
        md.append(f"- Action: {t.action} -> knob `{t.knob}` = `{t.path}` ({t.how}); base value `{format_value(t.base_value)}`")
        if t.base_note:
            md.append(f"- Base row: {t.base_note}")
        for v in ab["variants"]:
            ov = ", ".join(f"`{k}={format_value(x)}`" for k, x in v["overrides"].items())
            raw = f" (plan: \"{readable_text(v['raw'])}\")" if v.get("raw") and v["raw"] != v["label"] else ""
            md.append(f"  - {readable_text(v['label'])}: {ov}{raw}")
        md.append("")
        table = render_table(t)
        md.append(table)
        md.append("")
        if t.not_measured:
            md.append(f"Not measured (no kdlab metric of that name): {', '.join(t.not_measured)}.")
        if t.unrecorded:
            md.append(f"Not recorded by these runs: {', '.join(t.unrecorded)}.")
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
        text_parts.append(f"[{t.index}] {t.name} ({t.knob} = {t.path})\n{table}"
                          + (f"\nnot measured: {', '.join(t.not_measured)}" if t.not_measured else ""))
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
