"""Teacher objectives: ``ce`` and L_CE + lambda * L_alt for ``intra``, ``supcon``, ``simclr``.

Each step forwards every view of the batch in one concatenated pass (``views`` × B images); L_CE is
the mean cross-entropy over all of them. The contrastive term works on e = normalize(P(pooled)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.config import CacheConfig, HeadConfig, ObjectiveConfig
from kdlab.data.base import Batch
from kdlab.engine.distributed import gather_cat
from kdlab.engine.method import TrainMethod
from kdlab.models.base import ModelOutput
from kdlab.objectives.contrastive import class_margin, intra_class_loss, supcon_loss


def build_head(cfg: HeadConfig, in_dim: int) -> nn.Module:
    """Projection head P: none | linear | mlp2 | mlp3 (hidden width defaults to ``in_dim``)."""
    if cfg.kind == "none":
        return nn.Identity()
    if cfg.kind == "linear":
        return nn.Linear(in_dim, cfg.dim)
    hidden = cfg.hidden or in_dim
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range({"mlp2": 1, "mlp3": 2}[cfg.kind]):
        layers += [nn.Linear(width, hidden, bias=not cfg.bn)]
        layers += [nn.BatchNorm1d(hidden)] if cfg.bn else []
        layers += [nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, cfg.dim))
    return nn.Sequential(*layers)


class ClassCache(nn.Module):
    """Per-class FIFO ring buffers of detached embeddings: one ``(C, Q, d)`` tensor plus pointers.

    ``mode='fifo'``: every class keeps its newest Q entries, all valid entries are negatives.
    ``mode='flush'``: entries accumulate; a class's buffer serves as negatives only once it is full,
    and is cleared after the step that used it (the accumulate-then-compute-then-clear reading).
    """

    def __init__(self, num_classes: int, dim: int, cfg: CacheConfig):
        super().__init__()
        self.mode = cfg.mode
        self.capacity = cfg.size
        self.register_buffer("bank", torch.zeros(num_classes, cfg.size, dim))
        self.register_buffer("ids", torch.full((num_classes, cfg.size), -1, dtype=torch.long))  # image of each entry
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("fill", torch.zeros(num_classes, dtype=torch.long))
        slots = torch.arange(cfg.size)
        self.register_buffer("_slots", slots, persistent=False)

    def valid(self) -> Tensor:
        """``(C, Q)`` bool: entries usable as negatives this step."""
        v = self._slots[None, :] < self.fill[:, None]
        if self.mode == "flush":
            v &= (self.fill == self.capacity)[:, None]
        return v

    @torch.no_grad()
    def push(self, emb: Tensor, labels: Tensor, ids: Tensor) -> None:
        """Append ``emb`` rows (images ``ids``) to their classes' buffers, oldest entries overwritten first."""
        if self.mode == "flush":
            full = self.fill == self.capacity  # used as negatives this step: clear before refilling
            self.fill[full] = 0
            self.ptr[full] = 0
        if emb.shape[0] == 0:
            return
        num_classes, q = self.bank.shape[:2]
        onehot = F.one_hot(labels, num_classes)  # (n, C)
        rank = (onehot.cumsum(0) - 1).gather(1, labels[:, None]).squeeze(1)  # order within class
        count = onehot.sum(0)  # (C,)
        keep = rank >= (count[labels] - q)  # only the newest Q of a class can survive this push
        slot = (self.ptr[labels] + rank) % q
        self.bank[labels[keep], slot[keep]] = emb[keep].to(self.bank.dtype)
        self.ids[labels[keep], slot[keep]] = ids[keep]
        self.ptr.copy_((self.ptr + count) % q)
        self.fill.copy_(torch.clamp(self.fill + count, max=q))


