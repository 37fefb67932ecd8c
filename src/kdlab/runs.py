"""Run folders as data: list them, compare them, export their networks with a provenance card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from kdlab import registry
from kdlab.analysis.curves import markdown_table, plot_curves, read_history, text_table
from kdlab.config import ConfigError
from kdlab.engine.checkpoint import (  # noqa: F401  (read_card, card_recipe: re-exported)
    atomic_write_bytes,
    atomic_write_json,
    card_recipe,
    load_checkpoint,
    read_card,
)
from kdlab.engine.owner import OWNER, holder_alive
from kdlab.experiment.stages import read_summary

RUN_COLUMNS = ["run", "name", "stage", "method", "arch", "seed", "knobs", "status", "top1", "top1_best", "time_s"]


def find_runs(root: Path) -> list[Path]:
    """Every run folder (a folder with summary.json or config.yaml + checkpoints/) under ``root``."""
    root = Path(root)
    if not root.exists():
        raise ConfigError(f"{root} does not exist")
    found = {p.parent for p in root.rglob("summary.json")} | {p.parent for p in root.rglob("config.yaml")
                                                               if (p.parent / "checkpoints").exists()}
    return sorted(found)


def ablation_names(root: Path) -> dict[Path, tuple[str, str]]:
    """``{run folder: (readable name, knobs its variant changes)}`` for the ablation runs under ``root``."""
    from kdlab.sweep.store import readable_names

    names: dict[Path, tuple[str, str]] = {}
    for grid_path in Path(root).rglob("grid.json"):
        try:
            grid = json.loads(grid_path.read_text())
        except (OSError, ValueError):
            continue
        for name, folder, knobs in readable_names(grid):
            names.setdefault((grid_path.parent / folder).resolve(), (name, knobs))
    return names


def run_status(run_dir: Path, summary: dict, history: list[dict]) -> str:
    """done / failed from the summary; else running while the process in owner.json lives (or runs on another
    host, which cannot be checked from here), interrupted once it is gone (kill -9, a lost node), else empty."""
    if summary.get("status") in ("done", "failed"):
        return summary["status"]
    try:
        owner = json.loads((run_dir / OWNER).read_text())
    except (OSError, ValueError):
        owner = None
    if isinstance(owner, dict) and holder_alive(owner) is not False:
        return "running"
    return "interrupted" if owner or history or summary else "empty"


def describe_run(run_dir: Path, name: tuple[str, str] | None = None) -> dict[str, Any]:
    """One row about a run: what was trained, with which key knobs, and how it ended. ``name``: the run's
    readable name and the knobs its variant changes, for an ablation run (:func:`ablation_names`)."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir) or {}
    cfg = summary.get("config")  # the identifying config section the run recorded
    if not isinstance(cfg, dict):  # a run still going (or of an earlier version): its resolved config.yaml
        cfg_path = run_dir / "config.yaml"
        cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
    stage = summary.get("stage") or ("student" if "student" in run_dir.name else "teacher")
    obj, distill = cfg.get("objective", {}), cfg.get("distill", {})
    if stage == "teacher":
        method = obj.get("kind", "?")
        knobs = _changed(registry.spec(method, "objective") if method != "?" else None, obj.get(method))
    else:
        methods = distill.get("methods", [])
        method = "+".join(methods) if methods else "ce (alone)"
        knobs = {f"{m}.{k}": v for m in methods for k, v in _changed(registry.spec(m, "distiller"), distill.get(m)).items()}
    metrics = summary.get("metrics") or {}
    history = read_history(run_dir)
    return {
        "run": str(run_dir),
        "name": name[0] if name else None,
        "stage": stage,
        "method": method,
        "arch": (cfg.get(stage) or {}).get("arch", summary.get("arch", "?")),
        "seed": cfg.get("seed"),
        "knobs": name[1] if name else ", ".join(f"{k}={v}" for k, v in knobs.items()),
        "status": run_status(run_dir, summary, history),
        "top1": metrics.get("top1", history[-1]["test_top1"] if history else None),
        "top1_best": metrics.get("top1_best"),
        "time_s": metrics.get("train_time_s"),
        "epochs": f"{history[-1]['epoch'] if history else 0}/{(cfg.get(stage) or {}).get('epochs', '?')}",
    }


