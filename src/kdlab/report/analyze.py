"""Analyse trained networks: feature geometry, soft-label richness, t-SNE (``kdlab analyze``).

    from kdlab.report.analyze import analyze_checkpoint, main_analyze
    res = analyze_checkpoint("runs/x/teacher_intra/checkpoints/last.pt")      # a JSON-ready dict
    main_analyze([Path("runs/x/teacher_ce"), Path("runs/x/teacher_intra")], Path("analysis"))

A checkpoint (or a run folder holding ``checkpoints/last.pt``) is read with ``weights_only=True``; the
network is rebuilt from the recorded architecture and run in eval mode, without augmentation, on the
recorded dataset (the same split, subsets and normalisation as the run evaluated on) or on a dataset
named by the caller. Contrastive teachers also give the embedding ``e = normalize(P(h))`` through their
projection head, rebuilt from ``objective.head`` and loaded from the ``head.*`` keys of ``ckpt["method"]``.
Definitions of every figure: ``docs/ANALYSIS.md``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.analysis.geometry import feature_geometry, soft_label_stats
from kdlab.config import ConfigError
from kdlab.engine.checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
)
from kdlab.objectives import HeadConfig

#: Feature spaces measured, in table order: penultimate feature, the same L2-normalised, the embedding.
SPACES = ("pooled", "pooled_l2", "embedding")
SPLITS = ("test", "train")


@dataclass
class Collected:
    """What one pass of a network over a dataset produced (CPU tensors)."""

    pooled: Tensor  # (N, D) float32: penultimate (globally pooled) feature
    logits: Tensor  # (N, C) float32
    labels: Tensor  # (N,) int64
    embedding: Tensor | None  # (N, d) float32, L2-normalised; None without a projection head
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- loading
def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint file (``.pt``/``.pth``, or an export card ``.json``), or a run folder holding
    ``checkpoints/last.pt`` (or ``last.pt``)."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "checkpoints" / "last.pt", p / "last.pt", p / "checkpoints" / "best.pt"):
            if cand.is_file():
                return cand
        raise ConfigError(f"{p} is a folder without checkpoints/last.pt; pass a checkpoint file or a run folder")
    if not p.exists():
        raise ConfigError(f"checkpoint {p} does not exist")
    return p


def read_any_checkpoint(path: Path) -> dict:
    """A kdlab run checkpoint or RepDistiller-style file (``weights_only=True``), or a kdlab export card
    (``.json``, sha256-checked; its weights hold the network only, so no projection head)."""
    if path.suffix == ".json":
        from kdlab.runs import read_card

        card, weights = read_card(path)
        keys = ("stage", "arch", "num_classes", "input_shape", "dataset", "epoch")
        return {"model": load_checkpoint(weights), **{k: card.get(k) for k in keys}, "config": card.get("recipe") or {}}
    return load_checkpoint(path)  # weights_only=True


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but this machine has no usable CUDA device (use device=cpu)")
    return dev


def _same_dataset(a: str | None, b: str | None) -> bool:
    def norm(s: str) -> str:
        return s.lower().replace("_", "-").replace("cifar-", "cifar")

    return a is not None and b is not None and norm(a) == norm(b)


def _load_split(ckpt: dict, split: str, dataset: str | None, root: str | Path | None):
    from kdlab.data import load_dataset

    data_cfg = (ckpt.get("config") or {}).get("data") or {}
    recorded = data_cfg.get("name") or ckpt.get("dataset")
    if dataset is None and recorded is None:
        raise ConfigError("the checkpoint records no dataset; pass dataset=NAME (and root=PATH)")
    if dataset is None:  # the data the run was evaluated on: same split seed, subsets, normalisation
        name = recorded
        kw = dict(split_seed=data_cfg.get("split_seed", 0), subset=data_cfg.get("subset"),
                  test_subset=data_cfg.get("test_subset"))
        root = root if root is not None else data_cfg.get("root")
    else:  # a named dataset: its full split (the recorded root is reused when the name is the same)
        name, kw = dataset, dict(split_seed=data_cfg.get("split_seed", 0))
        if root is None and _same_dataset(dataset, recorded):
            root = data_cfg.get("root")
    train, test = load_dataset(name, root, download=False, **kw)
    return (test if split == "test" else train), train


def _build_head(ckpt: dict, pooled_dim: int) -> tuple[nn.Module | None, str | None]:
    """The projection head of a contrastive teacher checkpoint, or (None, why not)."""
    from kdlab.objectives.teacher import build_head

    cfg = ckpt.get("config") or {}
    objective = cfg.get("objective") or {}
    method = ckpt.get("method") or {}
    head_state = {k[len("head."):]: v for k, v in method.items() if isinstance(k, str) and k.startswith("head.")}
    kind = objective.get("kind", "ce")
    teacher = ckpt.get("stage") in (None, "teacher")
    if not teacher or (kind == "ce" and not head_state):
        return None, None
    head_cfg = HeadConfig(**(objective.get("head") or {}))
    head = build_head(head_cfg, pooled_dim)
    if head_cfg.kind == "none":
        return head, "identity"
    if not head_state:
        return None, "head weights missing from the checkpoint"
    try:
        head.load_state_dict(head_state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"the projection head in the checkpoint does not fit objective.head={head_cfg.model_dump()} "
                          f"({str(exc).splitlines()[0]})") from None
    return head, head_cfg.kind


@torch.no_grad()
def collect_outputs(path: Path | str, *, split: str = "test", max_samples: int | None = None,
                    device: str | torch.device = "cpu", dataset: str | None = None, root: str | Path | None = None,
                    arch: str | None = None, batch_size: int | None = None, seed: int = 0) -> Collected:
    """Run a checkpoint's network (and projection head) over a split; return its outputs on the CPU.

    ``dataset`` (with ``root``) replaces the recorded dataset: then the full split is used, without the
    run's subsets (pass the recorded name to analyse its full split); ``arch`` is needed only for
    checkpoints that record none (e.g. RepDistiller files);
    ``max_samples`` takes a stratified, seeded (``seed``) subset of the split.
    """
    from kdlab.data import DeviceLoader, subset_dataset
    from kdlab.models import build_model, probe
    from kdlab.models.checkpoint import load_weights

    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    ckpt_path = resolve_checkpoint(path)
    ckpt = read_any_checkpoint(ckpt_path)
    arch = arch or ckpt.get("arch")
    if arch is None:
        raise ConfigError(f"checkpoint {ckpt_path} records no architecture; pass arch=NAME")
    ds, _ = _load_split(ckpt, split, dataset, root)
    if ckpt.get("num_classes") not in (None, ds.num_classes):
        raise ConfigError(f"checkpoint {ckpt_path} predicts {ckpt['num_classes']} classes but {ds.name} has "
                          f"{ds.num_classes}; pass the dataset it was trained on")
    shape = ckpt.get("input_shape")
    if shape is not None and tuple(shape) != tuple(ds.image_shape):
        raise ConfigError(f"checkpoint {ckpt_path} was trained on {tuple(shape)} images but {ds.name} has "
                          f"{tuple(ds.image_shape)}")
    if max_samples is not None:
        if max_samples < 2:
            raise ConfigError(f"max_samples must be >= 2, got {max_samples}")
        if max_samples < len(ds):
            ds = subset_dataset(ds, int(max_samples), seed=seed)
    dev = _resolve_device(device)
    net = build_model(arch, num_classes=ds.num_classes, in_channels=ds.image_shape[0])
    load_weights(net, ckpt, model_name=arch)
    net.eval()
    head, head_kind = _build_head(ckpt, probe(net, ds.image_shape).pooled_dim)
    net.to(dev)
    if head is not None:
        head.to(dev).eval()
    cfg = ckpt.get("config") or {}
    bs = batch_size or (cfg.get("data") or {}).get("eval_batch_size") or 512
    loader = DeviceLoader(ds, batch_size=bs, device=dev, augment=None, views=1, shuffle=False, drop_last=False,
                          seed=0, channels_last=False)
    pooled, logits, labels, emb = [], [], [], []
    for batch in loader:
        out = net(batch.views[0])
        pooled.append(out.pooled.float().cpu())
        logits.append(out.logits.float().cpu())
        labels.append(batch.labels.cpu())
        if head is not None:
            emb.append(F.normalize(head(out.pooled).float(), dim=1).cpu())
    objective = cfg.get("objective") or {}
    kind = objective.get("kind")
    block = objective.get(kind) if kind else None  # the objective's own settings (none for ce)
    lam = block.get("lambda_") if isinstance(block, dict) else None
    info = {
        "checkpoint": str(ckpt_path),
        "arch": arch,
        "stage": ckpt.get("stage"),
        "epoch": ckpt.get("epoch"),
        "objective": kind if ckpt.get("stage") != "student" else None,
        "lambda": lam if ckpt.get("stage") != "student" else None,
        "distill_methods": (cfg.get("distill") or {}).get("methods") if ckpt.get("stage") == "student" else None,
        "head": head_kind,
        "dataset": ds.name,
        "split": split,
        "num_samples": len(ds),
        "num_classes": ds.num_classes,
        "device": str(dev),
    }
    return Collected(torch.cat(pooled), torch.cat(logits), torch.cat(labels),
                     torch.cat(emb) if emb else None, list(ds.classes), info)


# -------------------------------------------------------------------------------------------- analysis
def summarize(c: Collected, *, T: float = 4.0, device: str | torch.device = "cpu",
              chunk_size: int | None = None) -> dict[str, Any]:
    """The JSON-ready analysis of collected outputs: soft labels, accuracy, geometry per feature space."""
    dev = _resolve_device(device)
    labels = c.labels.to(dev)
    n_cls = len(c.classes)
    soft = soft_label_stats(c.logits.to(dev), labels, T)
    geometry: dict[str, Any] = {
        "pooled": feature_geometry(c.pooled.to(dev), labels, n_cls, chunk_size=chunk_size),
        "pooled_l2": feature_geometry(c.pooled.to(dev), labels, n_cls, normalize=True, chunk_size=chunk_size),
        "embedding": (feature_geometry(c.embedding.to(dev), labels, n_cls, normalize=True, chunk_size=chunk_size)
                      if c.embedding is not None else None),
    }
    return {**c.info, "classes": list(c.classes), "top1": 100.0 * soft["accuracy"], "accuracy": soft["accuracy"],
            "soft_labels": soft, "geometry": geometry}


def analyze_checkpoint(path: Path | str, *, split: str = "test", max_samples: int | None = None, T: float = 4.0,
                       device: str | torch.device = "cpu", dataset: str | None = None,
                       root: str | Path | None = None, arch: str | None = None,
                       batch_size: int | None = None, chunk_size: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Geometry (penultimate feature, its L2-normalised form, the embedding), soft-label statistics at
    temperature ``T`` and accuracy of one checkpoint on ``split``. See :func:`collect_outputs` for the
    loading arguments and :func:`summarize` for the result."""
    c = collect_outputs(path, split=split, max_samples=max_samples, device=device, dataset=dataset, root=root,
                        arch=arch, batch_size=batch_size, seed=seed)
    return summarize(c, T=T, device=device, chunk_size=chunk_size)


