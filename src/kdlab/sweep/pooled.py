"""One paired table from the finished runs of several results stores (``kdlab table``).

A study grows over sessions: a first grid, then one more λ, then a lower δ, each in its own store with its own
report. ``pooled_table`` reads the finished student runs of any number of stores and compares them in one table:

* **groups**: runs are grouped by what they are, the run identity without the seed
  (:func:`kdlab.experiment.identity.identity_tree`, stage ``variant``). The same run found in two stores (a store
  copied into another to share its teachers) counts once. ``by`` groups by the named config keys instead.
* **columns**: the config keys on which the groups differ (a key a group does not have, such as the intra-class
  λ of a CE teacher, shows as ``–``), the seeds that finished, then for each metric the mean ± sample std and
  Δ against the base group over paired seeds with its 95 % t-interval (:mod:`kdlab.sweep.stats`, the statistics
  of every ablation report).
* **base**: the group matching every ``base`` condition; by default the base run of the first store that has one
  (its grid.json).

Conditions are ``key=value`` with ``key`` a dotted config path (``objective.intra.lambda_``) and ``value`` read as
YAML (``0.02``, ``intra``, ``[kd, rkd]``); a list-valued key also matches a single value (``distill.methods=kd``
is ``[kd]``). Bad input (a folder that is no store, a key no run has, a base that matches no group or several)
raises :class:`kdlab.config.ConfigError` with what to change.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from kdlab.config import ConfigError
from kdlab.experiment.identity import ADDED_LATER, identity_tree
from kdlab.experiment.terms import term_value
from kdlab.sweep.grid import format_value
from kdlab.sweep.report import MARK, _columns, format_delta, mean_std_text
from kdlab.sweep.stats import PairedDelta, finite, paired_delta, summarize_values
from kdlab.sweep.store import RECORD, read_json

__all__ = ["Group", "PooledTable", "pooled_table", "render_pooled"]

MISSING = "–"


@dataclass
class Group:
    """The finished runs of one config: ``values`` its values of the table's key columns, ``per_seed`` metric ->
    seed -> value, ``delta`` metric -> Δ vs the base group (empty for the base)."""

    flat: dict[str, Any]
    runs: dict[int, dict] = field(default_factory=dict)  # seed -> record (status done)
    failed: int = 0
    sources: set[str] = field(default_factory=set)
    values: dict[str, Any] = field(default_factory=dict)
    per_seed: dict[str, dict[int, float]] = field(default_factory=dict)
    delta: dict[str, PairedDelta] = field(default_factory=dict)
    is_base: bool = False


@dataclass
class PooledTable:
    keys: list[str]
    metrics: list[str]
    groups: list[Group]  # the base group first
    stores: list[str]
    skipped: int = 0  # runs left out by the ``where`` conditions

    def to_dict(self) -> dict:
        def cell(g: Group, m: str) -> dict:
            s = summarize_values(g.per_seed[m].values())
            return {"mean": s.mean, "std": s.std, "n": s.n, "per_seed": {str(k): v for k, v in g.per_seed[m].items()}}

        return {"stores": self.stores, "keys": self.keys, "metrics": self.metrics,
                "groups": [{"config": g.values, "is_base": g.is_base, "seeds": sorted(g.runs), "failed": g.failed,
                            "runs": [g.runs[s]["key"] for s in sorted(g.runs)],
                            "metrics": {m: cell(g, m) for m in self.metrics},
                            "delta": {m: d.to_dict() for m, d in g.delta.items()}} for g in self.groups]}


# ------------------------------------------------------------------------------------------- reading
def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, path + "."))
        else:
            out[path] = v
    return out


def _identity(cfg: dict) -> dict[str, Any]:
    """The run's variant identity as dotted keys, with the keys identity leaves out at their default
    (:data:`ADDED_LATER`) put back where their block is there, so that a default reads as the value it is."""
    flat = _flatten(identity_tree(cfg, "variant"))
    for dotted, default in ADDED_LATER.items():
        parent = dotted.rsplit(".", 1)[0] + "."
        if any(k.startswith(parent) for k in flat):
            flat.setdefault(dotted, default)
    return flat


def _store_records(folder: Path) -> list[dict]:
    if not (folder / "runs").is_dir():
        hint = " (it has teachers/ only: its students have not finished)" if (folder / "teachers").is_dir() else ""
        raise ConfigError(f"{folder} is not a results store{hint}: give the --out folder of a `kdlab sweep` or "
                          "`kdlab ablate` run, which holds runs/<key>/record.json")
    recs = []
    for p in sorted((folder / "runs").glob(f"*/{RECORD}")):
        rec = read_json(p)
        if isinstance(rec, dict) and rec.get("status") in ("done", "failed") and isinstance(rec.get("config"), dict):
            recs.append({**rec, "key": rec.get("key") or p.parent.name})
    return recs


def _conditions(items: Iterable[str], what: str) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r} must look like key=value, e.g. objective.intra.lambda_=0.02")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{what} {item!r}: the value does not read as YAML ({e})") from None
    return out


def _matches(flat: dict[str, Any], conds: dict[str, Any]) -> bool:
    for key, want in conds.items():
        have = flat.get(key, MISSING)
        if have == want or (isinstance(have, list) and not isinstance(want, list) and have == [want]):
            continue
        if isinstance(have, (int, float)) and isinstance(want, (int, float)) and not isinstance(have, bool) \
                and float(have) == float(want):
            continue
        return False
    return True


def _check_keys(conds: dict[str, Any], known: set[str], what: str) -> None:
    for key in conds:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=4, cutoff=0.6)
            raise ConfigError(f"{what} key {key!r} is not a config key of any run here"
                              + (f"; did you mean {', '.join(near)}?" if near else
                                 "; keys are dotted config paths such as objective.intra.lambda_ or distill.methods"))


def _label(g: Group, keys: list[str]) -> str:
    return ", ".join(f"{k}={format_value(g.values[k])}" for k in keys if g.values[k] != MISSING) or "(all equal)"


# ------------------------------------------------------------------------------------------- the table
def pooled_table(stores: Iterable[str | Path], base: Iterable[str] = (), where: Iterable[str] = (),
                 metrics: Iterable[str] = (), by: Iterable[str] = ()) -> PooledTable:
    """Group the finished student runs of ``stores`` and compare every group with the base group, paired by seed."""
    folders = [Path(s) for s in stores]
    if not folders:
        raise ConfigError("give at least one results store (the --out folder of a kdlab sweep or ablate)")
    by, metrics = list(by), list(metrics)
    where_c, base_c = _conditions(where, "--where"), _conditions(base, "--base")

    # one entry per run: the same config and seed in two stores (a store copied into another, or recorded under
    # an earlier identity version's folder name) is one run, taken from the first store that has it
    records: dict[str, tuple[dict, dict[str, Any], str]] = {}
    for folder in folders:
        for rec in _store_records(folder):
            flat = _identity(rec["config"])
            records.setdefault(json.dumps([flat, rec.get("seed")], sort_keys=True, default=str), (rec, flat, str(folder)))
    if not records:
        raise ConfigError(f"no finished runs in {', '.join(map(str, folders))}")
    known = {k for _, flat, _ in records.values() for k in flat}
    for conds, what in ((where_c, "--where"), (base_c, "--base"), (dict.fromkeys(by), "--by")):
        _check_keys(conds, known, what)

    kept = {k: v for k, v in records.items() if _matches(v[1], where_c)}
    if not kept:
        raise ConfigError(f"no run matches --where {' '.join(where)}")
    groups: dict[str, Group] = {}
    for rec, flat, store in kept.values():
        ident = {k: flat.get(k, MISSING) for k in by} if by else flat
        gkey = json.dumps(ident, sort_keys=True, default=str)
        g = groups.setdefault(gkey, Group(flat=dict(ident)))
        g.sources.add(store)
        if rec["status"] != "done":
            g.failed += 1
            continue
        seed = int(rec["seed"])
        if seed in g.runs:
            other = _identity(g.runs[seed]["config"])
            differ = sorted(k for k in set(flat) | set(other) if flat.get(k, MISSING) != other.get(k, MISSING))
            raise ConfigError(f"two different runs with seed {seed} fall in one group of --by {', '.join(by)}: "
                              f"they differ in {', '.join(differ[:5])}; add those keys to --by or narrow the runs "
                              "with --where")
        g.runs[seed] = rec

    group_list = list(groups.values())
    keys = by or _key_columns(group_list)
    for g in group_list:
        g.values = {k: g.flat.get(k, MISSING) for k in keys}

    metrics = metrics or _default_metrics(folders)
    seen = {m for rec, _, _ in kept.values() for m in rec.get("metrics", {})}
    for m in metrics:
        if "." not in m or (m not in seen and all(term_value(r.get("metrics", {}), m) is None for r, _, _ in kept.values())):
            options = sorted(x for x in seen if x.endswith(".top1") or m.split(".")[-1] in x)
            raise ConfigError(f"no run recorded the metric {m!r}; metrics are stage.key, e.g. "
                              f"{', '.join(options[:8]) or 'student.top1'}")
    for g in group_list:
        g.per_seed = {m: {s: float(v) for s, r in g.runs.items() if finite(v := term_value(r.get("metrics", {}), m))}
                      for m in metrics}

    base_group = _base_group(group_list, base_c, folders, records, keys)
    base_group.is_base = True
    for g in group_list:
        if g is not base_group:
            g.delta = {m: paired_delta(g.per_seed[m], base_group.per_seed[m]) for m in metrics}
    order = sorted((g for g in group_list if g is not base_group),
                   key=lambda g: [json.dumps(g.values[k], default=str) for k in keys])
    return PooledTable(keys, metrics, [base_group, *order], [str(f) for f in folders], len(records) - len(kept))


def _key_columns(groups: list[Group]) -> list[str]:
    """The keys on which the groups that have them differ (a CE teacher's missing λ is no difference by itself);
    where that leaves two groups looking alike, the keys that some groups lack as well."""
    def distinct(k: str, with_missing: bool) -> int:
        return len({json.dumps(g.flat.get(k, MISSING), default=str) for g in groups
                    if with_missing or k in g.flat})

    all_keys = sorted({k for g in groups for k in g.flat})
    keys = [k for k in all_keys if distinct(k, False) > 1]
    shown = {json.dumps([g.flat.get(k, MISSING) for k in keys], default=str) for g in groups}
    if len(shown) < len(groups):
        keys = [k for k in all_keys if distinct(k, True) > 1]
    return keys


def _default_metrics(folders: list[Path]) -> list[str]:
    """The metrics of the first store's ablations (its report's columns), else student top-1."""
    for folder in folders:
        grid = read_json(folder / "grid.json")
        if isinstance(grid, dict) and grid.get("ablations"):
            cols: list[str] = []
            for ab in grid["ablations"]:
                cols += [c for c, _ in _columns(ab)[0] if c not in cols]
            return cols
    return ["student.top1"]


def _base_group(groups: list[Group], conds: dict[str, Any], folders: list[Path], records: dict, keys: list[str]) -> Group:
    if conds:
        found = [g for g in groups if _matches(g.flat, conds)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise ConfigError(f"no group matches --base {conds}; the groups are: "
                              + "; ".join(_label(g, keys) for g in groups))
        raise ConfigError(f"{len(found)} groups match --base {conds}: "
                          + "; ".join(_label(g, keys) for g in found) + ". Add a key=value that tells them apart")
    for folder in folders:
        grid = read_json(folder / "grid.json")
        base_keys = set((grid or {}).get("base_runs", {}).values()) if isinstance(grid, dict) else set()
        for g in groups:
            if any(r["key"] in base_keys for r in g.runs.values()):
                return g
    if len(groups) == 1:
        return groups[0]
    raise ConfigError("say which group is the base with --base key=value (none of the stores has a base run "
                      "among these runs); the groups are: " + "; ".join(_label(g, keys) for g in groups))


# ------------------------------------------------------------------------------------------- output
def render_pooled(t: PooledTable) -> str:
    """The Markdown table with the command's legend under it."""
    head = ["", *t.keys, "seeds"]
    for m in t.metrics:
        head += [m, "Δ vs base [95 % CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in t.groups:
        cells = ["**base**" if g.is_base else ""]
        cells += [format_value(g.values[k]) if g.values[k] != MISSING else MISSING for k in t.keys]
        cells.append(",".join(map(str, sorted(g.runs))) + (f" ({g.failed} failed)" if g.failed else ""))
        for m in t.metrics:
            like = summarize_values(t.groups[0].per_seed[m].values()).mean
            s = summarize_values(g.per_seed[m].values())
            cells.append("n/a" if s.mean is None else mean_std_text(s.mean, s.std))
            cells.append("" if g.is_base else _delta_text(g.delta[m], like))
        lines.append("| " + " | ".join(cells) + " |")
    legend = ("Cells: mean ± sample std over the seeds that finished (a single value where one did). Δ: mean of the "
              "paired differences group − base over the seeds both finished (same seed = same initialisation and "
              f"data order), with its 95 % t-interval; {MARK} marks an interval that excludes 0; one pair gives the "
              "difference alone. Key columns: the config keys on which the groups differ (– where a group has no "
              f"such key). Stores: {', '.join(t.stores)}.")
    if t.skipped:
        legend += f" {t.skipped} runs left out by --where."
    return "\n".join(lines + ["", legend])


def _delta_text(d: PairedDelta, like: float | None) -> str:
    return format_delta(d, like) + (" (1 pair)" if d.pairs == 1 else "")
