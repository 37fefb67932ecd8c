"""CoCoRD (Fu et al., BMVC 2023; official code ShipengFu/CoCoRD), as kdlab defines it (DESIGN.md §1).

Networks (``s`` the online student, ``s̄`` its slow-moving EMA copy, ``g`` the frozen teacher):

* student projector ``P`` (Linear → BN → ReLU → Linear) and predictor ``Q`` (same shape, ``pred_hidden`` wide);
* slow projector ``P̄`` = EMA(m_r) of ``P``; slow student ``s̄`` = EMA(m_r) of ``s`` (all parameters);
* teacher projector ``P_t`` = EMA(m_c) of ``P``. When the teacher's pooled size differs from the
  student's, ``P_t`` has its own input layer (random init, never updated) and only the layers whose
  shapes match ``P``'s follow the EMA; ``m_c = 1`` freezes the whole head.

Views (the official 3-view loader: ``im_sq, im_sk, im_tk``): view 0 is the query view (CE/KD logits and
the contrastive query), view 1 the key view of the prediction loss, view 2 the teacher's key view.

    q  = normalize(P(s(x0)))            k⁺ = normalize(P_t(g(x2)))
    L_ctr  = CE([q·k⁺, q·k_1, …, q·k_K] / τ, 0)        k_i: the queue (or bank samples) of teacher keys
    D(u, v) = 2 − 2 cos(u, v)
    forward:  D(Q(P(s(x0))), P̄(s̄(x1)))      reverse: D(Q(P(s(x1))), P̄(s̄(x0)))
    L_pred = mean over the batch of forward + reverse (``both``), or of one of them
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.config import CoCoRDConfig
from kdlab.distillers._common import ema_, frozen_copy, full_precision
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext, register_distiller
from kdlab.engine.distributed import gather_cat


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear → BatchNorm1d → ReLU → Linear (the release's projector and predictor shape)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
    )


def prediction_distance(u: Tensor, v: Tensor) -> Tensor:
    """``D(u, v) = 2 − 2·cos(u, v)`` per row (the release's normalised MSE)."""
    return 2.0 - 2.0 * (F.normalize(u.float(), dim=-1) * F.normalize(v.float(), dim=-1)).sum(-1)


def info_nce(
    query: Tensor, positive: Tensor, negatives: Tensor, tau: float, neg_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of ``[q·k⁺, q·n_1, …, q·n_K] / τ`` with the positive at column 0.

    ``query``/``positive`` ``(B, d)``, ``negatives`` ``(K, d)``, all l2-normalised; ``neg_mask`` ``(B, K)``
    marks negatives to drop (set to −∞). Returns (loss, logits).
    """
    l_pos = (query * positive).sum(1, keepdim=True)
    l_neg = query @ negatives.t()
    if neg_mask is not None:
        l_neg = l_neg.masked_fill(neg_mask, float("-inf"))
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    target = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target), logits


def _matching_layers(src: nn.Module, dst: nn.Module) -> list[int]:
    """Indices of the children of two Sequentials whose parameters all have equal shapes."""
    keep = []
    for i, (a, b) in enumerate(zip(src.children(), dst.children())):
        pa, pb = list(a.parameters()), list(b.parameters())
        if pa and len(pa) == len(pb) and all(x.shape == y.shape for x, y in zip(pa, pb)):
            keep.append(i)
    return keep


@register_distiller("cocord")
class CoCoRD(DistillLoss):
    """Config (``distill.cocord.*``): ``ctr_weight`` (1), ``pred_weight`` (4), ``queue_size`` (K=2048),
    ``tau`` (0.1), ``m_c`` (0.999), ``m_r`` (0.9), ``pred`` (both|forward|reverse), ``memory`` (queue|bank),
    ``proj_dim`` (2048), ``proj_hidden`` (2048), ``pred_hidden`` (512). The CE weight is
    ``distill.ce_weight``."""

    views = 3
    needs_teacher = False  # the teacher sees view 2 only (its own forward below)

    def __init__(self, cfg: CoCoRDConfig, ctx: DistillContext):
        super().__init__()
        if ctx.student is None:
            raise ValueError("distill.cocord keeps an EMA copy of the student: build it through Distillation "
                             "(or pass DistillContext.student)")
        self.cfg = cfg
        s_dim, t_dim = ctx.student_probe.pooled_dim, ctx.teacher_probe.pooled_dim
        self.projector = mlp(s_dim, cfg.proj_hidden, cfg.proj_dim)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)
        self.slow_student = frozen_copy(ctx.student)
        self.slow_projector = frozen_copy(self.projector)
        if t_dim == s_dim:
            self.teacher_projector = frozen_copy(self.projector)
        else:  # own input layer (random init); the matching layers start from the student projector
            head = mlp(t_dim, cfg.proj_hidden, cfg.proj_dim)
            for i in _matching_layers(self.projector, head):
                head[i].load_state_dict(self.projector[i].state_dict())
            self.teacher_projector = head.requires_grad_(False)
        self.ema_layers = _matching_layers(self.projector, self.teacher_projector)
        object.__setattr__(self, "_online", ctx.student)  # not registered: the student belongs to Distillation

        d, k = cfg.proj_dim, cfg.queue_size
        if cfg.memory == "queue":
            self.register_buffer("queue", F.normalize(torch.randn(k, d), dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
            self.register_buffer("queue_fill", torch.zeros((), dtype=torch.long))
        else:
            if ctx.num_train < 1:
                raise ValueError("distill.cocord.memory=bank needs the training-set size (DistillContext.num_train)")
            self.register_buffer("bank", F.normalize(torch.randn(ctx.num_train, d), dim=1))
            self.register_buffer("bank_seen", torch.zeros(ctx.num_train, dtype=torch.bool))
        # contrastive top-1 hits and rows since the last stats() call (kept on device: no per-step sync)
        self.register_buffer("_hits", torch.zeros(2), persistent=False)

    # ------------------------------------------------------------------------------------ forward
    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        if len(batch.views) < 3:
            raise ValueError(f"distill.cocord needs 3 views per image, the batch has {len(batch.views)}")
        x0, x1, x2 = batch.views[:3]
        q0 = self.projector(s.pooled)
        with torch.no_grad():
            key = F.normalize(self.teacher_projector(step.teacher(x2).pooled).float(), dim=1)

        with full_precision(q0):
            query = F.normalize(q0.float(), dim=1)
            negatives, mask = self._negatives(batch.index)
            loss_ctr, logits = info_nce(query, key, negatives, self.cfg.tau, mask)
        pred = self.cfg.pred
        dist = []
        if pred in ("both", "forward"):
            with torch.no_grad():
                target1 = self.slow_projector(self.slow_student(x1).pooled)
            dist.append(prediction_distance(self.predictor(q0), target1))
        if pred in ("both", "reverse"):
            q1 = self.projector(step.student(x1).pooled)
            with torch.no_grad():
                target0 = self.slow_projector(self.slow_student(x0).pooled)
            dist.append(prediction_distance(self.predictor(q1), target0))
        loss_pred = torch.stack(dist).sum(0).mean()

        with torch.no_grad():
            hits = (logits.argmax(1) == 0).sum().float()
            self._hits += torch.stack([hits, torch.full_like(hits, logits.shape[0])])
            self._push(key, batch.index)
        return {"cocord_ctr": self.cfg.ctr_weight * loss_ctr, "cocord_pred": self.cfg.pred_weight * loss_pred}

    def _negatives(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.cfg.memory == "queue":
            return self.queue.detach().float().clone(), None  # a copy: the queue is updated in place below
        k = self.cfg.queue_size
        idx = torch.randint(0, self.bank.shape[0], (k,), device=self.bank.device)
        # an image's own earlier key is not a negative for it
        return self.bank[idx].float(), idx[None, :] == index[:, None]

    @torch.no_grad()
    def _push(self, keys: Tensor, index: Tensor) -> None:
        keys, index = gather_cat(keys), gather_cat(index)  # data parallel: the keys of every rank, in rank order
        if self.cfg.memory == "bank":
            self.bank.index_copy_(0, index, keys.to(self.bank.dtype))
            self.bank_seen[index] = True
            return
        k, b = self.queue.shape[0], keys.shape[0]
        kept = keys[-k:] if b > k else keys  # only the newest K of an oversized batch survive
        start = self.queue_ptr + (b - kept.shape[0])
        slots = (start + torch.arange(kept.shape[0], device=keys.device)) % k
        self.queue.index_copy_(0, slots, kept.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + b) % k)
        self.queue_fill.copy_(torch.clamp(self.queue_fill + b, max=k))

    # --------------------------------------------------------------------------------------- EMA
    @torch.no_grad()
    def after_step(self) -> None:
        ema_(self.slow_student.parameters(), self._online.parameters(), self.cfg.m_r)
        ema_(self.slow_projector.parameters(), self.projector.parameters(), self.cfg.m_r)
        dst = [p for i in self.ema_layers for p in self.teacher_projector[i].parameters()]
        src = [p for i in self.ema_layers for p in self.projector[i].parameters()]
        ema_(dst, src, self.cfg.m_c)

    def stats(self) -> dict[str, float]:
        hits, rows = self._hits.tolist()
        self._hits.zero_()
        out = {"cocord_ctr_acc": hits / rows} if rows else {}
        if self.cfg.memory == "queue":
            out["cocord_queue_ptr"] = float(self.queue_ptr)
            out["cocord_queue_fill"] = float(self.queue_fill) / self.queue.shape[0]
        else:
            out["cocord_bank_fill"] = float(self.bank_seen.float().mean())
        return out