class TeacherObjective(TrainMethod):
    """A teacher network trained with ``cfg.kind``: ce | intra | supcon | simclr."""

    def __init__(self, net: nn.Module, cfg: ObjectiveConfig, *, views: int, num_classes: int,
                 feature_dim: int, num_train: int):
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.kind = cfg.kind
        self.views = views
        self.head = build_head(cfg.head, feature_dim) if cfg.kind != "ce" else None
        emb_dim = feature_dim if cfg.head.kind == "none" else cfg.head.dim
        intra = cfg.intra
        self.cache = ClassCache(num_classes, emb_dim, intra.cache) if cfg.kind == "intra" and intra.cache.enabled else None
        self.memory_positive = cfg.kind == "intra" and intra.positive == "memory"
        if self.memory_positive:  # previous-visit embedding of every training image
            self.register_buffer("sample_bank", torch.zeros(num_train, emb_dim))
            self.register_buffer("sample_seen", torch.zeros(num_train, dtype=torch.bool))
        # anchors and negatives accumulate on the device, read once per epoch (no per-step sync)
        self.register_buffer("_stats", torch.zeros(2), persistent=False)
        self._rows = 0

    @property
    def model(self) -> nn.Module:
        return self.net

    def forward_train(self, batch: Batch, progress: float) -> tuple[Tensor, dict[str, Tensor]]:
        b = batch.labels.shape[0]
        x = torch.cat(batch.views[: self.views]) if self.views > 1 else batch.views[0]
        out: ModelOutput = self.net(x)
        labels = batch.labels.repeat(self.views)
        losses = {"ce": F.cross_entropy(out.logits, labels, label_smoothing=self.cfg.label_smoothing)}
        if self.kind != "ce":
            emb = F.normalize(self.head(out.pooled).float(), dim=1)
            ids = batch.index.repeat(self.views)
            losses.update(self._contrastive(emb, out.logits, labels, ids, b))
        return out.logits[:b], losses

    def _contrastive(self, emb: Tensor, logits: Tensor, labels: Tensor, ids: Tensor, b: int) -> dict[str, Tensor]:
        # similarities at temperature 0.1 need float32: leave autocast for the contrastive term
        with torch.autocast(emb.device.type, enabled=False):
            if self.kind == "intra":
                return {"intra": self.cfg.intra.lambda_ * self._intra(emb, logits, labels, ids, b)}
            if self.kind == "supcon":
                return {"supcon": self.cfg.supcon.lambda_ * supcon_loss(emb, labels, self.cfg.supcon.tau)}
            return {"simclr": self.cfg.simclr.lambda_ * supcon_loss(emb, ids, self.cfg.simclr.tau)}

    def _intra(self, emb: Tensor, logits: Tensor, labels: Tensor, ids: Tensor, b: int) -> Tensor:
        c = self.cfg.intra
        anchors = class_margin(logits, labels) > c.delta if c.margin else torch.ones_like(labels, dtype=torch.bool)
        if self.memory_positive:
            positives = self.sample_bank[ids]
            anchors &= self.sample_seen[ids]
        else:  # the positive of view v is view v+1 of the same image (cyclically)
            positives = emb.roll(-b, dims=0)
        cache_valid = self.cache.valid() if self.cache is not None else None
        cache = self.cache
        loss, n_neg = intra_class_loss(
            emb, positives, labels, ids, anchors, c.tau, cache=cache.bank if cache is not None else None,
            cache_valid=cache_valid, cache_ids=cache.ids if cache is not None else None,
        )
        with torch.no_grad():  # memories take the rows of every rank, so all ranks keep the same memory
            e0, y0, i0 = gather_cat(emb[:b].detach()), gather_cat(labels[:b]), gather_cat(ids[:b])
            if self.cache is not None:
                first = gather_cat(anchors[:b])  # anchors of view 0 feed the cache (one entry per image)
                self.cache.push(e0[first], y0[first], i0[first])
            if self.memory_positive:
                self.sample_bank[i0] = e0
                self.sample_seen[i0] = True
            self._stats += torch.stack([anchors.sum().float(), n_neg.sum().float()])
            self._rows += anchors.numel()
        return loss

    def epoch_stats(self) -> dict[str, float]:
        if self.kind != "intra":
            return {}
        (anchors, negs), rows = self._stats.tolist(), self._rows
        self._stats.zero_()
        self._rows = 0
        stats = {"margin_pass_frac": anchors / max(rows, 1), "negatives_per_anchor": negs / max(anchors, 1)}
        if self.cache is not None:
            stats["cache_fill"] = float(self.cache.fill.float().mean() / self.cache.capacity)
        return stats