# ---------------------------------------------------------------------------------------------- output
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _describe(r: dict) -> str:
    if r.get("stage") == "student":
        methods = r.get("distill_methods")
        return "student (" + ("+".join(methods) if methods else "alone") + ")"
    obj = r.get("objective")
    if obj is None:
        return str(r.get("stage") or "?")
    lam = r.get("lambda")
    return f"{r.get('stage') or 'teacher'} ({obj}{'' if lam is None else f', λ={lam:g}'})"


def analysis_markdown(results: Mapping[str, dict], figures: Sequence[str] = ()) -> str:
    """The tables of ``analysis.md``."""
    out = ["# kdlab analysis", ""]
    rows = []
    for label, r in results.items():
        s = r["soft_labels"]
        rows.append([label, r.get("arch"), _describe(r), f"{r.get('dataset')}/{r.get('split')}", r.get("num_samples"),
                     r.get("top1"), s["T"], s["entropy"], s["entropy_T1"], s["off_true_mass"], s["confidence"],
                     s["margin"]["mean"], s["margin"]["quantiles"].get("0.5")])
    out += ["## Soft labels and accuracy", "",
            _table(["run", "arch", "kind", "data", "N", "top-1 %", "T", "H(T) nats", "H(1) nats",
                    "off-true mass (T)", "confidence (T=1)", "margin mean", "margin median"], rows), ""]
    rows = []
    for label, r in results.items():
        for space in SPACES:
            g = r["geometry"].get(space)
            if g is None:
                continue
            rows.append([label, space, g["dim"], g["intra"], g["inter_centroid"], g["inter_pairwise"],
                         g["ratio_centroid"], g["ratio_pairwise"], g["per_class_ratio_mean"], g["radius_mean"]])
    out += ["## Feature geometry", "",
            "Distances are Euclidean; `pooled` is the penultimate feature, `pooled_l2` the same L2-normalised, "
            "`embedding` the projection head's normalised output (contrastive teachers only).", "",
            _table(["run", "space", "D", "intra", "inter (centroid)", "inter (pairwise)", "intra/inter (centroid)",
                    "intra/inter (pairwise)", "mean per-class ratio", "mean radius"], rows), ""]
    labels = list(results)
    classes = results[labels[0]].get("classes") or []
    header = ["class"]
    cols: list[list[Any]] = []
    for label in labels:
        for space in ("pooled", "embedding"):
            g = results[label]["geometry"].get(space)
            if g is not None:
                header.append(f"{label} ({space})")
                cols.append(g["per_class"]["ratio"])
    rows = [[name] + [col[i] if i < len(col) else None for col in cols] for i, name in enumerate(classes)]
    out += ["## Per-class intra/inter ratio", "",
            "Class c's mean intra-class pair distance over the mean distance from its centroid to the other "
            "centroids.", "", _table(header, rows), ""]
    if figures:
        out += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    return "\n".join(out)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def tsne_embed(feats: Tensor, labels: Tensor, *, max_points: int = 2000, seed: int = 0) -> tuple[Any, Any]:
    """2-D t-SNE of a stratified subsample of at most ``max_points`` rows: ``(xy (n, 2), labels (n,))``.
    Features of more than 50 dimensions are reduced with PCA to 50 first (both steps seeded)."""
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from kdlab.data import stratified_indices

    n = feats.shape[0]
    idx = stratified_indices(labels.cpu(), min(n, max_points), seed) if n > max_points else torch.arange(n)
    x = feats[idx].double().cpu().numpy()
    y = labels[idx].cpu().numpy()
    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3.0)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
              random_state=seed).fit_transform(x)
    return np.asarray(xy), y


