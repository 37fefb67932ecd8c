"""Per-run metrics beside accuracy: convergence speed, stability, cost.

Definitions (docs/METHOD.md repeats them):
* ``convergence_epoch``: first epoch whose test top-1 reaches 95 % of the final (last-epoch) top-1.
* ``loss_std``: standard deviation of the per-step training loss over the last quarter of the epochs.
* ``loss_spikes``: steps whose loss exceeds twice the median of up to 20 steps before it in the same epoch
  (from the 6th step of each epoch on), summed over epochs.
* ``ece``: expected calibration error of the last epoch's test predictions, in percent: the test images are
  binned by confidence (the top softmax probability) into 15 equal-width bins ``(b/15, (b+1)/15]``, and
  ECE = sum_b n_b / N * |accuracy_b - mean confidence_b| (Guo et al., 2017).
* ``train_<term>`` (``train_ce``, ``train_kd``, ``train_intra``, ``train_cocord_ctr``, ...): the last epoch's mean
  of that term of the training loss, weighted as it enters the total (the per-epoch values are in metrics.jsonl).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SPIKE_WINDOW = 20
SPIKE_FACTOR = 2.0
ECE_BINS = 15


def calibration_sums(logits: Tensor, labels: Tensor, bins: int = ECE_BINS) -> Tensor:
    """Per confidence bin ``(b/bins, (b+1)/bins]``: (count, sum of confidences, number correct), shape (3, bins).

    Sums over batches add up, so evaluation accumulates them on the device and syncs once at the end.
    """
    conf, pred = logits.float().softmax(1).max(1)
    idx = ((conf * bins).ceil().long() - 1).clamp(0, bins - 1)
    sums = torch.zeros(3, bins, device=logits.device)
    sums[0].index_add_(0, idx, torch.ones_like(conf))
    sums[1].index_add_(0, idx, conf)
    sums[2].index_add_(0, idx, (pred == labels).float())
    return sums


def expected_calibration_error(sums: Tensor) -> float:
    """ECE in percent from :func:`calibration_sums`: sum over bins of n_b / N * |accuracy_b - confidence_b|."""
    count, conf, correct = sums.double().cpu()
    n = float(count.sum())
    return 100.0 * float((conf - correct).abs().sum()) / n if n else 0.0


def epoch_loss_stats(losses: Tensor) -> dict:
    """Sufficient statistics of one epoch's per-step losses (1-D float tensor on the CPU)."""
    n = losses.numel()
    spikes = 0
    if n > 5:
        for i in range(5, n):
            ref = losses[max(0, i - SPIKE_WINDOW): i].median()
            spikes += int(losses[i] > SPIKE_FACTOR * ref)
    return {
        "loss_steps": n,
        "loss_sum": float(losses.sum()),
        "loss_sqsum": float((losses.double() ** 2).sum()),
        "loss_spikes": spikes,
    }


def summarize(history: list[dict], *, extra_state_bytes: int = 0) -> dict:
    """The summary metrics of a finished (or partial) run from its per-epoch records."""
    if not history:
        return {}
    last = history[-1]
    final = last["test_top1"]
    best = max(history, key=lambda r: r["test_top1"])
    conv = next((r["epoch"] for r in history if r["test_top1"] >= 0.95 * final), last["epoch"])
    tail = history[-max(1, math.ceil(len(history) / 4)):]
    n = sum(r["loss_steps"] for r in tail)
    mean = sum(r["loss_sum"] for r in tail) / max(n, 1)
    var = max(sum(r["loss_sqsum"] for r in tail) / max(n, 1) - mean * mean, 0.0)
    summary = {
        "top1": final,
        "top1_best": best["test_top1"],
        "best_epoch": best["epoch"],
        "top5": last["test_top5"],
        "top5_best": max(r["test_top5"] for r in history),
        "loss": last["train_loss"],
        "test_loss": last["test_loss"],
        "convergence_epoch": conv,
        "loss_std": math.sqrt(var),
        "loss_spikes": sum(r["loss_spikes"] for r in history),
        "peak_mem_mb": max(r.get("peak_mem_mb", 0.0) for r in history),
        "train_time_s": sum(r["epoch_time_s"] for r in history),
        "epoch_time_s": sum(r["epoch_time_s"] for r in history) / len(history),
        "step_time_ms": sum(r["step_time_ms"] for r in history) / len(history),
        "extra_state_bytes": extra_state_bytes,
        "epochs": last["epoch"],
    }
    # the last epoch's mean of every weighted loss term (train_ce, train_kd, train_intra, train_cocord_ctr, ...)
    summary.update({k: v for k, v in last.items() if k.startswith("train_") and k not in ("train_loss", "train_top1")})
    if "test_ece" in last:
        summary["ece"] = last["test_ece"]
    for key in ("margin_pass_frac", "cache_fill", "negatives_per_anchor"):
        if key in last:
            summary[key] = last[key]
    return summary
