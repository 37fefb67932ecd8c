"""Feature geometry and soft-label statistics: pure functions on tensors (no I/O).

:func:`feature_geometry` measures how spread out each class is (intra-class distances) against how far
apart the classes are (inter-class distances); :func:`soft_label_stats` measures how rich a network's
soft labels are (entropy, mass off the true class, margin). Definitions are in ``docs/ANALYSIS.md``.

All pairwise sums are exact (float64 by default) and computed in row blocks of the upper triangle of
the distance matrix, so memory stays at ``chunk_size x N`` entries: N = 10,000 and D = 2,048 needs a
few hundred MB (the features themselves in float64) and never an N x N matrix.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: Default quantiles reported for the margin distribution.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Bytes the distance block of one chunk may take when ``chunk_size`` is not given.
_BLOCK_BYTES = 64 * 2**20


def _nan_to_none(v: float) -> float | None:
    return None if (v is None or not math.isfinite(v)) else float(v)


def _list(t: Tensor) -> list[float | None]:
    return [_nan_to_none(v) for v in t.tolist()]


def _check(feats: Tensor, labels: Tensor, num_classes: int) -> None:
    if feats.dim() != 2:
        raise ValueError(f"feats must be (N, D), got shape {tuple(feats.shape)}")
    if labels.dim() != 1 or labels.shape[0] != feats.shape[0]:
        raise ValueError(f"labels must be (N,) with N={feats.shape[0]}, got shape {tuple(labels.shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if feats.shape[0] and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], found [{int(labels.min())}, {int(labels.max())}]")


def pairwise_class_sums(x: Tensor, labels: Tensor, num_classes: int, *, chunk_size: int | None = None,
                        center: bool = True) -> Tensor:
    """``S[c, c'] = sum_{i in c, j in c'} ||x_i - x_j||`` over ordered pairs (so ``S`` is symmetric and its
    diagonal counts each unordered within-class pair twice; ``i = j`` contributes 0).

    ``x`` is used in its own dtype (pass float64 for exact sums). Computed block by block over the upper
    triangle: each step forms one ``chunk x (N - start)`` distance block, never the N x N matrix.
    ``center=False`` skips subtracting the mean (pass features already centred to save a copy).
    """
    n = x.shape[0]
    dtype = x.dtype
    onehot = F.one_hot(labels.long(), num_classes).to(dtype)
    s = torch.zeros(num_classes, num_classes, dtype=dtype, device=x.device)
    if n == 0:
        return s
    if center:  # distances are shift-invariant; centring keeps the Gram trick accurate
        x = x - x.mean(0, keepdim=True)
    sq = torch.linalg.vector_norm(x, dim=1).square()
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_BYTES // (max(n, 1) * x.element_size()))
    chunk_size = max(1, min(int(chunk_size), n))
    for a in range(0, n, chunk_size):
        b = min(a + chunk_size, n)
        block = torch.mm(x[a:b], x[a:].T)  # (B, N - a)
        block.mul_(-2).add_(sq[a:b, None]).add_(sq[None, a:]).clamp_(min=0).sqrt_()
        width = b - a
        diag = torch.arange(width, device=x.device)
        block[diag, diag] = 0  # exact zero self-distance
        oh_i = onehot[a:b]
        s += oh_i.T @ (block[:, :width] @ oh_i)  # the square diagonal block holds both orders already
        if b < n:
            off = oh_i.T @ (block[:, width:] @ onehot[b:])
            s += off + off.T
    return s


@torch.no_grad()
def feature_geometry(feats: Tensor, labels: Tensor, num_classes: int, *, normalize: bool = False,
                     chunk_size: int | None = None, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """Intra- vs inter-class distances of features ``feats`` (N, D) with integer ``labels`` (N,).

    Euclidean distances, computed in ``dtype`` (float64: exact up to rounding) on ``feats.device``.
    ``normalize=True`` measures L2-normalised features (the geometry of an embedding on the unit sphere).

    Overall figures:

    * ``intra`` -- mean distance over all distinct same-class pairs (pooled over classes);
      ``intra_macro`` -- the unweighted mean of the per-class values
    * ``inter_centroid`` -- mean over unordered pairs of (present) classes of ``||mu_c - mu_c'||``
    * ``inter_pairwise`` -- mean distance over all pairs of samples from different classes
    * ``ratio_centroid = intra / inter_centroid``, ``ratio_pairwise = intra / inter_pairwise``
    * ``per_class_ratio_mean`` -- mean over classes of ``per_class.ratio``

    ``per_class`` holds lists of length ``num_classes`` (``None`` where undefined, e.g. a class with fewer
    than two samples): ``count``, ``intra`` (mean distinct-pair distance), ``intra_rms`` (root mean squared
    pair distance, closed form ``sqrt(2 * sum ||x - mu_c||^2 / (n_c - 1))``), ``radius`` (mean distance to the
    class centroid), ``centroid_dist`` (mean distance from ``mu_c`` to the other centroids),
    ``nearest_centroid`` (distance to the closest other centroid), ``inter_pairwise`` (mean distance from the
    class's samples to all samples of other classes), ``ratio = intra / centroid_dist`` and
    ``ratio_pairwise = intra / inter_pairwise``.
    """
    _check(feats, labels, num_classes)
    x = feats.detach().to(dtype, copy=True)
    labels = labels.detach().to(x.device).long()
    if normalize:
        x = F.normalize(x, dim=1)
    if x.shape[0]:
        x -= x.mean(0, keepdim=True)  # every figure is shift-invariant; centring keeps the Gram trick accurate
    n, d = x.shape
    onehot = F.one_hot(labels, num_classes).to(dtype)
    counts = onehot.sum(0)  # (C,)
    present = counts > 0
    nan = torch.full((num_classes,), float("nan"), dtype=dtype, device=x.device)

    # centroids, radii, closed-form mean squared pair distance
    mu = (onehot.T @ x) / counts.clamp(min=1)[:, None]
    step = max(1, _BLOCK_BYTES // max(1, d * x.element_size()))
    dev = torch.cat([torch.linalg.vector_norm(x[a:a + step] - mu[labels[a:a + step]], dim=1)
                     for a in range(0, n, step)]) if n else x.new_zeros(0)  # ||x_i - mu_{y_i}||, row blocks
    sqdev = torch.zeros(num_classes, dtype=dtype, device=x.device).index_add_(0, labels, dev.square())
    dist_to_mu = torch.zeros(num_classes, dtype=dtype, device=x.device).index_add_(0, labels, dev)
    radius = torch.where(present, dist_to_mu / counts.clamp(min=1), nan)
    pairs_ok = counts >= 2
    intra_rms = torch.where(pairs_ok, (2 * sqdev / (counts - 1).clamp(min=1)).sqrt(), nan)

    # centroid distances between present classes
    idx = present.nonzero().squeeze(1)
    k = idx.numel()
    centroid_dist = nan.clone()
    nearest = nan.clone()
    inter_centroid = float("nan")
    if k >= 2:
        cd = torch.cdist(mu[idx][None], mu[idx][None], compute_mode="donot_use_mm_for_euclid_dist")[0]
        off = ~torch.eye(k, dtype=torch.bool, device=x.device)
        centroid_dist[idx] = (cd * off).sum(1) / (k - 1)
        nearest[idx] = cd.masked_fill(~off, float("inf")).min(1).values
        inter_centroid = float(cd[off].mean())

    # pairwise sums (the only O(N^2 D) part)
    s = pairwise_class_sums(x, labels, num_classes, chunk_size=chunk_size, center=False)
    within = s.diagonal()
    intra = torch.where(pairs_ok, within / (counts * (counts - 1)).clamp(min=1), nan)
    others = n - counts
    inter_pw_c = torch.where(present & (others > 0), (s.sum(1) - within) / (counts * others).clamp(min=1), nan)
    n_intra_pairs = float((counts * (counts - 1)).sum())
    n_inter_pairs = float(n * n - (counts * counts).sum())
    intra_all = float(within.sum()) / n_intra_pairs if n_intra_pairs > 0 else float("nan")
    inter_pw = float(s.sum() - within.sum()) / n_inter_pairs if n_inter_pairs > 0 else float("nan")

    ratio = intra / centroid_dist
    ratio_pw = intra / inter_pw_c
    valid_ratio = ratio[torch.isfinite(ratio)]
    valid_intra = intra[torch.isfinite(intra)]

    def div(a: float, b: float) -> float:
        return a / b if (math.isfinite(a) and math.isfinite(b) and b > 0) else float("nan")

    out = {
        "num_samples": int(n),
        "dim": int(d),
        "num_classes": int(num_classes),
        "classes_present": int(k),
        "normalized": bool(normalize),
        "intra": intra_all,
        "intra_macro": float(valid_intra.mean()) if valid_intra.numel() else float("nan"),
        "inter_centroid": inter_centroid,
        "inter_pairwise": inter_pw,
        "ratio_centroid": div(intra_all, inter_centroid),
        "ratio_pairwise": div(intra_all, inter_pw),
        "per_class_ratio_mean": float(valid_ratio.mean()) if valid_ratio.numel() else float("nan"),
        "radius_mean": float(radius[present].mean()) if k else float("nan"),
    }
    out = {key: (_nan_to_none(v) if isinstance(v, float) else v) for key, v in out.items()}
    out["per_class"] = {
        "count": [int(c) for c in counts.tolist()],
        "intra": _list(intra),
        "intra_rms": _list(intra_rms),
        "radius": _list(radius),
        "centroid_dist": _list(centroid_dist),
        "nearest_centroid": _list(nearest),
        "inter_pairwise": _list(inter_pw_c),
        "ratio": _list(ratio),
        "ratio_pairwise": _list(ratio_pw),
    }
    return out


@torch.no_grad()
def soft_label_stats(logits: Tensor, labels: Tensor, T: float = 4.0, *, bins: int = 40,
                     quantiles: tuple[float, ...] = QUANTILES) -> dict[str, Any]:
    """Richness of the soft labels ``softmax(logits / T)`` of a network on labelled data.

    * ``entropy`` -- mean ``H(softmax(z/T)) = -sum_k p_k log p_k`` in nats (``entropy_T1``: the same at T=1;
      ``entropy_max = log C``)
    * ``off_true_mass`` -- mean ``1 - p_y`` at temperature T (``off_true_mass_T1`` at T=1)
    * ``confidence`` -- mean top-1 probability ``max_k p_k`` at T=1
    * ``margin`` -- the distribution of ``rho = p_y - max_{k != y} p_k`` at T=1 (the margin the intra
      objective thresholds with delta): ``mean``, ``std``, ``min``, ``max``, ``quantiles`` (``{q: value}``),
      ``frac_positive`` (rho > 0) and a histogram (``hist_counts`` over ``hist_edges``, ``bins`` equal bins
      on [-1, 1])
    * ``accuracy`` -- top-1 fraction in [0, 1]
    """
    if logits.dim() != 2 or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"logits must be (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if T <= 0:
        raise ValueError(f"T must be positive, got {T}")
    n, c = logits.shape
    if n == 0:
        raise ValueError("soft_label_stats needs at least one sample")
    z = logits.detach().to(torch.float64)
    y = labels.detach().to(z.device).long()[:, None]

    def entropy_and_true(temp: float) -> tuple[Tensor, Tensor, Tensor]:
        logp = F.log_softmax(z / temp, dim=1)
        p = logp.exp()
        h = -(p * logp).sum(1)
        return h, p, p.gather(1, y).squeeze(1)

    h_t, _, py_t = entropy_and_true(T)
    h_1, p1, py_1 = entropy_and_true(1.0)
    others = p1.scatter(1, y, float("-inf"))
    rho = py_1 - others.max(1).values if c > 1 else py_1.clone()
    edges = torch.linspace(-1.0, 1.0, bins + 1, dtype=torch.float64)
    counts = torch.histc(rho.cpu(), bins=bins, min=-1.0, max=1.0)
    qs = torch.quantile(rho, torch.tensor(quantiles, dtype=torch.float64, device=rho.device))
    pred = z.argmax(1)
    return {
        "T": float(T),
        "num_samples": int(n),
        "num_classes": int(c),
        "entropy": float(h_t.mean()),
        "entropy_T1": float(h_1.mean()),
        "entropy_max": math.log(c),
        "off_true_mass": float((1 - py_t).mean()),
        "off_true_mass_T1": float((1 - py_1).mean()),
        "confidence": float(p1.max(1).values.mean()),
        "accuracy": float((pred == y.squeeze(1)).double().mean()),
        "margin": {
            "mean": float(rho.mean()),
            "std": float(rho.std()) if n > 1 else 0.0,
            "min": float(rho.min()),
            "max": float(rho.max()),
            "quantiles": {f"{q:g}": float(v) for q, v in zip(quantiles, qs.tolist())},
            "frac_positive": float((rho > 0).double().mean()),
            "hist_edges": edges.tolist(),
            "hist_counts": [int(v) for v in counts.round().tolist()],
        },
    }


__all__ = ["feature_geometry", "soft_label_stats", "pairwise_class_sums", "QUANTILES"]