def plot_tsne(features: Mapping[str, Any], path: Path, *, classes: Sequence[str] | None = None,
              max_points: int = 2000, seed: int = 0) -> Path:
    """t-SNE of up to two feature sets side by side, points coloured by class. ``features`` maps a label
    to ``(feats, labels)`` or a :class:`Collected` (its pooled feature)."""
    plt = _pyplot()
    items = list(features.items())[:2]
    fig, axes = plt.subplots(1, len(items), figsize=(5.5 * len(items), 5), squeeze=False)
    n_cls = len(classes) if classes else None
    for ax, (label, val) in zip(axes[0], items):
        feats, labels = (val.pooled, val.labels) if isinstance(val, Collected) else val
        xy, y = tsne_embed(feats, labels, max_points=max_points, seed=seed)
        k = n_cls or int(y.max()) + 1
        cmap = plt.get_cmap("tab10" if k <= 10 else "tab20" if k <= 20 else "turbo")
        if k <= 20:  # qualitative map: class i gets colour i
            ax.scatter(xy[:, 0], xy[:, 1], c=[cmap(int(v)) for v in y], s=6, alpha=0.8, linewidths=0)
        else:
            ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap=cmap, vmin=0, vmax=k - 1, s=6, alpha=0.8, linewidths=0)
        ax.set(title=f"{label} (n={len(y)})", xticks=[], yticks=[])
        if k <= 20:
            names = list(classes) if classes else [str(i) for i in range(k)]
            handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i), label=names[i]) for i in range(k)]
            ax.legend(handles=handles, fontsize=7, markerscale=0.8, loc="best", ncol=2 if k > 10 else 1)
    fig.suptitle("t-SNE of the penultimate feature")
    return _save(fig, path)


