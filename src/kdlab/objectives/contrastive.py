"""Contrastive losses for teacher training: intra-class (tuplet form), SupCon and SimCLR.

All functions take L2-normalised embeddings. Definitions are written out in docs/METHOD.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def class_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """rho = p_y - max_{k != y} p_k on detached probabilities, in [-1, 1]."""
    p = logits.detach().float().softmax(dim=1)
    p_true = p.gather(1, labels[:, None]).squeeze(1)
    p_other = p.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return p_true - p_other


def intra_class_loss(
    emb: Tensor,
    positives: Tensor,
    labels: Tensor,
    sample_ids: Tensor,
    anchor_mask: Tensor,
    tau: float,
    cache: Tensor | None = None,
    cache_valid: Tensor | None = None,
    cache_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Tuplet-form intra-class contrastive loss.

    Args:
        emb: ``(M, d)`` embeddings of every forwarded view (anchors and in-batch negatives).
        positives: ``(M, d)`` the positive of each row (another view of the same image, or a bank entry).
        labels, sample_ids: ``(M,)`` class and image identity of each row; negatives of row ``a`` are the
            rows with the same class and a different image.
        anchor_mask: ``(M,)`` bool, rows that are anchors (margin passed, positive available).
        tau: temperature.
        cache, cache_valid: optional ``(C, Q, d)`` detached negatives per class and ``(C, Q)`` validity.
        cache_ids: optional ``(C, Q)`` image of each cache entry; an anchor's own image is never its negative.

    Returns:
        ``(loss, negatives_per_anchor)``. ``loss = mean_a log(1 + sum_n exp(s(a,n) - s(a,a+)))`` over
        anchors, exactly 0 (with a graph, never NaN) when there is no anchor; an anchor without
        negatives contributes log(1) = 0.
    """
    zero = emb.sum() * 0.0
    if not bool(anchor_mask.any()):
        return zero, emb.new_zeros(0)
    a_idx = anchor_mask.nonzero().squeeze(1)
    anchors = emb[a_idx]  # (A, d)
    pos_logit = (anchors * positives[a_idx]).sum(1) / tau  # (A,)

    batch_logits = anchors @ emb.T / tau  # (A, M)
    same_class = labels[a_idx, None] == labels[None, :]
    other_image = sample_ids[a_idx, None] != sample_ids[None, :]
    neg_mask = same_class & other_image
    # Masked entries get a huge negative (not -inf): exp() underflows to exactly 0 and no NaN can
    # appear in backward, so an anchor without negatives gives log(1 + 0) = 0 naturally.
    off = torch.finfo(batch_logits.dtype).min / 2
    diffs = [(batch_logits - pos_logit[:, None]).masked_fill(~neg_mask, off)]
    n_neg = neg_mask.sum(1)

    if cache is not None and cache_valid is not None:
        bank = cache[labels[a_idx]]  # (A, Q, d), detached by construction
        valid = cache_valid[labels[a_idx]]  # (A, Q)
        if cache_ids is not None:
            valid = valid & (cache_ids[labels[a_idx]] != sample_ids[a_idx, None])
        cache_logits = torch.einsum("ad,aqd->aq", anchors, bank.to(anchors.dtype)) / tau
        diffs.append((cache_logits - pos_logit[:, None]).masked_fill(~valid, off))
        n_neg = n_neg + valid.sum(1)

    per_anchor = F.softplus(torch.logsumexp(torch.cat(diffs, dim=1), dim=1))  # log(1 + sum exp)
    return per_anchor.mean(), n_neg


def supcon_loss(emb: Tensor, labels: Tensor, tau: float, base_tau: float = 0.07) -> Tensor:
    """Supervised contrastive loss (SupContrast convention, contrast_mode 'all').

    ``emb`` is ``(M, d)`` over all views; rows with equal ``labels`` are positives of each other
    (excluding the row itself), every other row is in the denominator. The loss is scaled by
    ``tau / base_tau`` as in the reference code. Anchors without a positive contribute 0.
    Pass image ids as ``labels`` for SimCLR (NT-Xent): then the only positives are the other views.
    """
    m = emb.shape[0]
    logits = emb @ emb.T / tau
    self_mask = torch.eye(m, dtype=torch.bool, device=emb.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos_mask = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos_mask.sum(1)
    pos_log_prob = log_prob.masked_fill(~pos_mask, 0.0).sum(1) / n_pos.clamp(min=1)
    return -(tau / base_tau) * pos_log_prob.mean()
