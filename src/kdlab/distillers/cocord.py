"""CoCoRD (Fu et al., BMVC 2023; official code ShipengFu/CoCoRD), as kdlab defines it (DESIGN.md §1).

Networks (``s`` the online student, ``s̄`` its slow-moving EMA copy, ``g`` the frozen teacher):

* student projector ``P`` (Linear → BN → ReLU → Linear by default; ``proj_layers`` Linear layers, 1 = a
  linear projection, BN after each hidden layer unless ``proj_bn`` is off) and predictor ``Q`` (same shape,
  ``pred_layers``/``pred_hidden``/``pred_bn``);
* slow projector ``P̄`` = EMA(m_r) of ``P``; slow student ``s̄`` = EMA(m_r) of ``s`` (all parameters);
* teacher projector ``P_t`` = EMA(m_c) of ``P``. When the teacher's pooled size differs from the
  student's, ``P_t`` has its own input layer (random init, never updated) and only the layers whose
  shapes match ``P``'s follow the EMA; ``m_c = 1`` freezes the whole head. ``teacher_proj_layers``,
  ``teacher_proj_hidden`` and ``teacher_proj_bn`` give ``P_t`` a shape of its own (None: the student's); it
  then starts like a cross-architecture head (own layers random, matching layers copied and EMA-updated).

Views (the official 3-view loader: ``im_sq, im_sk, im_tk``): view 0 is the query view (CE/KD logits and
the contrastive query), view 1 the key view of the prediction loss, view 2 the teacher's key view.

    q  = normalize(P(s(x0)))            k⁺ = normalize(P_t(g(x2)))
    L_ctr  = CE([q·k⁺, q·k_1, …, q·k_K] / τ, 0)        k_i: the queue (or bank samples) of teacher keys;
                                                        ``memory=batch``: the other images' keys of the batch
    D(u, v) = 2 − 2 cos(u, v)
    forward:  D(Q(P(s(x0))), P̄(s̄(x1)))      reverse: D(Q(P(s(x1))), P̄(s̄(x0)))
    L_pred = mean over the batch of forward + reverse (``both``), or of one of them
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import Strict
from kdlab.distillers._common import ema_, frozen_copy, full_precision, wide
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.engine.distributed import gather_cat
from kdlab.registry import CONTRASTIVE_TAU, MethodSpec, knob, register, turns_off_batch_norm


class CoCoRDConfig(Strict):
    ctr_weight: float = Field(1.0, ge=0)
    pred_weight: float = Field(4.0, ge=0)
    queue_size: int = Field(2048, ge=1)
    tau: float = Field(0.1, gt=0)
    m_c: float = Field(0.999, ge=0, le=1, description="teacher projector EMA of the student projector")
    m_r: float = Field(0.9, ge=0, le=1, description="slow-moving student EMA")
    pred: Literal["both", "forward", "reverse"] = "both"
    memory: Literal["queue", "bank", "batch"] = Field(
        "queue", description="negatives: a FIFO queue of teacher keys, a per-sample memory bank, or the batch's "
                             "other keys only (no dictionary)")
    proj_dim: int = Field(2048, ge=1)
    proj_hidden: int = Field(2048, ge=1)
    proj_layers: int = Field(2, ge=1, description="Linear layers of the projector (1: a linear projection)")
    proj_bn: bool = Field(True, description="BatchNorm after each hidden layer of the projector")
    pred_hidden: int = Field(512, ge=1)
    pred_layers: int = Field(2, ge=1, description="Linear layers of the predictor (1: linear)")
    pred_bn: bool = Field(True, description="BatchNorm after each hidden layer of the predictor")
    teacher_proj_layers: int | None = Field(None, ge=1, description="the teacher projector's own depth (None: proj_layers)")
    teacher_proj_hidden: int | None = Field(None, ge=1, description="its own hidden width (None: proj_hidden)")
    teacher_proj_bn: bool | None = Field(None, description="its own BatchNorm switch (None: proj_bn)")

    def teacher_head(self) -> tuple[int, int, bool]:
        """(layers, hidden, bn) of the teacher projector."""
        return (self.proj_layers if self.teacher_proj_layers is None else self.teacher_proj_layers,
                self.proj_hidden if self.teacher_proj_hidden is None else self.teacher_proj_hidden,
                self.proj_bn if self.teacher_proj_bn is None else self.teacher_proj_bn)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, bn: bool = True) -> nn.Sequential:
    """``layers`` Linear layers, each hidden one followed by BatchNorm1d (if ``bn``) and ReLU; the default is
    the release's projector and predictor shape, Linear → BatchNorm1d → ReLU → Linear; ``layers=1`` is linear."""
    mods: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(width, hidden)] + ([nn.BatchNorm1d(hidden)] if bn else []) + [nn.ReLU(inplace=True)]
        width = hidden
    return nn.Sequential(*mods, nn.Linear(width, out_dim))