def _changed(spec, block: Any) -> dict[str, Any]:
    """The settings of a method's block that differ from the plugin's defaults (nested blocks flattened)."""
    if spec is None or spec.config is None or not isinstance(block, dict):
        return {}
    out: dict[str, Any] = {}

    def walk(given: dict, default: dict, prefix: str) -> None:
        for k, v in given.items():
            d = default.get(k)
            if isinstance(v, dict) and isinstance(d, dict):
                walk(v, d, f"{prefix}{k}.")
            elif k in default and v != d:
                out[f"{prefix}{k}"] = v

    walk(block, spec.config().model_dump(mode="json"), "")
    return out


def list_runs(root: Path, filters: list[str] = ()) -> list[dict[str, Any]]:
    """Rows for every run under ``root`` matching all ``key=value`` filters (substring match)."""
    names = ablation_names(root)
    rows = [describe_run(p, names.get(p.resolve())) for p in find_runs(root)]
    for f in filters:
        if "=" not in f:
            raise ConfigError(f"filter {f!r} must look like key=value, e.g. status=done or method=kd")
        key, value = f.split("=", 1)
        if rows and key not in rows[0]:
            raise ConfigError(f"unknown filter key {key!r}; use one of {', '.join(rows[0])}")
        rows = [r for r in rows if value in str(r.get(key))]
    return rows


def format_runs(rows: list[dict[str, Any]]) -> str:
    header = RUN_COLUMNS + ["epochs"]
    return text_table(header, [[_fmt(r.get(k)) for k in header] for r in rows]) if rows else "no runs found"


def compare_runs(run_dirs: list[Path], out: Path | None = None) -> tuple[str, Path]:
    """Summary metrics side by side (Markdown) and one curves PNG; returns (table, png path)."""
    keys = ["top1", "top1_best", "best_epoch", "top5", "loss", "test_loss", "convergence_epoch", "loss_std",
            "loss_spikes", "peak_mem_mb", "train_time_s", "step_time_ms"]
    labels = _short_labels(run_dirs)
    rows = []
    for key in keys:
        row: list[Any] = [key]
        for d in run_dirs:
            summary = read_summary(d) or {}
            row.append(_fmt((summary.get("metrics") or {}).get(key)))
        rows.append(row)
    out = Path(out) if out else Path(run_dirs[0]).parent / "compare.png"
    png = plot_curves({lab: read_history(d) for lab, d in zip(labels, run_dirs)}, out, title="kdlab compare")
    return markdown_table(["metric", *labels], rows), png


def export_run(run_dir: Path, out_dir: Path | None = None, *, which: str = "last") -> Path:
    """Write the run's network as a plain state dict (.pt, and .safetensors when available) plus a JSON card."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoints" / f"{which}.pt"
    ckpt = load_checkpoint(ckpt_path)
    if "model" not in ckpt or "arch" not in ckpt:
        raise ConfigError(f"{ckpt_path} is not a kdlab run checkpoint (no model/arch)")
    out_dir = Path(out_dir) if out_dir else run_dir / "export"
    stem = f"{ckpt['stage']}-{ckpt['arch']}-{ckpt['dataset']}"
    import io

    import torch

    state = {k: v.contiguous() for k, v in ckpt["model"].items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    pt_path = out_dir / f"{stem}.pt"
    atomic_write_bytes(pt_path, buf.getvalue())
    files = {"pt": {"file": pt_path.name, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}}
    try:
        from safetensors.torch import save as st_save

        data = st_save(state)
        st_path = out_dir / f"{stem}.safetensors"
        atomic_write_bytes(st_path, data)
        files["safetensors"] = {"file": st_path.name, "sha256": hashlib.sha256(data).hexdigest()}
    except ImportError:
        pass
    summary = read_summary(run_dir) or {}
    metrics = summary.get("metrics") or {}
    card = {
        "format": "kdlab-card/1",
        "stage": ckpt["stage"],
        "arch": ckpt["arch"],
        "num_classes": ckpt["num_classes"],
        "input_shape": ckpt["input_shape"],
        "dataset": ckpt["dataset"],
        "epoch": ckpt["epoch"],
        "accuracy": {"top1": metrics.get("top1"), "top1_best": metrics.get("top1_best"),
                     "top5": metrics.get("top5")},
        "recipe": ckpt.get("config", {}),
        "files": files,
        "source": str(ckpt_path),
    }
    card_path = out_dir / f"{stem}.json"
    atomic_write_json(card_path, card)
    return card_path


def _short_labels(run_dirs: list[Path]) -> list[str]:
    parts = [Path(d).resolve().parts for d in run_dirs]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return ["/".join(p[common:]) for p in parts]


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 2)
    return "-" if v is None else v
