"""Shipped recipes and the published numbers they should reproduce, as data.

Recipes are experiment configs under ``kdlab/configs/<dataset>/<teacher>_<student>.yaml`` (load them with
:func:`kdlab.config.load_config`, e.g. ``load_config("cifar100/resnet56_resnet20")``). Beside them, each
dataset folder holds a ``reference.yaml`` with the published top-1 numbers for its pairs (teacher, student
alone, KD, RKD, CRD, DKD, CoCoRD, ...), the source of every number and the source's reporting protocol.

* :func:`reference_for` finds the published numbers for a config (dataset + teacher arch + student arch).
* :func:`expected_vs_got` lines a finished run's summary metrics up against them, choosing the run's
  last-epoch or best-epoch accuracy to match each source's protocol (RepDistiller: last epoch; mdistiller:
  best epoch, mean of several runs).
* :func:`rows_to_markdown` renders those rows for a report.
* :func:`run_overrides` / :func:`method_config` set a recipe up to run a column's method as its source ran it
  (``distill.methods`` plus the reference file's ``runs``: RepDistiller's two-phase AB/FSP/FT, logit
  standardization's switch, mdistiller's per-pair DKD β); :func:`column_for` names the column of a config.

Example::

    from kdlab.recipes import reference_for, expected_vs_got, rows_to_markdown
    ref = reference_for("cifar100/resnet32x4_resnet8x4")
    rows = expected_vs_got(summary["metrics"], ref, method="kd")
    print(rows_to_markdown(rows))
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from kdlab.config import ConfigError, shipped_configs_dir, shipped_recipes
from kdlab.experiment.schema import ExperimentConfig, build_config, load_config

REFERENCE_FILE = "reference.yaml"

#: The reference columns, with the distillation methods (``distill.methods``) each one stands for.
METHOD_COLUMNS: dict[str, tuple[str, ...]] = {
    "teacher": (),
    "student": (),
    "kd": ("kd",),
    "rkd": ("rkd",),
    "crd": ("crd",),
    "crd_kd": ("crd", "kd"),
    "dkd": ("dkd",),
    "cocord": ("cocord",),
    "cocord_kd": ("cocord", "kd"),
    "kd_dot": (),  # KD trained with mdistiller's DOT optimiser; no kdlab method maps here
    "ab": ("ab",),
    "cc": ("cc",),
    "fsp": ("fsp",),
    "ft": ("ft",),
    "kdsvd": ("kdsvd",),
    "nst": ("nst",),
    "vid": ("vid",),
    "ofd": ("ofd",),
    "reviewkd": ("reviewkd",),
    "ctkd": ("ctkd",),
    # KD / DKD with logit standardization: the same methods with a switch on (the reference file's `runs`), so a
    # method list alone never selects these columns; name them ("kd_ls") or use column_for(cfg)
    "kd_ls": ("kd",),
    "dkd_ls": ("dkd",),
}
_LABELS = {
    "teacher": "teacher", "student": "student alone (CE)", "kd": "KD", "rkd": "RKD", "crd": "CRD",
    "crd_kd": "CRD+KD", "dkd": "DKD", "cocord": "CoCoRD", "cocord_kd": "CoCoRD+KD", "kd_dot": "KD+DOT",
    "ab": "AB", "cc": "CC", "fsp": "FSP", "ft": "FT", "kdsvd": "KDSVD", "nst": "NST", "vid": "VID", "ofd": "OFD",
    "reviewkd": "ReviewKD", "ctkd": "CTKD", "kd_ls": "KD+LS (logit standardization)",
    "dkd_ls": "DKD+LS (logit standardization)",
}
#: columns that a method list alone does not identify: (column, method list, config path that must be true)
_SWITCHED = (("kd_ls", ("kd",), "distill.kd.logit_std"), ("dkd_ls", ("dkd",), "distill.dkd.logit_std"))
_ALIASES = {
    "t": "teacher", "s": "student", "ce": "student", "none": "student", "alone": "student",
    "vanilla": "student", "baseline": "student",
}


# ------------------------------------------------------------------------------------------ recipes
def list_recipes() -> list[str]:
    """Names of the shipped recipes (``cifar100/resnet56_resnet20``, ...), reference files excluded."""
    return shipped_recipes()


def reference_files() -> list[Path]:
    """Every shipped ``reference.yaml`` (one per dataset folder)."""
    return sorted(shipped_configs_dir().rglob(REFERENCE_FILE))


@lru_cache(maxsize=None)
def _read_reference(path: str) -> dict:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or "dataset" not in data or "pairs" not in data:
        raise ConfigError(f"{path}: a reference file needs 'dataset' and 'pairs' sections")
    return data


def load_references() -> list[dict]:
    """The parsed reference files (deep copies: callers may modify them)."""
    return [copy.deepcopy(_read_reference(str(p))) for p in reference_files()]


def _as_config(cfg_or_recipe_name: Any) -> ExperimentConfig:
    if isinstance(cfg_or_recipe_name, ExperimentConfig):
        return cfg_or_recipe_name
    if isinstance(cfg_or_recipe_name, Mapping):  # a config tree, e.g. a run folder's config.yaml
        return build_config(dict(cfg_or_recipe_name))
    if isinstance(cfg_or_recipe_name, (str, Path)):
        return load_config(str(cfg_or_recipe_name))
    raise TypeError(f"reference_for() takes an ExperimentConfig, a config mapping or a recipe name/path, "
                    f"got {type(cfg_or_recipe_name).__name__}")


def _dataset_key(name: str) -> str:
    key = name.lower().replace("_", "-")
    return {"cifar-10": "cifar10", "cifar-100": "cifar100", "tinyimagenet": "tiny-imagenet",
            "tiny-imagenet-200": "tiny-imagenet"}.get(key, key)


def reference_for(cfg_or_recipe_name: Any) -> dict | None:
    """The published numbers for a config's (dataset, teacher arch, student arch), or ``None``.

    Accepts an :class:`~kdlab.config.ExperimentConfig`, a config mapping (a run's ``config.yaml``) or a
    recipe name / YAML path (``"cifar100/resnet32x4_resnet8x4"``). Returns a new dict::

        {"dataset": "cifar100", "pair": "resnet32x4_resnet8x4", "teacher": "resnet32x4",
         "student": "resnet8x4", "metric": "...", "top1": {"teacher": 79.42, "kd": 73.33, ...},
         "sources": {"kd": {"name": "repdistiller", "cite": "...", "protocol": "...",
                            "compare_with": "top1"}, ...},
         "notes": [...], "runs": {"ab": ["distill.ab.init_epochs=30", ...], ...},
         "file": "/.../configs/cifar100/reference.yaml"}

    ``runs``: per column, the overrides beyond its ``distill.methods`` with which the source ran the method
    (see :func:`run_overrides`).

    ``top1`` values are percentages; ``None`` where the sources publish nothing.
    """
    cfg = _as_config(cfg_or_recipe_name)
    dataset = _dataset_key(cfg.data.name)
    for path in reference_files():
        ref = _read_reference(str(path))
        if _dataset_key(str(ref["dataset"])) != dataset:
            continue
        for pair, entry in ref["pairs"].items():
            if entry.get("teacher") == cfg.teacher.arch and entry.get("student") == cfg.student.arch:
                return _resolve(ref, pair, entry, path)
    return None


def _resolve(ref: dict, pair: str, entry: dict, path: Path) -> dict:
    sources = ref.get("sources") or {}
    columns = dict(ref.get("columns") or {})
    columns.update(entry.get("columns") or {})  # a pair may take a number from another source
    top1 = {k: (None if v is None else float(v)) for k, v in (entry.get("top1") or {}).items()}
    # a file without its own `runs` section takes the method-level settings of the files that have one
    runs = {k: list(v) for k, v in (ref["runs"] if "runs" in ref else _global_runs()).items()}
    for k, v in (entry.get("runs") or {}).items():  # a pair's own settings go after the global ones
        runs[k] = runs.get(k, []) + list(v)
    resolved = {}
    for key in top1:
        src = columns.get(key)
        info = dict(sources.get(src) or {}) if src else {}
        resolved[key] = {"name": src, "cite": info.get("cite"), "protocol": info.get("protocol"),
                         "compare_with": info.get("compare_with", "top1")}
    return {
        "dataset": ref["dataset"], "pair": pair, "teacher": entry["teacher"], "student": entry["student"],
        "metric": ref.get("metric"), "top1": top1, "sources": resolved,
        "notes": list(entry.get("notes") or []), "runs": runs, "file": str(path),
    }


# ----------------------------------------------------------------------------- a method on a recipe
def run_overrides(cfg_or_recipe_name: Any, column: str | Sequence[str]) -> list[str]:
    """The overrides that run the method of reference ``column`` on a recipe as its published number was
    obtained: ``distill.methods=[...]`` (:data:`METHOD_COLUMNS`) followed by the reference file's ``runs`` for
    the column (global, then the pair's own), e.g. for ``"ab"``: ``["distill.methods=[ab]",
    "distill.ab.init_epochs=30", "distill.ab.weight=0"]``. ``"student"`` is ``distill.methods=[]``.

    Put them after the recipe and before your own overrides (``kdlab distill RECIPE <these> data.root=...``),
    or use :func:`method_config`. A column without a kdlab method (``teacher``, ``kd_dot``) is a ValueError.
    """
    key = method_key(column)
    if key == "teacher" or (key != "student" and not METHOD_COLUMNS.get(key)):
        raise ValueError(f"reference column {key!r} is not a distillation method kdlab runs "
                         f"(methods: {', '.join(k for k, v in METHOD_COLUMNS.items() if v)}, or 'student')")
    methods = METHOD_COLUMNS.get(key, ())
    out = [f"distill.methods=[{','.join(methods)}]"]
    ref = reference_for(cfg_or_recipe_name)
    runs = ref["runs"] if ref is not None else _global_runs()  # no numbers for the pair: the method's settings
    return out + list(runs.get(key, []))


def _global_runs() -> dict[str, list[str]]:
    """The ``runs`` sections of every reference file, merged (the first file that sets a column wins)."""
    merged: dict[str, list[str]] = {}
    for path in reference_files():
        for key, value in (_read_reference(str(path)).get("runs") or {}).items():
            merged.setdefault(key, list(value))
    return merged


def method_config(recipe: Any, column: str | Sequence[str], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """A recipe (name, path or config) with the method of reference ``column`` set up as its source ran it
    (:func:`run_overrides`), then ``overrides``. ``method_config("cifar100/resnet32x4_resnet8x4", "ab",
    ["data.root=/data/cifar-100-python"])``."""
    cfg = _as_config(recipe)
    return build_config(cfg, run_overrides(cfg, column) + list(overrides))


def column_for(cfg_or_recipe_name: Any) -> str:
    """The reference column a config's student run corresponds to: its ``distill.methods`` (see
    :func:`method_key`), or ``kd_ls`` / ``dkd_ls`` when that method runs with logit standardization."""
    cfg = _as_config(cfg_or_recipe_name)
    methods = list(cfg.distill.methods)
    tree = cfg.model_dump()
    for column, wanted, switch in _SWITCHED:
        if sorted(methods) == sorted(wanted) and _get(tree, switch):
            return column
    return method_key(methods)


def _get(tree: Mapping, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


# ----------------------------------------------------------------------------------- expected vs got
def method_key(method: str | Sequence[str] | None) -> str:
    """The reference column for a method: ``"kd"``, ``"crd+kd"`` / ``["crd", "kd"]`` -> ``"crd_kd"``,
    ``[]`` / ``"ce"`` / ``"none"`` -> ``"student"``, ``"teacher"`` -> ``"teacher"``."""
    if method is None:
        return "student"
    if isinstance(method, str):
        text = method.strip().lower().replace("-", "_")
        if text in METHOD_COLUMNS:
            return text
        if text in _ALIASES:
            return _ALIASES[text]
        parts = [p for p in text.replace("+", ",").replace("_", ",").replace(" ", ",").split(",") if p]
    else:
        parts = [str(p).strip().lower() for p in method]
    if not parts:
        return "student"
    wanted = tuple(sorted(set(parts)))
    for key, methods in METHOD_COLUMNS.items():
        if methods and tuple(sorted(methods)) == wanted:
            return key
    raise ValueError(f"no reference column for method {method!r}; known: {', '.join(METHOD_COLUMNS)} "
                     "(or a list of distill.methods such as ['crd', 'kd'])")


def expected_vs_got(summary_metrics: Mapping[str, Any] | None, reference: Mapping[str, Any] | None,
                    method: str | Sequence[str] | None = "kd", *, context: bool = True) -> list[dict]:
    """Rows comparing a run's top-1 with the published number for ``method`` (and, with ``context``, the
    published teacher and student-alone numbers of the pair, without a "got").

    ``summary_metrics``: a run's summary metrics (``top1`` = last epoch, ``top1_best`` = best epoch; a
    whole ``summary.json`` dict with a ``metrics`` entry is accepted too) or ``None``.
    ``method``: the reference column the run corresponds to (see :func:`method_key`): ``"kd"`` for a KD
    student, ``"teacher"`` for a teacher run, ``"student"`` for a student trained alone, ...

    Each row: ``{"pair", "role" ("compared"|"context"), "column", "label", "expected", "got", "delta"
    (got - expected, or None), "got_metric" (top1 | top1_best), "source", "protocol"}``. The run's
    last-epoch ``top1`` is compared with last-epoch sources and ``top1_best`` with best-epoch ones.
    Returns ``[]`` when ``reference`` is None.
    """
    if not reference:
        return []
    metrics: Mapping[str, Any] = summary_metrics or {}
    if isinstance(metrics.get("metrics"), Mapping):
        metrics = metrics["metrics"]
    key = method_key(method)
    top1 = reference.get("top1") or {}
    sources = reference.get("sources") or {}
    if key not in top1 and key not in METHOD_COLUMNS:
        raise ValueError(f"reference for {reference.get('pair')!r} has no column {key!r}")
    keys = [key] + ([k for k in ("teacher", "student") if k != key and k in top1] if context else [])
    rows = []
    for k in keys:
        src = sources.get(k) or {}
        metric = src.get("compare_with") or "top1"
        compared = k == key
        got = metrics.get(metric) if compared else None
        if compared and got is None and metric != "top1":  # a run without best-epoch tracking
            metric, got = "top1", metrics.get("top1")
        got = None if got is None else float(got)
        expected = top1.get(k)
        rows.append({
            "pair": reference.get("pair"),
            "role": "compared" if compared else "context",
            "column": k,
            "label": _LABELS.get(k, k),
            "expected": expected,
            "got": got,
            "delta": None if (got is None or expected is None) else round(got - expected, 2),
            "got_metric": metric if compared else None,
            "source": src.get("cite"),
            "protocol": src.get("protocol"),
        })
    return rows


def rows_to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of :func:`expected_vs_got` rows (``-`` for missing values)."""

    lines = ["| pair | row | expected top-1 | got | delta | source (protocol) |", "|---|---|---|---|---|---|"]
    for r in rows:
        got = "-" if r.get("got") is None else f"{r['got']:.2f} ({r.get('got_metric')})"
        exp = "-" if r.get("expected") is None else f"{r['expected']:.2f}"
        delta = "-" if r.get("delta") is None else f"{r['delta']:+.2f}"
        src = "-" if not r.get("source") else f"{r['source']} ({r.get('protocol')})"
        lines.append(f"| {r.get('pair') or '-'} | {r.get('label')} | {exp} | {got} | {delta} | {src} |")
    return "\n".join(lines)


__all__ = [
    "METHOD_COLUMNS",
    "column_for",
    "expected_vs_got",
    "list_recipes",
    "load_references",
    "method_config",
    "method_key",
    "reference_files",
    "reference_for",
    "rows_to_markdown",
    "run_overrides",
]