def prediction_distance(u: Tensor, v: Tensor) -> Tensor:
    """``D(u, v) = 2 − 2·cos(u, v)`` per row (the release's normalised MSE)."""
    return 2.0 - 2.0 * (F.normalize(wide(u), dim=-1) * F.normalize(wide(v), dim=-1)).sum(-1)


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


class CoCoRD(DistillLoss):
    """Config (``distill.cocord.*``): ``ctr_weight`` (1), ``pred_weight`` (4), ``queue_size`` (K=2048),
    ``tau`` (0.1), ``m_c`` (0.999), ``m_r`` (0.9), ``pred`` (both|forward|reverse), ``memory``
    (queue|bank|batch), ``proj_dim`` (2048), ``proj_hidden`` (2048), ``proj_layers`` (2), ``proj_bn`` (on),
    ``pred_hidden`` (512), ``pred_layers`` (2), ``pred_bn`` (on), ``teacher_proj_*`` (the student's). The CE
    weight is ``distill.ce_weight``."""

    needs_teacher = False  # the teacher sees view 2 only (its own forward below)

    def __init__(self, cfg: CoCoRDConfig, ctx: DistillContext):
        super().__init__()
        if ctx.student is None:
            raise ValueError("distill.cocord keeps an EMA copy of the student: build it through Distillation "
                             "(or pass DistillContext.student)")
        self.cfg = cfg
        s_dim, t_dim = ctx.student_probe.pooled_dim, ctx.teacher_probe.pooled_dim
        self.projector = mlp(s_dim, cfg.proj_hidden, cfg.proj_dim, cfg.proj_layers, cfg.proj_bn)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim, cfg.pred_layers, cfg.pred_bn)
        self.slow_student = frozen_copy(ctx.student)
        self.slow_projector = frozen_copy(self.projector)
        t_layers, t_hidden, t_bn = cfg.teacher_head()
        if t_dim == s_dim and (t_layers, t_hidden, t_bn) == (cfg.proj_layers, cfg.proj_hidden, cfg.proj_bn):
            self.teacher_projector = frozen_copy(self.projector)
        else:  # own shape (random init); the layers whose shapes match start from the student projector
            head = mlp(t_dim, t_hidden, cfg.proj_dim, t_layers, t_bn)
            for i in _matching_layers(self.projector, head):
                head[i].load_state_dict(self.projector[i].state_dict())
            self.teacher_projector = head.requires_grad_(False)
        self.ema_layers = _matching_layers(self.projector, self.teacher_projector)
        object.__setattr__(self, "_online", ctx.student)  # not registered: the student belongs to Distillation

        d, k = cfg.proj_dim, cfg.queue_size
        if cfg.memory == "batch":
            pass  # in-batch negatives: nothing is kept between steps
        elif cfg.memory == "queue":
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
            key = F.normalize(wide(self.teacher_projector(step.teacher(x2).pooled)), dim=1)

        with full_precision(q0):
            query = F.normalize(wide(q0), dim=1)
            negatives, mask = self._negatives(batch.index, key)
            negatives = negatives.to(query.dtype)
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

    def _negatives(self, index: Tensor, key: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.cfg.memory == "batch":  # the other images' teacher keys; an image's own key is its positive
            return key, torch.eye(key.shape[0], dtype=torch.bool, device=key.device)
        if self.cfg.memory == "queue":
            return self.queue.detach().float().clone(), None  # a copy: the queue is updated in place below
        k = self.cfg.queue_size
        idx = torch.randint(0, self.bank.shape[0], (k,), device=self.bank.device)
        # an image's own earlier key is not a negative for it
        return self.bank[idx].float(), idx[None, :] == index[:, None]

    @torch.no_grad()
    def _push(self, keys: Tensor, index: Tensor) -> None:
        if self.cfg.memory == "batch":
            return
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
        if self.cfg.memory == "batch":
            pass
        elif self.cfg.memory == "queue":
            out["cocord_queue_ptr"] = float(self.queue_ptr)
            out["cocord_queue_fill"] = float(self.queue_fill) / self.queue.shape[0]
        else:
            out["cocord_bank_fill"] = float(self.bank_seen.float().mean())
        return out


def _parse_pred(text: str, generic) -> str:
    """Directions of the prediction loss as papers write them: a tilde or "swapped" is the reverse term,
    "asymmetric"/"one direction" the forward one, "symmetrised"/"both"/"+" both."""
    raw = unicodedata.normalize("NFKC", text).lower()
    if re.search(r"[~\u0303\u02dc]|tilde|revers|swap|opposite", raw):
        return "reverse"
    if re.search(r"asym|non[\s-]*sym|without\s+sym|one[\s-]*(way|direction|sided)|unidirection|only", raw):
        return "forward"
    if re.search(r"\bboth\b|symmetri|bidirection|\+", raw):
        return "both"
    return generic(text)


_DEPTH_WORDS = {"one": 1, "single": 1, "two": 2, "three": 3, "four": 4}


def _parse_depth(text: str, generic) -> int:
    """A head's depth as plans write it: "linear" is 1 layer, "MLP"/"non-linear" the release's 2, "3-layer
    perceptron" 3; a number of layers as a number. Words about batch norm belong to the ``*_bn`` knobs: a
    value that turns BN off is refused rather than read as a depth alone."""
    raw = unicodedata.normalize("NFKC", text).lower()
    if turns_off_batch_norm(text):
        raise ValueError(f"{text!r} also switches batch norm off: ablate it with the head's batch-norm knob "
                         "(cocord.proj_bn / cocord.pred_bn) as its own ablation")
    m = re.search(r"\b(\d+|one|single|two|three|four)[\s-]*(layers?|fc|linear layers)\b", raw)
    if m:
        return int(m[1]) if m[1].isdigit() else _DEPTH_WORDS[m[1]]
    if re.search(r"\bnon[\s-]*linear|\bmlp\b|perceptron", raw):
        return 2
    if re.search(r"\blinear\b", raw):
        return 1
    return generic(text)


def _parse_dictionary(text: str, generic):
    """A value of the teacher dictionary (its size or kind). A dictionary filled by another network is neither:
    its keys are the teacher's (through the teacher projector), so the plan means another teacher or head."""
    raw = unicodedata.normalize("NFKC", text).lower()
    if re.search(r"architecture|encoder|network|backbone|model", raw):
        raise ValueError(f"{text!r}: CoCoRD's dictionary holds the teacher's keys, it has no architecture of its "
                         "own; to fill it from another network vary the teacher (--map \"NAME=teacher.arch\" "
                         "with architectures as values) or its head (--map \"NAME=cocord.teacher_proj_layers\")")
    return generic(text)


_PROJ = ("projection head", "projection heads", "projector", "projectors", "projection head architecture",
         "projection head depth", "projector depth", "projector architecture", "number of projector layers",
         "projection heads for both student and teacher", "two layer perceptron projection heads",
         "student and teacher projection heads", "mlp projection heads", "number of layers in the projection head",
         "projection mlp", "linear vs mlp projector")
_PRED = ("predictor", "prediction head", "predictor depth", "predictor architecture", "prediction head architecture",
         "number of predictor layers", "prediction mlp", "linear vs mlp predictor", "student predictor")
_TEACHER_PROJ = ("teacher projection head", "teacher projector", "teacher projection head architecture",
                 "teacher projector depth", "teacher projection head depth", "teacher side projection head")


def _head_knobs(side: str, path: str, aliases: tuple[str, ...], what: str, bn_off: bool = True) -> tuple:
    """Depth and batch-norm knobs of one CoCoRD head (``proj``, ``pred`` or ``teacher_proj``)."""
    req = "distill.methods~cocord"
    return (
        knob(f"cocord.{side}_layers", f"distill.cocord.{path}_layers", "int", aliases,
             f"Linear layers of {what} (1: linear, 2: the release's MLP, 3: ...); a plan may say linear, MLP, "
             "n-layer perceptron", scope="cocord", requires=req, parse=_parse_depth),
        knob(f"cocord.{side}_bn", f"distill.cocord.{path}_bn", "bool",
             [f"batch normalization in the {a}" for a in aliases[:3]] + [f"{a} batch norm" for a in aliases[:3]]
             + [f"bn in the {a}" for a in aliases[:2]],
             f"BatchNorm after each hidden layer of {what} (REMOVE: off)", scope="cocord", requires=req,
             off_value=False, on_value=True),
    )


KNOBS = (
    knob("cocord.queue_size", "distill.cocord.queue_size", "int",
       ["dictionary size", "dictionary size n", "n", "queue size", "queue length", "size of the queue", "memory queue size",
        "memory queue", "number of negatives", "number of negative keys", "negative bank length", "teacher dictionary",
        "size of the teacher dictionary", "number of keys", "k", "dictionary length", "memory size", "queue capacity",
        "queue of teacher keys", "teacher keys",
        "negative sample queue size", "number of negative samples"],
       "N, teacher keys kept in the CoCoRD queue (negatives of InfoNCE; REMOVE: in-batch negatives, no dictionary)",
       scope="cocord", requires="distill.methods~cocord & distill.cocord.memory=queue|bank", off_value="batch",
       off_path="distill.cocord.memory", parse=_parse_dictionary),
    knob("cocord.memory", "distill.cocord.memory", "choice",
       ["memory type", "dictionary type", "memory structure", "queue or memory bank", "negative storage",
        "dictionary implementation", "memory bank", "type of dictionary", "negative memory", "source of negatives",
        "negative samples source", "teacher dictionary"],
       "where CoCoRD's negatives live: a FIFO queue of teacher keys, a per-sample memory bank, or the batch's "
       "other keys only (REMOVE: batch, no dictionary)",
       scope="cocord", requires="distill.methods~cocord", off_value="batch", parse=_parse_dictionary,
       choices={"queue": ("queue", "fifo queue", "dictionary queue", "moco style queue", "moco queue", "fifo",
                          "teacher queue", "fixed size queue", "fixed size teacher queue"),
                "bank": ("bank", "memory bank", "crd style memory bank", "per sample memory", "instance memory bank",
                         "full dataset memory bank", "dataset memory bank"),
                "batch": ("batch", "in batch negatives", "in batch", "batch negatives", "no queue", "no dictionary",
                          "no memory", "without dictionary", "current batch only", "simclr style negatives",
                          "other samples in the batch")}),
    knob("cocord.m_c", "distill.cocord.m_c", "float",
       ["mc", "m_c", "momentum", "momentum coefficient", "teacher momentum", "momentum of the teacher projection head", "momentum coefficient of the teacher head",
        "momentum coefficient of the teacher projection head", "momentum update for the teacher projection head",
        "teacher projection head momentum", "teacher projector momentum", "teacher projector ema", "teacher head momentum",
        "teacher head update", "contrastive encoder momentum", "momentum of the contrastive encoder head",
        "teacher projection head update"],
       "m_c: the teacher projector is an EMA of the student projector (1: frozen; REMOVE: 0, no momentum)",
       scope="cocord", off_value=0.0, requires="distill.methods~cocord"),
    knob("cocord.m_r", "distill.cocord.m_r", "float",
       ["mr", "m_r", "momentum", "momentum coefficient", "slow moving student", "slow moving student momentum", "momentum of the slow moving student",
        "momentum coefficient of the slow moving student", "ema of the student", "student ema", "student momentum",
        "cognate encoder momentum", "momentum of the cognate encoder", "target network momentum", "slow student momentum",
        "momentum update of the slow moving student", "mean student momentum", "slow moving student ema"],
       "m_r: the slow-moving student (and its projector) is an EMA of the student (REMOVE: 0, no momentum)",
       scope="cocord", off_value=0.0, requires="distill.methods~cocord"),
    knob("cocord.pred", "distill.cocord.pred", "choice",
       ["symmetrization of the prediction loss", "prediction loss symmetrization", "symmetric prediction loss",
        "lpred symmetrization", "symmetrized prediction loss", "prediction loss direction", "direction of the prediction loss",
        "swapped views", "view swapping", "symmetrized loss", "symmetric consistency loss", "loss symmetrization",
        "symmetrization", "bidirectional prediction loss", "consistency loss direction"],
       "which directions of the prediction loss D(u,v)=2-2cos are used: both (symmetrised), forward (Lpred only), reverse (swapped L~pred only)",
       scope="cocord", off_value="forward", requires="distill.methods~cocord", parse=_parse_pred,
       choices={"both": ("both", "symmetric", "symmetrized", "lpred lpred", "both directions", "bidirectional", "sum of both"),
                "forward": ("forward", "lpred only", "lpred", "one direction", "unidirectional", "asymmetric", "non symmetric",
                            "student predicts slow moving student", "original direction", "without symmetrization"),
                "reverse": ("reverse", "reversed", "swapped", "swapped only", "opposite direction", "tilde")}),
    knob("cocord.pred_weight", "distill.cocord.pred_weight", "float",
       ["prediction loss weight", "lambda pred", "pred weight", "weight of the prediction loss", "consistency loss weight",
        "consistency loss", "prediction loss", "lpred weight", "weight of the consistency loss", "mse loss weight",
        "prediction loss coefficient", "lpred"],
       "lambda_pred, weight of the prediction (consistency) loss (REMOVE: 0)",
       scope="cocord", off_value=0.0, requires="distill.methods~cocord"),
    knob("cocord.ctr_weight", "distill.cocord.ctr_weight", "float",
       ["contrastive loss weight", "lambda ctr", "ctr weight", "weight of the contrastive loss", "infonce weight",
        "infonce loss weight", "contrastive loss", "lctr", "infonce loss", "contrastive term", "weight of infonce"],
       "lambda_ctr, weight of CoCoRD's InfoNCE term (REMOVE: 0)",
       scope="cocord", off_value=0.0, requires="distill.methods~cocord"),
    knob("cocord.tau", "distill.cocord.tau", "float",
       ["temperature", "tau", "contrastive temperature", "temperature of infonce", "infonce temperature",
        "temperature of the contrastive loss", "softmax temperature", "temperature parameter"],
       "temperature tau of CoCoRD's InfoNCE", scope="cocord", requires="distill.methods~cocord", typical=CONTRASTIVE_TAU),
    knob("cocord.proj_dim", "distill.cocord.proj_dim", "int",
       ["projection dimension", "projector output dimension", "embedding dimension", "projection head output dimension",
        "feature dimension of the projector", "projection size"],
       "output size of CoCoRD's projectors", scope="cocord", requires="distill.methods~cocord"),
    knob("cocord.proj_hidden", "distill.cocord.proj_hidden", "int",
       ["projector hidden dimension", "projection head width", "hidden width of the projector", "projector width"],
       "hidden width of CoCoRD's projectors", scope="cocord", requires="distill.methods~cocord"),
    knob("cocord.pred_hidden", "distill.cocord.pred_hidden", "int",
       ["predictor hidden dimension", "predictor width", "prediction head width", "hidden width of the predictor"],
       "hidden width of CoCoRD's predictor", scope="cocord", requires="distill.methods~cocord"),
    knob("cocord.teacher_proj_hidden", "distill.cocord.teacher_proj_hidden", "int",
       ["teacher projector hidden dimension", "teacher projector width", "teacher projection head width",
        "hidden width of the teacher projector"],
       "hidden width of CoCoRD's teacher projector alone (default: the student's)", scope="cocord",
       requires="distill.methods~cocord"),
    *_head_knobs("proj", "proj", _PROJ, "CoCoRD's projectors (student and slow student; the other side's follows unless set apart)"),
    *_head_knobs("pred", "pred", _PRED, "CoCoRD's predictor"),
    *_head_knobs("teacher_proj", "teacher_proj", _TEACHER_PROJ, "CoCoRD's teacher projector alone (default: the student's)"),
)

register(MethodSpec(
    name="cocord", role="distiller", config=CoCoRDConfig, build=CoCoRD, knobs=KNOBS, scope="cocord",
    views=lambda block: 3,  # the query view, the key view of the prediction loss, the teacher's key view
    summary="Fu et al., BMVC 2023: contrastive + consistency distillation with a slow-moving student",
    phrases=('cocord', 'contrastive consistent representation distillation', 'consistent representation distillation'),
    terms={"cocord_ctr": ("cocord", "contrastive"), "cocord_pred": ("cocord", "prediction")},
    list_aliases=('cocord',),
))
