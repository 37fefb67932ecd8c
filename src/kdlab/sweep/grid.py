"""The sweep grid: a base config, seeds, and per ablation its variants as config overrides.

This is what the sweep layer runs, stores and reports, and nothing in it depends on how the grid was made:
``kdlab ablate`` makes one from a plan (``--write-grid`` saves it), a person can write or edit one, and
``kdlab sweep GRID.yaml`` runs it. The file format (YAML or JSON)::

    name: intra-class ablations            # title of the report
    base: {... a full or partial config ...}
    seeds: [0, 1, 2]
    ablations:
      - name: Weight of the intra-class loss
        knob: intra.lambda                 # what the variants change (shown in tables; informational)
        path: objective.intra.lambda_
        base_overrides: {}                 # this ablation's own reference config (optional)
        metrics: [{name: Top-1 accuracy, keys: [top1], stage: null}]
        variants:
          - {label: "0.01", value: 0.01, overrides: {objective.intra.lambda_: 0.01}}

A variant's config is ``base`` + ``base_overrides`` + its ``overrides``. Everything else a plan reader
knows (the plan's text, how a part was matched) may ride along under ``info`` keys and reaches the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdlab.config import ConfigError
from kdlab.engine.checkpoint import atomic_write_text
from kdlab.experiment.identity import run_identity
from kdlab.experiment.schema import ExperimentConfig, build_config, get_path

__all__ = ["SweepError", "SweepVariant", "SweepAblation", "SweepGrid", "config_diff", "format_value", "load_grid", "write_grid"]


class SweepError(ValueError):
    """A sweep that cannot run (a bad grid file, bad executor options); one line that says how to fix it."""


@dataclass
class SweepVariant:
    label: str  # what tables show: "0.1", "supcon", "removed"
    value: Any  # for plots: a number for numeric sweeps, else the label
    overrides: dict[str, Any]  # dotted path -> value, on top of the ablation's reference config
    config: ExperimentConfig
    same_as_base: bool = False
    info: dict = field(default_factory=dict)  # e.g. the plan's raw text for it


@dataclass
class SweepAblation:
    name: str
    knob: str  # what the variants change, for labels ("intra.lambda")
    path: str  # its config path
    variants: list[SweepVariant]
    metrics: list[dict] = field(default_factory=list)  # {name, keys, stage}
    base: ExperimentConfig | None = None  # its own reference config; None: the grid's base
    base_overrides: dict[str, Any] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # what the plan reader knows (part, action, how, base_value, ...)

    @property
    def numeric(self) -> bool:
        vals = [v.value for v in self.variants]
        return bool(vals) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals)



@dataclass
class SweepGrid:
    name: str
    base: ExperimentConfig
    seeds: list[int]
    ablations: list[SweepAblation]
    info: dict = field(default_factory=dict)  # plan, scope, base name, overrides (for the report header)

    def configs(self) -> list[ExperimentConfig]:
        """The distinct configs of the grid (base first), without seeds."""
        seen: dict[str, ExperimentConfig] = {}
        own = [a.base for a in self.ablations if a.base is not None]
        for cfg in [self.base] + own + [v.config for a in self.ablations for v in a.variants]:
            seen.setdefault(run_identity(cfg, "variant"), cfg)
        return list(seen.values())

    def teacher_varies(self, ablation: SweepAblation) -> bool:
        ref = ablation.base if ablation.base is not None else self.base
        return any(run_identity(v.config, "teacher") != run_identity(ref, "teacher") for v in ablation.variants)

    def base_value(self, ablation: SweepAblation) -> Any:
        """The reference config's value at the ablation's path (None when the path is not a config key)."""
        try:
            return get_path(ablation.base if ablation.base is not None else self.base, ablation.path)
        except ConfigError:
            return None

    # -- the grid file
    def to_file(self) -> dict:
        """The reviewable grid file (what ``--write-grid`` saves and ``kdlab sweep`` reads)."""
        return {
            "name": self.name,
            "base": self.base.model_dump(mode="json"),
            "seeds": list(self.seeds),
            "ablations": [{
                "name": a.name, "knob": a.knob, "path": a.path,
                **({"base_overrides": a.base_overrides} if a.base is not None else {}),
                "metrics": a.metrics,
                "variants": [{"label": v.label, "value": v.value, "overrides": v.overrides} for v in a.variants],
            } for a in self.ablations],
        }

    # -- grid.json (what reports are built from)
    def record(self) -> dict:
        """The grid as the report reads it: every ablation with its variants (run keys are added by the
        executor's expansion)."""
        return {
            **self.info,
            "name": self.name,
            "base": self.base.model_dump(mode="json"),
            "seeds": list(self.seeds),
            "ablations": [{
                "name": a.name,
                **a.info,
                "knob": {"name": a.knob, "path": a.path, **a.info.get("knob", {})},
                "base_value": a.info["base_value"] if "base_value" in a.info else self.base_value(a),
                "base_note": a.info.get("base_note", ""),
                "numeric": a.info.get("numeric", a.numeric),
                "teacher_varies": self.teacher_varies(a),
                "metrics": a.metrics,
                "variants": [{**v.info, "label": v.label, "value": v.value, "overrides": v.overrides,
                              "same_as_base": v.same_as_base} for v in a.variants],
            } for a in self.ablations],
        }


def config_diff(cfg: ExperimentConfig, ref: ExperimentConfig) -> dict[str, Any]:
    """The dotted-path overrides that turn ``ref`` into ``cfg`` (leaves that differ)."""
    out: dict[str, Any] = {}

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in a:
                walk(a[k], b.get(k), f"{prefix}{k}.")
        elif a != b:
            out[prefix[:-1]] = a

    walk(cfg.model_dump(mode="json"), ref.model_dump(mode="json"), "")
    return out


def format_value(v: Any) -> str:
    """A knob value as shown in grids and tables: on/off, 0.05, [crop, flip], resnet56 -> resnet20."""
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    if isinstance(v, tuple):
        return " -> ".join(map(str, v))
    if v is None:
        return "default"
    return str(v)


# ------------------------------------------------------------------------------------------ files
def _apply(ref: ExperimentConfig, overrides: Any, where: str) -> ExperimentConfig:
    if not isinstance(overrides, dict):
        raise SweepError(f"{where}: overrides must be a mapping of dotted config paths to values")
    try:
        return build_config(ref, list(overrides.items()))
    except ConfigError as exc:
        raise SweepError(f"{where}: {exc}") from None


def _need(d: dict, key: str, where: str, kind: type) -> Any:
    if key not in d:
        raise SweepError(f"{where}: missing {key!r}")
    if not isinstance(d[key], kind):
        raise SweepError(f"{where}: {key!r} must be a {kind.__name__}, got {type(d[key]).__name__}")
    return d[key]


def load_grid(path: str | Path) -> SweepGrid:
    """Read a grid file (YAML or JSON) and build every config in it; one-line SweepError if it is wrong."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise SweepError(f"cannot read grid file {p} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SweepError(f"{p}: a grid file is a mapping with name, base, seeds and ablations")
    where = str(p)
    try:
        base = build_config(_need(data, "base", where, dict))
    except ConfigError as exc:
        raise SweepError(f"{where}: base: {exc}") from None
    seeds = _need(data, "seeds", where, list)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise SweepError(f"{where}: seeds must be a non-empty list of integers >= 0, got {seeds}")
    ablations = []
    for i, a in enumerate(_need(data, "ablations", where, list), 1):
        at = f"{where}: ablation {i}"
        if not isinstance(a, dict):
            raise SweepError(f"{at}: must be a mapping with name and variants")
        name = str(_need(a, "name", at, str))
        own = _apply(base, a["base_overrides"], f"{at} base_overrides") if "base_overrides" in a else None
        ref = own or base
        variants = []
        for j, v in enumerate(_need(a, "variants", at, list), 1):
            vt = f"{at} ({name}) variant {j}"
            if not isinstance(v, dict):
                raise SweepError(f"{vt}: must be a mapping with label and overrides")
            cfg = _apply(ref, v.get("overrides", {}), vt)
            variants.append(SweepVariant(str(v.get("label", j)), v.get("value", v.get("label", j)),
                                         dict(v.get("overrides", {})), cfg,
                                         same_as_base=run_identity(cfg, "variant") == run_identity(ref, "variant")))
        metrics = a.get("metrics") or [{"name": "Top-1 accuracy", "keys": ["top1"], "stage": None}]
        ablations.append(SweepAblation(name, str(a.get("knob", a.get("path", ""))), str(a.get("path", "")),
                                       variants, metrics, own, dict(a.get("base_overrides", {}))))
    return SweepGrid(str(data.get("name", p.stem)), base, [int(s) for s in seeds], ablations,
                     info={"base_name": str(p)})


def write_grid(grid: SweepGrid, path: str | Path) -> None:
    """Save the grid file (YAML, or JSON when the name ends in .json), atomically."""
    p = Path(path)
    data = grid.to_file()
    text = json.dumps(data, indent=2) + "\n" if p.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    atomic_write_text(p, text)