def _per_class_ratios(r: dict, space: str) -> list[float | None]:
    """The run's intra/inter ratio of each class in ``space`` (None for a class without one); [] without the space."""
    g = r["geometry"].get(space)
    return list(g["per_class"]["ratio"]) if g is not None else []


def plot_ratio_per_class(results: Mapping[str, dict], path: Path) -> Path:
    """Per-class intra/inter ratios, one panel per space (penultimate feature, embedding).

    Each class is a point: its ratio under the first run (the reference, e.g. the CE teacher) on x, under each
    other run on y, with the diagonal; below it, the class is tighter than in the reference. With one run, or in
    a space the reference lacks (a CE teacher has no embedding), the ratios are plotted against the class.
    """
    plt = _pyplot()
    spaces = [s for s in ("pooled", "embedding") if any(r["geometry"].get(s) for r in results.values())]
    (ref_label, ref_run), *others = results.items()
    classes = ref_run.get("classes")
    fig, axes = plt.subplots(1, len(spaces), figsize=(5.5 * len(spaces), 5), squeeze=False)
    for ax, space in zip(axes[0], spaces):
        ref = _per_class_ratios(ref_run, space)
        pairs = {label: _per_class_ratios(r, space) for label, r in others}
        pairs = {label: vs for label, vs in pairs.items() if vs}
        if ref and pairs:
            ends: list[float] = []
            for label, vs in pairs.items():
                pts = [(c, x, y) for c, (x, y) in enumerate(zip(ref, vs)) if x is not None and y is not None]
                ax.scatter([p[1] for p in pts], [p[2] for p in pts], s=24, label=label)
                if len(pts) <= 20:  # few classes: name them
                    for c, x, y in pts:
                        ax.annotate(classes[c] if classes else str(c), (x, y), fontsize=6, alpha=0.7,
                                    xytext=(2, 2), textcoords="offset points")
                ends += [v for p in pts for v in p[1:]]
            if ends:
                lo, hi = min(ends), max(ends)
                ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--", label="same as the reference")
            ax.set(xlabel=f"{ref_label}: intra / inter of the class", ylabel="intra / inter of the class", title=space)
        else:
            for label, r in results.items():
                if vs := _per_class_ratios(r, space):
                    ax.plot(range(len(vs)), [math.nan if v is None else v for v in vs], marker="o", ls="", label=label)
            ax.set(xlabel="class", ylabel="intra / inter of the class", title=space)
        ax.xaxis.label.set_size(8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_margin_cdf(results: Mapping[str, dict], path: Path) -> Path:
    """Cumulative distribution of the margin rho = p_y - max_{k != y} p_k (T=1) per run, on a log axis: the fraction
    of test samples whose margin is at most rho, so the few unsure or wrong samples (rho < 0) stay visible beside
    the confident mass near 1 that a histogram's linear axis shows alone."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in results.items():
        m = r["soft_labels"]["margin"]
        edges, counts = m["hist_edges"], m["hist_counts"]
        total = max(sum(counts), 1)
        cumulative = torch.tensor(counts, dtype=torch.float64).cumsum(0) / total
        ax.step(edges[1:], cumulative.tolist(), where="post", label=f"{label} (mean {m['mean']:.3f})", lw=1.5)
    ax.set_yscale("log")
    ax.set(xlabel="margin ρ = p_y − max_{k≠y} p_k (T = 1)", ylabel="fraction of samples with margin ≤ ρ", xlim=(-1, 1))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ratio_vs(values: Sequence[float], ratios: Sequence[float] | Mapping[str, Sequence[float]], xlabel: str,
                  path: Path, *, ylabel: str = "intra / inter (centroid)", title: str = "") -> Path:
    """Ratio against a swept knob (e.g. λ): ``ratios`` one value per ``values`` entry, or a mapping of
    series names (e.g. "pooled", "embedding") to such lists; ``None``/NaN entries are skipped."""
    plt = _pyplot()
    series = dict(ratios) if isinstance(ratios, Mapping) else {"": ratios}
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, ys in series.items():
        if len(ys) != len(values):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(values)} x values")
        pts = sorted((float(x), float(y)) for x, y in zip(values, ys) if y is not None and math.isfinite(float(y)))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name or None)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if any(series):
        ax.legend(fontsize=8)
    return _save(fig, path)


def write_analysis(results: dict[str, dict], out_dir: Path | str, *,
                   features: Mapping[str, Any] | None = None, tsne_points: int = 2000, seed: int = 0) -> Path:
    """Write ``analysis.json``, ``analysis.md`` and the PNG figures into ``out_dir``; return ``out_dir``.

    ``results`` maps a run label to :func:`analyze_checkpoint`'s dict. ``features`` (label -> ``(feats,
    labels)`` or :class:`Collected`) enables ``tsne.png`` for its first two entries.
    """
    if not results:
        raise ValueError("write_analysis needs at least one result")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if features:
        first = next(iter(results.values()))
        plot_tsne(features, out / "tsne.png", classes=first.get("classes"), max_points=tsne_points, seed=seed)
        figures.append("tsne.png")
    plot_ratio_per_class(results, out / "ratio_per_class.png")
    plot_margin_cdf(results, out / "margin_cdf.png")
    figures += ["ratio_per_class.png", "margin_cdf.png"]
    atomic_write_json(out / "analysis.json", results)
    atomic_write_text(out / "analysis.md", analysis_markdown(results, figures))
    return out


def run_label(path: Path | str) -> str:
    """A short name for a checkpoint: its run folder (``.../teacher_intra/checkpoints/last.pt`` ->
    ``teacher_intra``), a folder's own name, or the file's stem."""
    p = Path(path)
    if p.is_dir():
        return p.resolve().name
    if p.parent.name == "checkpoints" and p.parent.parent.name:
        name = p.parent.parent.name
        return name if p.stem == "last" else f"{name}:{p.stem}"
    return p.stem


def main_analyze(paths: list[Path], out: Path, **kw: Any) -> Path:
    """``kdlab analyze CKPT [CKPT2 ...] --out DIR``: analyse each checkpoint (or run folder), write the
    report into ``out`` and return the path of ``out/analysis.md``.

    Keywords: ``split``, ``max_samples``, ``T``, ``device``, ``dataset``, ``root``, ``arch``, ``batch_size``,
    ``chunk_size`` (as :func:`analyze_checkpoint`), ``tsne_points`` (default 2000), ``seed`` (subsampling).
    """
    if not paths:
        raise ConfigError("kdlab analyze needs at least one checkpoint")
    T = kw.pop("T", 4.0)
    chunk_size = kw.pop("chunk_size", None)
    tsne_points = kw.pop("tsne_points", 2000)
    known = {"split", "max_samples", "device", "dataset", "root", "arch", "batch_size", "seed"}
    unknown = set(kw) - known
    if unknown:
        raise TypeError(f"main_analyze got unknown keywords {sorted(unknown)}")
    kw = {k: v for k, v in kw.items() if v is not None}
    device = kw.get("device", "cpu")
    results: dict[str, dict] = {}
    features: dict[str, tuple[Tensor, Tensor]] = {}
    for p in paths:
        label = run_label(p)
        base, i = label, 2
        while label in results:
            label, i = f"{base}#{i}", i + 1
        c = collect_outputs(p, **kw)
        results[label] = summarize(c, T=T, device=device, chunk_size=chunk_size)
        features[label] = (c.pooled, c.labels)
    write_analysis(results, out, features=features, tsne_points=tsne_points, seed=kw.get("seed", 0))
    return Path(out) / "analysis.md"


__all__ = ["Collected", "collect_outputs", "summarize", "analyze_checkpoint", "write_analysis", "main_analyze",
           "plot_ratio_vs", "plot_tsne", "plot_ratio_per_class", "plot_margin_cdf", "tsne_embed", "analysis_markdown",
           "resolve_checkpoint", "read_any_checkpoint", "run_label", "SPACES"]
