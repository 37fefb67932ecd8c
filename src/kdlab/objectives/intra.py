"""The intra-class contrastive teacher (arXiv 2509.22053): L_CE + λ·L_Intra.

L_Intra's positive is another augmented view of the same image (or, with ``positive=memory``, the image's
embedding from its previous visit); its negatives are the other samples of the same class in the batch and
in a per-class FIFO cache of detached embeddings (the paper's "pipeline"); only samples whose margin
ρ = p_y − max_{k≠y} p_k exceeds δ are anchors. docs/METHOD.md writes it out.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import Strict
from kdlab.engine.distributed import gather_cat
from kdlab.objectives.contrastive import class_margin, intra_class_loss
from kdlab.objectives.teacher import ObjectiveContext, ObjectiveStep, ObjectiveTerm
from kdlab.registry import CONTRASTIVE_TAU, MethodSpec, knob, register


class CacheConfig(Strict):
    """Per-class FIFO cache of detached negatives (the paper's 'pipeline')."""

    enabled: bool = True
    size: int = Field(128, ge=1, description="Q, entries per class")
    mode: Literal["fifo", "flush"] = "fifo"


LambdaSchedule = Literal["constant", "warmup", "gradnorm", "ratio"]


class IntraConfig(Strict):
    lambda_: float = Field(0.02, ge=0, description="weight of L_Intra (the start value of the ratio schedule)")
    lambda_schedule: LambdaSchedule = Field(
        "constant", description="constant: lambda_; warmup: linear from 0 to lambda_ over warmup_epochs; gradnorm: "
        "each step, the gradient of lambda*L_Intra on the shared features is eta times that of L_CE; ratio: once per "
        "epoch, lambda moves toward the value at which the training features' intra/inter distance ratio is "
        "target_ratio")
    warmup_epochs: float = Field(5.0, gt=0, description="warmup schedule: epochs to reach lambda_")
    eta: float = Field(0.1, gt=0, description="gradnorm schedule: |grad_h lambda*L_Intra| / |grad_h L_CE|")
    target_ratio: float = Field(0.7, gt=0, description="ratio schedule: target intra/inter distance ratio of the "
                                "training features")
    ratio_gain: float = Field(2.0, gt=0, description="ratio schedule: lambda *= exp(gain * (r - measured) / r) "
                              "each epoch")
    delta: float = Field(0.5, ge=-1, le=1, description="margin threshold on rho = p_y - max_k!=y p_k")
    margin: bool = Field(True, description="False: every sample is an anchor")
    tau: float = Field(0.1, gt=0, description="temperature")
    positive: Literal["view", "memory"] = "view"
    cache: CacheConfig = CacheConfig()


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


class IntraTerm(ObjectiveTerm):
    """λ·L_Intra with the margin filter, the class cache, the positive of ``cfg.positive`` and λ from
    ``cfg.lambda_schedule`` (logged per epoch as ``intra_lambda``)."""

    def __init__(self, cfg: IntraConfig, ctx: ObjectiveContext):
        super().__init__()
        self.cfg = cfg
        self.differentiates_features = cfg.lambda_schedule == "gradnorm"  # autograd.grad(L_CE, features)
        self.cache = ClassCache(ctx.num_classes, ctx.emb_dim, cfg.cache) if cfg.cache.enabled else None
        self.memory_positive = cfg.positive == "memory"
        if self.memory_positive:  # previous-visit embedding of every training image
            self.register_buffer("sample_bank", torch.zeros(ctx.num_train, ctx.emb_dim))
            self.register_buffer("sample_seen", torch.zeros(ctx.num_train, dtype=torch.bool))
        if cfg.lambda_schedule == "ratio":  # this epoch's λ, set at the end of the last one (checkpointed)
            self.register_buffer("ratio_lambda", torch.tensor(float(cfg.lambda_)))
        # per epoch, on the device (no per-step sync): anchors, negatives, Σλ, steps, the sums of same-class and
        # different-class feature distances (ratio schedule) and rows
        self.register_buffer("_stats", torch.zeros(9), persistent=False)

    def lam(self, step: ObjectiveStep, loss: Tensor) -> Tensor:
        """This step's λ (a detached scalar tensor)."""
        c = self.cfg
        if c.lambda_schedule == "warmup":
            return loss.new_tensor(c.lambda_ * min(1.0, step.progress / c.warmup_epochs))
        if c.lambda_schedule == "ratio":
            return self.ratio_lambda.to(loss.dtype)
        if c.lambda_schedule == "gradnorm":
            return gradnorm_lambda(step.ce, loss, step.features, c.eta)
        return loss.new_tensor(c.lambda_)

    def forward(self, step: ObjectiveStep) -> dict[str, Tensor]:
        loss = self.intra_loss(step.emb, step.logits, step.labels, step.ids, step.b)
        lam = self.lam(step, loss)
        with torch.no_grad():
            self._stats[2:4] += torch.stack([lam.float(), lam.new_ones((), dtype=torch.float32)])
            if self.cfg.lambda_schedule == "ratio":
                self._stats[4:8] += class_distance_sums(step.features[: step.b].detach().float(), step.labels[: step.b])
        return {"intra": lam * loss}

    def intra_loss(self, emb: Tensor, logits: Tensor, labels: Tensor, ids: Tensor, b: int) -> Tensor:
        c = self.cfg
        anchors = class_margin(logits, labels) > c.delta if c.margin else torch.ones_like(labels, dtype=torch.bool)
        if self.memory_positive:
            positives = self.sample_bank[ids]
            anchors &= self.sample_seen[ids]
        else:  # the positive of view v is view v+1 of the same image (cyclically)
            positives = emb.roll(-b, dims=0)
        cache = self.cache
        loss, n_neg = intra_class_loss(
            emb, positives, labels, ids, anchors, c.tau, cache=cache.bank if cache is not None else None,
            cache_valid=cache.valid() if cache is not None else None,
            cache_ids=cache.ids if cache is not None else None,
        )
        with torch.no_grad():  # memories take the rows of every rank, so all ranks keep the same memory
            e0, y0, i0 = gather_cat(emb[:b].detach()), gather_cat(labels[:b]), gather_cat(ids[:b])
            if cache is not None:
                first = gather_cat(anchors[:b])  # anchors of view 0 feed the cache (one entry per image)
                cache.push(e0[first], y0[first], i0[first])
            if self.memory_positive:
                self.sample_bank[i0] = e0
                self.sample_seen[i0] = True
            self._stats[:2] += torch.stack([anchors.sum().float(), n_neg.sum().float()])
            self._stats[8] += anchors.numel()
        return loss

    def epoch_stats(self) -> dict[str, float]:
        """The epoch's statistics (reset here); the ratio schedule sets the next epoch's λ from them."""
        s = gather_cat(self._stats[None]).sum(0).tolist() if self.cfg.lambda_schedule == "ratio" else self._stats.tolist()
        anchors, negs, lam_sum, steps, intra_sum, intra_n, inter_sum, inter_n, rows = s
        self._stats.zero_()
        stats = {"margin_pass_frac": anchors / max(rows, 1), "negatives_per_anchor": negs / max(anchors, 1),
                 "intra_lambda": lam_sum / max(steps, 1)}
        if self.cache is not None:
            stats["cache_fill"] = float(self.cache.fill.float().mean() / self.cache.capacity)
        if self.cfg.lambda_schedule == "ratio" and intra_n > 0 and inter_n > 0:
            ratio = (intra_sum / intra_n) / (inter_sum / inter_n)
            stats["train_intra_inter_ratio"] = ratio
            self.ratio_lambda.copy_(ratio_update(float(self.ratio_lambda), ratio, self.cfg.target_ratio,
                                                 self.cfg.ratio_gain))
        return stats


def gradnorm_lambda(ce: Tensor, intra: Tensor, features: Tensor, eta: float, eps: float = 1e-12) -> Tensor:
    """λ with ``‖∇_h λ·L_Intra‖ = η·‖∇_h L_CE‖`` on the shared features h (detached; 0 when L_Intra has no
    gradient, e.g. no anchor passed the margin). Costs two backward passes through the heads only."""
    if not (intra.requires_grad and ce.requires_grad and features.requires_grad):
        return intra.new_zeros(())
    g_ce, = torch.autograd.grad(ce, features, retain_graph=True, allow_unused=True)
    g_in, = torch.autograd.grad(intra, features, retain_graph=True, allow_unused=True)
    if g_ce is None or g_in is None:
        return intra.new_zeros(())
    n_in, n_ce = _wide(g_in).norm(), _wide(g_ce).norm()
    lam = eta * n_ce / n_in.clamp_min(eps)
    return torch.where(n_in > eps, lam, torch.zeros_like(lam)).to(intra.dtype).detach()


def _wide(t: Tensor) -> Tensor:
    """float32 for half-precision tensors, the tensor's own dtype otherwise (float64 stays float64)."""
    return t.float() if t.element_size() < 4 else t


def class_distance_sums(features: Tensor, labels: Tensor) -> Tensor:
    """``[Σ same-class distances, #pairs, Σ different-class distances, #pairs]`` over the distinct pairs of
    a batch (Euclidean distance of the features)."""
    d = torch.cdist(features, features)
    same = labels[:, None] == labels[None, :]
    upper = torch.ones_like(same).triu(1)
    intra, inter = same & upper, ~same & upper
    return torch.stack([d[intra].sum(), intra.sum().float(), d[inter].sum(), inter.sum().float()])


def ratio_update(lam: float, ratio: float, target: float, gain: float, lo: float = 1e-4, hi: float = 10.0) -> float:
    """The ratio schedule's feedback rule: L_Intra spreads the features within a class, so a ratio below the
    target asks for a larger λ and one above it for a smaller λ: ``λ·exp(gain·(target − ratio)/target)``,
    kept in ``[lo, hi]`` (a λ of 0 could never grow again)."""
    return float(min(max(lam * math.exp(gain * (target - ratio) / target), lo), hi))


def _one_view_takes_memory(overrides: dict, base) -> dict:
    """One view per image leaves no second view to be the positive: take it from the memory of past
    embeddings (when the variant keeps the intra objective with a view positive)."""
    o = base.objective
    if overrides.get("objective.views") == 1 and o.kind == "intra" and o.intra.positive == "view":
        return {"objective.intra.positive": "memory"}
    return {}


KNOBS = (
    knob("intra.lambda_schedule", "objective.intra.lambda_schedule", "choice",
         ["lambda schedule", "schedule of lambda", "weight schedule", "adaptive lambda", "adaptive weight",
          "adaptive weighting", "adaptive loss weighting", "dynamic weighting", "dynamic lambda",
          "loss weight schedule", "automatic weighting", "lambda adaptation", "adaptive lambda schedule",
          "lambda warmup", "warmup of lambda", "warmup of the intra class loss weight", "linear warmup of lambda"],
         "how lambda is set: constant, warmup (linear from 0), gradnorm (intra gradient = eta x CE gradient on the "
         "features, each step), ratio (per epoch, toward a target intra/inter distance ratio); ADD: gradnorm",
         scope="intra", off_value="constant", on_value="gradnorm", requires="objective.kind=intra",
         choices={"constant": ("constant", "fixed", "static", "fixed lambda", "constant lambda"),
                  "warmup": ("warmup", "warm up", "linear warmup", "ramp", "ramp up", "linear ramp"),
                  "gradnorm": ("gradnorm", "gradient norm", "gradient normalization", "gradient balancing",
                               "gradient norm balancing", "grad norm"),
                  "ratio": ("ratio", "feedback", "distance ratio", "target ratio", "ratio feedback",
                            "intra inter ratio")}),
    knob("intra.eta", "objective.intra.eta", "float",
         ["eta", "gradnorm eta", "gradnorm fraction", "gradnorm target", "eta of the gradnorm schedule"],
         "gradnorm schedule: fraction eta of the CE gradient norm that lambda*L_Intra gets on the features",
         scope="intra", requires="objective.intra.lambda_schedule=gradnorm"),
    knob("intra.target_ratio", "objective.intra.target_ratio", "float",
         ["target ratio", "target distance ratio", "target intra inter ratio", "r"],
         "ratio schedule: the intra/inter distance ratio of the training features that lambda steers toward",
         scope="intra", requires="objective.intra.lambda_schedule=ratio"),
    knob("intra.warmup_epochs", "objective.intra.warmup_epochs", "float",
         ["lambda warmup epochs", "warmup length of lambda", "intra loss warmup epochs", "warmup epochs of the intra class loss weight",
          "number of epochs over which lambda is warmed up", "epochs of the lambda warmup", "ramp up epochs of lambda",
          "warmup of lambda", "warmup period for the intra class loss weight", "length of the lambda warmup"],
         "warmup schedule: epochs for lambda to rise from 0 to lambda_",
         scope="intra", requires="objective.intra.lambda_schedule=warmup"),
    knob("intra.margin", "objective.intra.margin", "bool",
       ["margin", "margin filter", "margin filtering", "margin based filtering", "margin based selection",
        "margin loss integration", "margin integration", "margin mechanism", "margin loss", "margin based anchor selection",
        "anchor filtering", "anchor selection", "anchor sample selection", "sample selection", "sample filtering",
        "confidence based filtering", "confidence filter", "high confidence sample selection", "margin gating",
        "select anchor samples by margin", "margin based intra class contrastive loss"],
       "margin filter on the anchors of L_Intra: only samples with rho = p_y - max_k!=y p_k > delta are anchors; off: every sample is an anchor",
       scope="intra", off_value=False, on_value=True, requires="objective.kind=intra"),
    knob("intra.delta", "objective.intra.delta", "float",
       ["margin threshold", "margin value", "threshold delta", "delta", "margin delta", "confidence threshold",
        "confidence gap threshold", "confidence margin threshold", "margin cutoff", "selection threshold",
        "anchor threshold", "filtering threshold", "margin size", "threshold on the margin", "rho threshold",
        "probability gap threshold", "margin hyperparameter"],
       "margin threshold delta in [-1, 1]: anchors need rho > delta (REMOVE switches the margin filter off)",
       scope="intra", off_value=False, off_path="objective.intra.margin", requires="objective.kind=intra"),
    knob("intra.lambda", "objective.intra.lambda_", "float",
       ["lambda", "loss weight", "intra class loss weight", "weight between cross entropy and intra class loss",
        "balance between ce and l_intra", "coefficient between ce and the intra class loss", "scale of the intra class loss", "weight of the intra class loss",
        "weight of the intra class contrastive loss", "intra class contrastive loss weight", "balance parameter",
        "balancing weight", "trade off parameter", "tradeoff weight", "contrastive loss weight", "coefficient of l_intra",
        "l_intra weight", "weight of l_intra", "intra loss weight", "contrastive weight",
        "diversity weight", "strength of the intra class loss"],
       "weight lambda of L_Intra in L_teacher = L_CE + lambda * L_Intra (REMOVE: 0)",
       scope="intra", off_value=0.0, requires="objective.kind=intra"),
    knob("intra.tau", "objective.intra.tau", "float",
       ["temperature", "tau", "contrastive temperature", "temperature of the contrastive loss", "temperature of infonce",
        "infonce temperature", "similarity temperature", "intra class temperature", "softmax temperature of the contrastive loss",
        "temperature of the intra class loss", "temperature of the similarities"],
       "temperature tau of the similarities in L_Intra",
       scope="intra", requires="objective.kind=intra", typical=CONTRASTIVE_TAU),
    knob("intra.cache", "objective.intra.cache.enabled", "bool",
       ["cache", "caching", "caching mechanism", "pipeline", "pipeline based caching", "pipeline caching",
        "pipeline style caching", "pipeline queue", "pipeline mechanism", "negative sample cache", "negative cache",
        "feature cache", "memory cache", "per class cache", "per class queue", "class wise queue", "memory queue",
        "negative queue", "cached negatives", "cross batch negatives", "cross batch memory", "feature buffer",
        "negative sample accumulation", "accumulate negative samples", "memory buffer", "queue of negatives"],
       "per-class cache ('pipeline') of detached anchor embeddings used as extra negatives; off: in-batch negatives only",
       scope="intra", off_value=False, on_value=True, requires="objective.kind=intra"),
    knob("intra.cache_size", "objective.intra.cache.size", "int",
       ["cache size", "q", "cache capacity", "queue size", "queue length", "pipeline length", "pipeline size",
        "pipeline depth", "cache depth", "buffer size", "number of cached negatives", "number of cached negatives per class",
        "negatives per class", "number of negatives", "negative bank length", "memory size", "cache length",
        "entries per class", "size of the negative cache", "number of negative samples"],
       "Q, cached embeddings per class (REMOVE switches the cache off)",
       scope="intra", off_value=False, off_path="objective.intra.cache.enabled", requires="objective.kind=intra"),
    knob("intra.cache_mode", "objective.intra.cache.mode", "choice",
       ["cache mode", "cache update", "cache update rule", "cache update strategy", "cache refresh", "refresh policy",
        "pipeline update", "pipeline refresh", "cache policy", "queue update rule", "cache replacement policy"],
       "how the cache is used: fifo ring buffer (sliding window) or flush (accumulate, compute, clear)",
       scope="intra", requires="objective.kind=intra",
       choices={"fifo": ("fifo", "ring buffer", "sliding window", "first in first out", "rolling", "queue", "circular buffer", "continuous"),
                "flush": ("flush", "clear", "accumulate then compute then clear", "accumulate compute clear", "reset",
                          "empty after use", "clear after use", "batch accumulation", "accumulate and flush", "periodic clearing")}),
    knob("intra.positive", "objective.intra.positive", "choice",
       ["positive source", "positive sample", "positive samples", "positive pair", "positive pair construction",
        "source of positives", "positive view", "how positives are formed", "positive selection", "positive",
        "positive choice", "choice of the positive", "positive for each anchor", "anchor positive"],
       "where the positive of an anchor comes from: the other augmented view, or the image's stored embedding (memory)",
       scope="intra", requires="objective.kind=intra",
       choices={"view": ("view", "augmented view", "second view", "two views", "other view", "augmentation", "two augmented views", "data augmentation"),
                "memory": ("memory", "stored embedding", "previous visit", "memory bank", "bank", "single view",
                           "stored features", "previous epoch embedding", "past embedding")}),
)

register(MethodSpec(
    name="intra", role="objective", config=IntraConfig, build=IntraTerm, knobs=KNOBS, scope="intra",
    summary="intra-class contrastive teacher (arXiv 2509.22053): same-class negatives, margin filter, class cache",
    phrases=("intra", "intra class", "intra class contrastive", "intra class contrastive learning", "ours", "proposed",
             "same class negatives", "tuplet"),
    terms={"intra": ("intra", "contrastive")},
    views=lambda block: 1 if block.positive == "memory" else 2,
    min_views=lambda block: 1 if block.positive == "memory" else 2,
    views_hint="objective.views=2 or objective.intra.positive=memory",
    companions=_one_view_takes_memory,
))
