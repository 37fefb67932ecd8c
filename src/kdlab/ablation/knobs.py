"""The knob registry: every component and hyper-parameter an ablation plan can name, as data.

A :class:`Knob` points at a dotted path of :class:`kdlab.config.ExperimentConfig` and says how a plan talks
about it (``aliases``, ``description``), what REMOVE and ADD mean for it (``off_value``/``on_value``, possibly
on another path: removing the margin *threshold* switches the margin filter off), which method it belongs to
(``scope``: the intra-class teacher method, CoCoRD, or ``common``) and when it has an effect at all
(``requires``). Types and ranges are not repeated here: they are read from the config model itself, and
every value is validated by building the config.

``docs/ABLATION.md`` carries the table :func:`render_knob_table` prints; a test keeps the two in sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Union, get_args, get_origin

from pydantic import BaseModel

from kdlab.config import ExperimentConfig

__all__ = [
    "Knob",
    "KNOBS",
    "NOTHING",
    "METHOD_NAMES",
    "AUGMENT_NAMES",
    "knob_by_name",
    "knobs_for_path",
    "field_info",
    "FieldInfo",
    "render_knob_table",
    "Scope",
]

Scope = Literal["intra", "cocord", "common"]


class _Nothing:
    def __repr__(self) -> str:
        return "NOTHING"

    def __bool__(self) -> bool:
        return False


NOTHING: Any = _Nothing()  # "no off/on value": REMOVE/ADD is not meaningful for the knob


@dataclass(frozen=True)
class Knob:
    """One named thing a plan can ablate.

    ``kind``: ``float | int | bool | choice | augment | methods | arch | pair`` (``augment`` and ``methods``
    are lists that ADD appends to and REMOVE takes from; ``pair`` sets teacher.arch and student.arch).
    ``choices``: for ``choice`` knobs, value -> phrases a plan may use for it.
    ``off_value``/``off_path``: what REMOVE sets (default path: ``path``). ``on_value``/``on_path``: ADD.
    ``also``: further paths that receive the same value (``lr`` sets both stages).
    ``requires``: ``"path=value"`` or ``"path~item"`` (list contains): the knob only acts when this holds.
    ``parse``: an optional custom parser ``(text) -> value`` (raise ValueError on failure).
    """

    name: str
    path: str
    kind: str
    aliases: tuple[str, ...]
    description: str
    scope: Scope = "common"
    off_value: Any = NOTHING
    off_path: str | None = None
    on_value: Any = NOTHING
    on_path: str | None = None
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    also: tuple[str, ...] = ()
    requires: str | None = None
    parse: Callable[[str], Any] | None = None
    notes: str = ""

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.path,) + tuple(self.also)

    @property
    def stage(self) -> str:
        """Which stage the knob changes: teacher, student or both."""
        stages = {_stage_of(p) for p in self.paths + ((self.off_path,) if self.off_path else ())}
        if len(stages) == 1:
            return stages.pop()
        return "both"

    def removable(self) -> bool:
        return self.off_value is not NOTHING or self.kind in ("bool", "augment", "methods")

    def addable(self) -> bool:
        return self.on_value is not NOTHING or self.kind in ("bool", "augment", "methods")


def _stage_of(path: str) -> str:
    head = path.split(".")[0]
    if head in ("objective", "teacher"):
        return "teacher"
    if head in ("distill", "student"):
        return "student"
    return "both"


# ------------------------------------------------------------------------------------ named values
#: distillation method -> phrases (for the ``methods`` knob and method detection in part text)
METHOD_NAMES: dict[str, tuple[str, ...]] = {
    "kd": ("kd", "vanilla kd", "hinton kd", "knowledge distillation loss", "logit distillation", "kl divergence loss", "soft label distillation"),
    "rkd": ("rkd", "relational knowledge distillation", "relational kd", "relation distillation"),
    "crd": ("crd", "contrastive representation distillation"),
    "dkd": ("dkd", "decoupled knowledge distillation", "decoupled kd"),
    "fitnet": ("fitnet", "fitnets", "hint learning", "hint based distillation", "feature hint"),
    "at": ("at", "attention transfer"),
    "sp": ("sp", "similarity preserving", "similarity preserving distillation"),
    "pkt": ("pkt", "probabilistic knowledge transfer"),
    "cocord": ("cocord", "contrastive consistent representation distillation", "consistent representation distillation"),
}

#: augmentation op -> phrases (torchvision class names included)
AUGMENT_NAMES: dict[str, tuple[str, ...]] = {
    "crop": ("crop", "random crop", "randomcrop", "padded crop", "crop with padding", "translation", "random shift"),
    "flip": ("flip", "horizontal flip", "randomhorizontalflip", "random horizontal flip", "mirror", "mirroring"),
    "rrc": ("rrc", "randomresizedcrop", "random resized crop", "resized crop", "random resize crop", "scale crop"),
    "color_jitter": ("color jitter", "colorjitter", "colour jitter", "color jittering", "color distortion", "colour distortion", "jitter"),
    "grayscale": ("grayscale", "randomgrayscale", "random grayscale", "greyscale", "gray scale"),
    "blur": ("blur", "gaussian blur", "gaussianblur"),
    "cutout": ("cutout", "random erasing", "randomerasing", "erasing", "cut out"),
}

# ------------------------------------------------------------------------------------------ registry
_W = ("weight", "coefficient", "balance parameter", "loss weight")


def _k(name: str, path: str, kind: str, aliases: tuple[str, ...] | list[str], description: str, **kw) -> Knob:
    return Knob(name=name, path=path, kind=kind, aliases=tuple(aliases), description=description, **kw)


KNOBS: tuple[Knob, ...] = (
    # ---------------------------------------------------------------- intra-class teacher (arXiv 2509.22053)
    _k("intra.margin", "objective.intra.margin", "bool",
       ["margin", "margin filter", "margin filtering", "margin based filtering", "margin based selection",
        "margin loss integration", "margin integration", "margin mechanism", "margin loss", "margin based anchor selection",
        "anchor filtering", "anchor selection", "anchor sample selection", "sample selection", "sample filtering",
        "confidence based filtering", "confidence filter", "high confidence sample selection", "margin gating",
        "select anchor samples by margin", "margin based intra class contrastive loss"],
       "margin filter on the anchors of L_Intra: only samples with rho = p_y - max_k!=y p_k > delta are anchors; off: every sample is an anchor",
       scope="intra", off_value=False, on_value=True, requires="objective.kind=intra"),
    _k("intra.delta", "objective.intra.delta", "float",
       ["margin threshold", "margin value", "threshold delta", "delta", "margin delta", "confidence threshold",
        "confidence gap threshold", "confidence margin threshold", "margin cutoff", "selection threshold",
        "anchor threshold", "filtering threshold", "margin size", "threshold on the margin", "rho threshold",
        "probability gap threshold", "margin hyperparameter"],
       "margin threshold delta in [-1, 1]: anchors need rho > delta (REMOVE switches the margin filter off)",
       scope="intra", off_value=False, off_path="objective.intra.margin", requires="objective.kind=intra"),
    _k("intra.lambda", "objective.intra.lambda_", "float",
       ["lambda", "loss weight", "intra class loss weight", "weight between cross entropy and intra class loss",
        "balance between ce and l_intra", "coefficient between ce and the intra class loss", "scale of the intra class loss", "weight of the intra class loss",
        "weight of the intra class contrastive loss", "intra class contrastive loss weight", "balance parameter",
        "balancing weight", "trade off parameter", "tradeoff weight", "contrastive loss weight", "coefficient of l_intra",
        "l_intra weight", "weight of l_intra", "intra loss weight", "contrastive weight",
        "diversity weight", "strength of the intra class loss"],
       "weight lambda of L_Intra in L_teacher = L_CE + lambda * L_Intra (REMOVE: 0)",
       scope="intra", off_value=0.0, requires="objective.kind=intra"),
    _k("intra.tau", "objective.intra.tau", "float",
       ["temperature", "tau", "contrastive temperature", "temperature of the contrastive loss", "temperature of infonce",
        "infonce temperature", "similarity temperature", "intra class temperature", "softmax temperature of the contrastive loss",
        "temperature of the intra class loss", "temperature of the similarities"],
       "temperature tau of the similarities in L_Intra",
       scope="intra", requires="objective.kind=intra"),
    _k("intra.cache", "objective.intra.cache.enabled", "bool",
       ["cache", "caching", "caching mechanism", "pipeline", "pipeline based caching", "pipeline caching",
        "pipeline style caching", "pipeline queue", "pipeline mechanism", "negative sample cache", "negative cache",
        "feature cache", "memory cache", "per class cache", "per class queue", "class wise queue", "memory queue",
        "negative queue", "cached negatives", "cross batch negatives", "cross batch memory", "feature buffer",
        "negative sample accumulation", "accumulate negative samples", "memory buffer", "queue of negatives"],
       "per-class cache ('pipeline') of detached anchor embeddings used as extra negatives; off: in-batch negatives only",
       scope="intra", off_value=False, on_value=True, requires="objective.kind=intra"),
    _k("intra.cache_size", "objective.intra.cache.size", "int",
       ["cache size", "q", "cache capacity", "queue size", "queue length", "pipeline length", "pipeline size",
        "pipeline depth", "cache depth", "buffer size", "number of cached negatives", "number of cached negatives per class",
        "negatives per class", "number of negatives", "negative bank length", "memory size", "cache length",
        "entries per class", "size of the negative cache", "number of negative samples"],
       "Q, cached embeddings per class (REMOVE switches the cache off)",
       scope="intra", off_value=False, off_path="objective.intra.cache.enabled", requires="objective.kind=intra"),
    _k("intra.cache_mode", "objective.intra.cache.mode", "choice",
       ["cache mode", "cache update", "cache update rule", "cache update strategy", "cache refresh", "refresh policy",
        "pipeline update", "pipeline refresh", "cache policy", "queue update rule", "cache replacement policy"],
       "how the cache is used: fifo ring buffer (sliding window) or flush (accumulate, compute, clear)",
       scope="intra", requires="objective.kind=intra",
       choices={"fifo": ("fifo", "ring buffer", "sliding window", "first in first out", "rolling", "queue", "circular buffer", "continuous"),
                "flush": ("flush", "clear", "accumulate then compute then clear", "accumulate compute clear", "reset",
                          "empty after use", "clear after use", "batch accumulation", "accumulate and flush", "periodic clearing")}),
    _k("intra.positive", "objective.intra.positive", "choice",
       ["positive source", "positive sample", "positive samples", "positive pair", "positive pair construction",
        "source of positives", "positive view", "how positives are formed", "positive selection", "positive",
        "positive choice", "choice of the positive", "positive for each anchor", "anchor positive"],
       "where the positive of an anchor comes from: the other augmented view, or the image's stored embedding (memory)",
       scope="intra", requires="objective.kind=intra",
       choices={"view": ("view", "augmented view", "second view", "two views", "other view", "augmentation", "two augmented views", "data augmentation"),
                "memory": ("memory", "stored embedding", "previous visit", "memory bank", "bank", "single view",
                           "stored features", "previous epoch embedding", "past embedding")}),
    _k("objective.kind", "objective.kind", "choice",
       ["contrastive learning method", "contrastive method", "contrastive objective", "contrastive loss",
        "type of contrastive loss", "contrastive loss type", "form of contrastive learning", "teacher objective",
        "teacher training objective", "teacher loss", "intra class contrastive loss", "intra class contrastive learning",
        "intra class loss", "l_intra", "auxiliary loss", "auxiliary contrastive loss", "contrastive term", "contrastive regularizer",
        "intra class contrastive objective", "contrastive learning"],
       "teacher objective L_CE + lambda * L_kind: intra (the method), supcon (inter-class), simclr (self-supervised), ce (none; REMOVE)",
       scope="intra", off_value="ce",
       choices={"intra": ("intra", "intra class", "intra class contrastive", "intra class contrastive learning", "ours", "proposed",
                          "same class negatives", "tuplet"),
                "supcon": ("supcon", "inter class", "inter class contrastive", "inter class contrastive learning", "supervised contrastive",
                           "supervised contrastive learning", "supcon style", "class level contrastive", "label aware contrastive"),
                "simclr": ("simclr", "self supervised", "self supervised contrastive", "self supervised contrastive learning",
                           "instance discrimination", "instance level contrastive", "unsupervised contrastive", "ntxent", "nt xent"),
                "ce": ("ce", "cross entropy", "cross entropy only", "no contrastive", "none", "plain", "vanilla", "standard training",
                       "without contrastive")}),
    _k("supcon.lambda", "objective.supcon.lambda_", "float",
       ["supcon weight", "supcon loss weight", "weight of the supervised contrastive loss", "inter class contrastive loss weight"],
       "weight of the SupCon (inter-class) term when objective.kind=supcon", scope="intra", off_value=0.0,
       requires="objective.kind=supcon"),
    _k("supcon.tau", "objective.supcon.tau", "float",
       ["supcon temperature", "supervised contrastive temperature", "inter class contrastive temperature"],
       "temperature of the SupCon term", scope="intra", requires="objective.kind=supcon"),
    _k("simclr.lambda", "objective.simclr.lambda_", "float",
       ["simclr weight", "simclr loss weight", "self supervised contrastive loss weight", "weight of the self supervised loss"],
       "weight of the SimCLR term when objective.kind=simclr", scope="intra", off_value=0.0, requires="objective.kind=simclr"),
    _k("simclr.tau", "objective.simclr.tau", "float",
       ["simclr temperature", "self supervised contrastive temperature", "nt xent temperature"],
       "temperature of the SimCLR term", scope="intra", requires="objective.kind=simclr"),
    _k("head.kind", "objective.head.kind", "choice",
       ["projection head", "projection head architecture", "projection head depth", "projector", "projector architecture",
        "embedding head", "head architecture", "projection mlp", "number of projection layers", "head depth",
        "projection network", "projection head type"],
       "projection head P of the teacher embedding e = normalize(P(h)): none, linear, mlp2 (default), mlp3",
       scope="intra", off_value="none",
       choices={"none": ("none", "no projection", "no head", "identity", "without projection head", "backbone features",
                         "raw features", "pooled features directly", "no projector"),
                "linear": ("linear", "linear projection", "single layer", "single layer mlp", "one layer", "1 layer mlp",
                           "single linear layer", "linear layer", "linear head", "fc layer"),
                "mlp2": ("mlp2", "2 layer mlp", "two layer mlp", "two layer", "2 layer", "mlp with one hidden layer",
                         "nonlinear projection", "non linear head", "mlp head"),
                "mlp3": ("mlp3", "3 layer mlp", "three layer mlp", "three layer", "3 layer", "deeper mlp", "mlp with two hidden layers")}),
    _k("head.dim", "objective.head.dim", "int",
       ["embedding dimension", "projection dimension", "projection head output dimension", "output dimension of the projection head",
        "embedding size", "feature dimension of the embedding", "embedding dim", "projection dim", "contrastive feature dimension",
        "dimension of the embedding space"],
       "embedding size of the projection head output", scope="intra"),
    _k("head.hidden", "objective.head.hidden", "int",
       ["projection head width", "hidden width", "hidden dimension", "hidden units", "hidden layer size",
        "width of the projection head", "projector hidden dimension", "head width"],
       "hidden width of the projection head (None: backbone feature size)", scope="intra"),
    _k("head.bn", "objective.head.bn", "bool",
       ["batch normalization in the projection head", "projection head batch norm", "bn in the head", "head batchnorm",
        "batch norm in projector", "projection head normalization"],
       "BatchNorm between the projection head's layers", scope="intra", off_value=False, on_value=True),
    _k("view_augment", "data.view_augment", "augment",
       ["augmentation policy", "view augmentation", "augmentation of the views", "augmentation for the contrastive views",
        "contrastive augmentation", "augmentations for positive pairs", "positive pair augmentation", "view generation",
        "augmentation strategy", "data augmentation for contrastive learning", "augmentation pipeline", "augmentations",
        "augmentation", "data augmentation", "view transformations"],
       "augmentations producing the extra contrastive views (crop, flip, rrc, color_jitter, grayscale, blur, cutout)",
       scope="intra"),
    # ---------------------------------------------------------------- CoCoRD student (ShipengFu/CoCoRD)
    _k("cocord.queue_size", "distill.cocord.queue_size", "int",
       ["dictionary size", "dictionary size n", "n", "queue size", "queue length", "size of the queue", "memory queue size",
        "memory queue", "number of negatives", "number of negative keys", "negative bank length", "teacher dictionary",
        "size of the teacher dictionary", "number of keys", "k", "dictionary length", "memory size", "queue capacity",
        "queue of teacher keys", "teacher keys",
        "negative sample queue size", "number of negative samples"],
       "N, teacher keys kept in the CoCoRD queue (negatives of InfoNCE)",
       scope="cocord", requires="distill.methods~cocord"),
    _k("cocord.memory", "distill.cocord.memory", "choice",
       ["memory type", "dictionary type", "memory structure", "queue or memory bank", "negative storage",
        "dictionary implementation", "memory bank", "type of dictionary", "negative memory"],
       "where CoCoRD's negatives live: a FIFO queue of teacher keys or a per-sample memory bank",
       scope="cocord", requires="distill.methods~cocord",
       choices={"queue": ("queue", "fifo queue", "dictionary queue", "moco style queue", "moco queue", "fifo"),
                "bank": ("bank", "memory bank", "crd style memory bank", "per sample memory", "instance memory bank")}),
    _k("cocord.m_c", "distill.cocord.m_c", "float",
       ["mc", "m_c", "momentum", "momentum coefficient", "teacher momentum", "momentum of the teacher projection head", "momentum coefficient of the teacher head",
        "momentum coefficient of the teacher projection head", "momentum update for the teacher projection head",
        "teacher projection head momentum", "teacher projector momentum", "teacher projector ema", "teacher head momentum",
        "teacher head update", "contrastive encoder momentum", "momentum of the contrastive encoder head",
        "teacher projection head update"],
       "m_c: the teacher projector is an EMA of the student projector (1: frozen; REMOVE: 0, no momentum)",
       scope="cocord", off_value=0.0, requires="distill.methods~cocord"),
    _k("cocord.m_r", "distill.cocord.m_r", "float",
       ["mr", "m_r", "momentum", "momentum coefficient", "slow moving student", "slow moving student momentum", "momentum of the slow moving student",
        "momentum coefficient of the slow moving student", "ema of the student", "student ema", "student momentum",
        "cognate encoder momentum", "momentum of the cognate encoder", "target network momentum", "slow student momentum",
        "momentum update of the slow moving student", "mean student momentum", "slow moving student ema"],
       "m_r: the slow-moving student (and its projector) is an EMA of the student (REMOVE: 0, no momentum)",
       scope="cocord", off_value=0.0, requires="distill.methods~cocord"),
    _k("cocord.pred", "distill.cocord.pred", "choice",
       ["symmetrization of the prediction loss", "prediction loss symmetrization", "symmetric prediction loss",
        "lpred symmetrization", "symmetrized prediction loss", "prediction loss direction", "direction of the prediction loss",
        "swapped views", "view swapping", "symmetrized loss", "symmetric consistency loss", "loss symmetrization",
        "symmetrization", "bidirectional prediction loss", "consistency loss direction"],
       "which directions of the prediction loss D(u,v)=2-2cos are used: both (symmetrised), forward (Lpred only), reverse (swapped L~pred only)",
       scope="cocord", off_value="forward", requires="distill.methods~cocord",
       choices={"both": ("both", "symmetric", "symmetrized", "lpred lpred", "both directions", "bidirectional", "sum of both"),
                "forward": ("forward", "lpred only", "lpred", "one direction", "unidirectional", "asymmetric", "non symmetric",
                            "student predicts slow moving student", "original direction", "without symmetrization"),
                "reverse": ("reverse", "reversed", "swapped", "swapped only", "opposite direction", "tilde")}),
    _k("cocord.pred_weight", "distill.cocord.pred_weight", "float",
       ["prediction loss weight", "lambda pred", "pred weight", "weight of the prediction loss", "consistency loss weight",
        "consistency loss", "prediction loss", "lpred weight", "weight of the consistency loss", "mse loss weight",
        "prediction loss coefficient", "lpred"],
       "lambda_pred, weight of the prediction (consistency) loss (REMOVE: 0)",
       scope="cocord", off_value=0.0, requires="distill.methods~cocord"),
    _k("cocord.ctr_weight", "distill.cocord.ctr_weight", "float",
       ["contrastive loss weight", "lambda ctr", "ctr weight", "weight of the contrastive loss", "infonce weight",
        "infonce loss weight", "contrastive loss", "lctr", "infonce loss", "contrastive term", "weight of infonce"],
       "lambda_ctr, weight of CoCoRD's InfoNCE term (REMOVE: 0)",
       scope="cocord", off_value=0.0, requires="distill.methods~cocord"),
    _k("cocord.tau", "distill.cocord.tau", "float",
       ["temperature", "tau", "contrastive temperature", "temperature of infonce", "infonce temperature",
        "temperature of the contrastive loss", "softmax temperature", "temperature parameter"],
       "temperature tau of CoCoRD's InfoNCE", scope="cocord", requires="distill.methods~cocord"),
    _k("cocord.proj_dim", "distill.cocord.proj_dim", "int",
       ["projection dimension", "projector output dimension", "embedding dimension", "projection head output dimension",
        "feature dimension of the projector", "projection size"],
       "output size of CoCoRD's projectors", scope="cocord", requires="distill.methods~cocord"),
    _k("cocord.proj_hidden", "distill.cocord.proj_hidden", "int",
       ["projector hidden dimension", "projection head width", "hidden width of the projector", "projector width"],
       "hidden width of CoCoRD's projectors", scope="cocord", requires="distill.methods~cocord"),
    _k("cocord.pred_hidden", "distill.cocord.pred_hidden", "int",
       ["predictor hidden dimension", "predictor width", "prediction head width", "hidden width of the predictor"],
       "hidden width of CoCoRD's predictor", scope="cocord", requires="distill.methods~cocord"),
    # ---------------------------------------------------------------- student distillation (any method)
    _k("distill.methods", "distill.methods", "methods",
       ["distillation method", "distillation methods", "distillation loss", "distillation losses", "kd method",
        "knowledge distillation method", "distillation objective", "student objective", "distiller",
        "additional distillation loss", "complementary distillation method", "combination with another distillation method",
        "rkd", "relational knowledge distillation", "crd", "contrastive representation distillation", "dkd",
        "decoupled knowledge distillation", "fitnet", "hint learning", "attention transfer", "similarity preserving",
        "pkt", "probabilistic knowledge transfer", "rkd loss", "crd loss", "dkd loss", "fitnet loss", "knowledge distillation",
        "cocord"],
       "distillation loss terms of the student beside CE; ADD appends one (Ours+RKD), REMOVE takes one away ([] = CE only)",
       off_value=[]),
    _k("kd.T", "distill.kd.T", "float",
       ["kd temperature", "distillation temperature", "temperature of knowledge distillation", "temperature for distillation",
        "soft label temperature", "temperature of the soft labels", "kd t", "logit temperature",
        "softening temperature", "temperature of the kl divergence", "student temperature"],
       "temperature T of the KD term T^2 * KL(softmax(z_t/T) || softmax(z_s/T))"),
    _k("kd.weight", "distill.kd.weight", "float",
       ["kd weight", "kd loss weight", "weight of the kd loss", "distillation loss weight", "weight of the distillation loss",
        "kl divergence weight", "soft label loss weight", "soft target weight", "alpha", "distillation weight",
        "weight of the soft labels", "kd coefficient"],
       "weight of the KD term (REMOVE: 0)", off_value=0.0),
    _k("ce_weight", "distill.ce_weight", "float",
       ["cross entropy weight", "ce weight", "classification loss weight", "lambda cls", "cls weight", "weight of the classification loss",
        "cross entropy loss weight", "hard label loss weight", "task loss weight", "task specific loss weight", "gamma",
        "ground truth loss weight", "supervised loss weight", "lcls", "classification loss", "task loss", "cross entropy loss",
        "hard label loss", "weight of the task loss"],
       "weight of the student's cross-entropy on labels (lambda_cls in CoCoRD; REMOVE: 0)", off_value=0.0),
    _k("rkd.weight", "distill.rkd.weight", "float", ["rkd weight", "rkd loss weight", "weight of rkd", "weight of the rkd loss"],
       "overall weight of RKD", off_value=0.0, requires="distill.methods~rkd"),
    _k("rkd.distance_weight", "distill.rkd.distance_weight", "float",
       ["rkd distance weight", "distance wise loss weight", "distance loss weight", "rkd distance loss", "distance term"],
       "weight of RKD's distance-wise term (25)", off_value=0.0, requires="distill.methods~rkd"),
    _k("rkd.angle_weight", "distill.rkd.angle_weight", "float",
       ["rkd angle weight", "angle wise loss weight", "angle loss weight", "rkd angle loss", "angle term"],
       "weight of RKD's angle-wise term (50)", off_value=0.0, requires="distill.methods~rkd"),
    _k("crd.weight", "distill.crd.weight", "float", ["crd weight", "crd loss weight", "weight of crd", "beta crd"],
       "weight of CRD", off_value=0.0, requires="distill.methods~crd"),
    _k("crd.nce_k", "distill.crd.nce_k", "int",
       ["crd negatives", "number of crd negatives", "nce k", "crd negative samples", "negatives drawn from the memory bank"],
       "CRD negatives per anchor", requires="distill.methods~crd"),
    _k("crd.nce_t", "distill.crd.nce_t", "float", ["crd temperature", "nce temperature", "nce t"],
       "CRD's NCE temperature", requires="distill.methods~crd"),
    _k("crd.nce_m", "distill.crd.nce_m", "float", ["crd momentum", "memory bank momentum", "nce momentum", "crd memory momentum"],
       "momentum of CRD's memory bank", requires="distill.methods~crd"),
    _k("crd.feat_dim", "distill.crd.feat_dim", "int", ["crd feature dimension", "crd embedding dimension", "crd feat dim"],
       "CRD embedding size", requires="distill.methods~crd"),
    _k("dkd.alpha", "distill.dkd.alpha", "float", ["dkd alpha", "tckd weight", "target class knowledge distillation weight"],
       "DKD weight of TCKD", requires="distill.methods~dkd"),
    _k("dkd.beta", "distill.dkd.beta", "float", ["dkd beta", "nckd weight", "non target class knowledge distillation weight"],
       "DKD weight of NCKD", requires="distill.methods~dkd"),
    _k("dkd.T", "distill.dkd.T", "float", ["dkd temperature"], "DKD temperature", requires="distill.methods~dkd"),
    _k("dkd.warmup", "distill.dkd.warmup", "int", ["dkd warmup", "dkd warm up epochs"], "epochs of DKD weight warm-up",
       requires="distill.methods~dkd"),
    _k("dkd.weight", "distill.dkd.weight", "float", ["dkd weight", "dkd loss weight"], "overall DKD weight", off_value=0.0,
       requires="distill.methods~dkd"),
    _k("fitnet.weight", "distill.fitnet.weight", "float", ["fitnet weight", "hint loss weight", "fitnet loss weight"],
       "weight of the FitNet hint loss", off_value=0.0, requires="distill.methods~fitnet"),
    _k("fitnet.hint_layer", "distill.fitnet.hint_layer", "int", ["hint layer", "fitnet hint layer", "guided layer", "hint stage"],
       "stage index of the FitNet hint", requires="distill.methods~fitnet"),
    _k("at.weight", "distill.at.weight", "float", ["at weight", "attention transfer weight", "attention loss weight"],
       "weight of attention transfer", off_value=0.0, requires="distill.methods~at"),
    _k("at.p", "distill.at.p", "float", ["attention exponent", "at p", "attention map power"], "exponent p of AT's attention maps",
       requires="distill.methods~at"),
    _k("sp.weight", "distill.sp.weight", "float", ["sp weight", "similarity preserving weight"], "weight of SP", off_value=0.0,
       requires="distill.methods~sp"),
    _k("pkt.weight", "distill.pkt.weight", "float", ["pkt weight", "probabilistic knowledge transfer weight"], "weight of PKT",
       off_value=0.0, requires="distill.methods~pkt"),
    # ---------------------------------------------------------------- architectures
    _k("student.arch", "student.arch", "arch",
       ["student architecture", "student model", "student network", "student backbone", "student", "architecture of the student",
        "student capacity", "student size"],
       "student network, a name from kdlab.models.list_models()"),
    _k("teacher.arch", "teacher.arch", "arch",
       ["teacher architecture", "teacher model", "teacher network", "teacher backbone", "teacher", "architecture of the teacher",
        "teacher capacity", "teacher size"],
       "teacher network, a name from kdlab.models.list_models()"),
    _k("arch.pair", "teacher.arch", "pair",
       ["teacher student pair", "teacher student combination", "architecture pair", "teacher student architecture",
        "network pair", "model pair", "cross architecture pair", "teacher and student architectures", "student teacher pair",
        "backbone pair", "heterogeneous architectures"],
       "teacher and student together: 'resnet32x4 -> resnet8x4' (teacher first)", also=("student.arch",)),
    # ---------------------------------------------------------------- schedule, data, regularisation
    _k("epochs", "teacher.epochs", "int", ["epochs", "number of epochs", "training epochs", "training length", "training duration", "schedule length"],
       "epochs of both stages", also=("student.epochs",)),
    _k("teacher.epochs", "teacher.epochs", "int", ["teacher epochs", "teacher training epochs", "number of teacher epochs", "teacher training length"],
       "epochs of the teacher stage"),
    _k("student.epochs", "student.epochs", "int", ["student epochs", "student training epochs", "number of student epochs", "distillation epochs"],
       "epochs of the student stage"),
    _k("lr", "teacher.optim.lr", "float", ["learning rate", "lr", "initial learning rate", "base learning rate", "step size"],
       "initial learning rate of both stages", also=("student.optim.lr",)),
    _k("teacher.lr", "teacher.optim.lr", "float", ["teacher learning rate", "teacher lr"], "learning rate of the teacher stage"),
    _k("student.lr", "student.optim.lr", "float", ["student learning rate", "student lr", "distillation learning rate"],
       "learning rate of the student stage"),
    _k("batch_size", "data.batch_size", "int", ["batch size", "mini batch size", "minibatch size", "batch", "training batch size"],
       "training batch size of both stages"),
    _k("weight_decay", "teacher.optim.weight_decay", "float", ["weight decay", "l2 regularization", "wd", "l2 penalty"],
       "weight decay of both stages", also=("student.optim.weight_decay",), off_value=0.0),
    _k("sgd_momentum", "teacher.optim.momentum", "float", ["momentum", "sgd momentum", "optimizer momentum", "momentum of sgd", "heavy ball momentum"],
       "SGD momentum of both stages", also=("student.optim.momentum",), off_value=0.0),
    _k("schedule", "teacher.optim.schedule", "choice",
       ["learning rate schedule", "lr schedule", "learning rate decay", "scheduler", "lr scheduler", "annealing schedule"],
       "learning-rate schedule of both stages", also=("student.optim.schedule",),
       choices={"step": ("step", "step decay", "multistep", "multi step", "piecewise"),
                "cosine": ("cosine", "cosine annealing", "cosine decay"),
                "constant": ("constant", "fixed", "no decay", "none")}, off_value="constant"),
    _k("warmup", "teacher.optim.warmup_epochs", "int", ["warmup", "warm up", "warmup epochs", "learning rate warmup", "lr warmup"],
       "linear learning-rate warm-up epochs of both stages", also=("student.optim.warmup_epochs",), off_value=0),
    _k("label_smoothing", "objective.label_smoothing", "float", ["label smoothing", "label smoothing factor", "smoothing epsilon", "label smoothing regularization"],
       "label smoothing of the teacher's CE (REMOVE: 0)", off_value=0.0, on_value=0.1),
    _k("amp", "runtime.amp", "choice", ["mixed precision", "amp", "automatic mixed precision", "bf16", "autocast", "half precision"],
       "mixed-precision training (bf16 autocast on GPU)", off_value="off", on_value="bf16",
       choices={"auto": ("auto", "default"), "bf16": ("bf16", "bfloat16", "mixed precision", "half precision", "on"),
                "off": ("off", "fp32", "full precision", "float32", "none")}),
    _k("augment", "data.augment", "augment",
       ["training augmentation", "train augmentation", "standard augmentation", "classification augmentation",
        "augmentation of the training images", "base augmentation", "input augmentation", "train time augmentation"],
       "augmentation of the main training view of both stages"),
    _k("optimizer", "teacher.optim.optimizer", "choice",
       ["optimizer", "optimiser", "optimization algorithm", "optimizer choice", "training optimizer", "update rule"],
       "optimizer of both stages (adam/adamw variants also take lr 1e-3 unless the plan sets the learning rate)",
       also=("student.optim.optimizer",), choices={"sgd": ("sgd", "sgd with momentum", "stochastic gradient descent", "momentum sgd"),
                "adam": ("adam",), "adamw": ("adamw", "adam w", "adam with decoupled weight decay")}),
    _k("teacher.optimizer", "teacher.optim.optimizer", "choice", ["teacher optimizer", "optimizer of the teacher"],
       "optimizer of the teacher stage", choices={"sgd": ("sgd", "sgd with momentum", "stochastic gradient descent", "momentum sgd"),
                "adam": ("adam",), "adamw": ("adamw", "adam w", "adam with decoupled weight decay")}),
    _k("student.optimizer", "student.optim.optimizer", "choice", ["student optimizer", "optimizer of the student",
       "distillation optimizer"], "optimizer of the student stage", choices={"sgd": ("sgd", "sgd with momentum", "stochastic gradient descent", "momentum sgd"),
                "adam": ("adam",), "adamw": ("adamw", "adam w", "adam with decoupled weight decay")}),
    _k("nesterov", "teacher.optim.nesterov", "bool",
       ["nesterov", "nesterov momentum", "nesterov accelerated gradient", "nesterov sgd", "sgd with nesterov momentum"],
       "Nesterov momentum of SGD in both stages", also=("student.optim.nesterov",), off_value=False, on_value=True),
    _k("dataset", "data.name", "choice",
       ["dataset", "data set", "training dataset", "benchmark", "benchmark dataset", "evaluation dataset",
        "dataset used for training and evaluation"],
       "data set of both stages (CIFAR/Tiny-ImageNet need their files: data.root, or data.download=true)",
       choices={"digits": ("digits", "sklearn digits", "handwritten digits", "8x8 digits"),
                "cifar10": ("cifar10", "cifar 10"), "cifar100": ("cifar100", "cifar 100"),
                "tiny-imagenet": ("tiny imagenet", "tinyimagenet", "tiny imagenet 200"),
                "imagefolder": ("imagefolder", "image folder", "imagenet", "custom folder")}),
    _k("views", "objective.views", "int", ["number of views", "views per image", "number of augmented views", "view count", "crops per image"],
       "augmented views per image in the teacher stage"),
    _k("subset", "data.subset", "int", ["training set size", "number of training samples", "training data size", "data fraction",
                                       "amount of training data", "subset size", "dataset size", "fraction of training data"],
       "stratified training subset size (a percentage is taken of the base subset)"),
)

_BY_NAME = {k.name: k for k in KNOBS}
assert len(_BY_NAME) == len(KNOBS), "duplicate knob names"


def knob_by_name(name: str) -> Knob | None:
    return _BY_NAME.get(name)


def knobs_for_path(path: str) -> list[Knob]:
    return [k for k in KNOBS if k.path == path]


# -------------------------------------------------------------------------------- config introspection
@dataclass(frozen=True)
class FieldInfo:
    path: str
    annotation: Any
    kind: str  # float | int | bool | choice | augment | methods | arch | str | list
    choices: tuple = ()
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False
    default: Any = None

    def in_range(self, v: float) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return False
        return True

    def range_text(self) -> str:
        if self.lo is None and self.hi is None:
            return ""
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{'(' if self.lo_open or self.lo is None else '['}{lo}, {hi}{')' if self.hi_open or self.hi is None else ']'}"


def field_info(path: str) -> FieldInfo:
    """Type, range and choices of a config path, read from the pydantic model (KeyError if unknown)."""
    model: Any = ExperimentConfig
    finfo = None
    for part in path.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            raise KeyError(path)
        finfo = model.model_fields[part]
        model = finfo.annotation
    assert finfo is not None
    ann = finfo.annotation
    optional = False
    if get_origin(ann) in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = [a for a in get_args(ann) if a is not type(None)]
        optional = len(args) < len(get_args(ann))
        ann = args[0] if len(args) == 1 else ann
    lo = hi = None
    lo_open = hi_open = False
    for m in finfo.metadata:
        if getattr(m, "ge", None) is not None:
            lo = float(m.ge)
        if getattr(m, "gt", None) is not None:
            lo, lo_open = float(m.gt), True
        if getattr(m, "le", None) is not None:
            hi = float(m.le)
        if getattr(m, "lt", None) is not None:
            hi, hi_open = float(m.lt), True
    choices: tuple = ()
    if get_origin(ann) is Literal:
        kind, choices = "choice", get_args(ann)
    elif get_origin(ann) is list:
        inner = get_args(ann)[0] if get_args(ann) else str
        if get_origin(inner) is Literal:
            choices = get_args(inner)
            kind = "augment" if "cutout" in choices else ("methods" if "rkd" in choices else "list")
        else:
            kind = "list"
    elif ann is bool:
        kind = "bool"
    elif ann is int:
        kind = "int"
    elif ann is float:
        kind = "float"
    elif path.endswith(".arch"):
        kind = "arch"
    else:
        kind = "str"
    return FieldInfo(path, ann, kind, tuple(choices), lo, hi, lo_open, hi_open, optional, finfo.default)


def generic_knob(path: str) -> Knob:
    """A knob for any config path (what ``--map NAME=some.config.path`` uses when no knob is registered)."""
    info = field_info(path)
    kind = info.kind if info.kind not in ("str", "list") else "str"
    choices = {c: (str(c),) for c in info.choices} if kind == "choice" else {}
    off = NOTHING
    if kind == "bool":
        off = False
    return Knob(name=path, path=path, kind=kind, aliases=(path.split(".")[-1].replace("_", " "),),
                description=f"config key {path}", off_value=off, choices=choices)


# ------------------------------------------------------------------------------------------- docs
def render_knob_table() -> str:
    """The Markdown knob table of docs/ABLATION.md (kept in sync by a test)."""
    rows = [
        "| knob | config path | type | scope | REMOVE | ADD | a plan may say |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in KNOBS:
        info = field_info(k.path)
        typ = k.kind
        if k.kind == "choice":
            typ = "choice: " + " / ".join(k.choices or {c: () for c in info.choices})
        elif k.kind in ("float", "int") and info.range_text():
            typ = f"{k.kind} {info.range_text()}"
        path = " + ".join(f"`{p}`" for p in k.paths)
        if k.kind == "methods":
            rm, add = "drop the named method ([] if none named)", "append the named method"
        elif k.kind == "augment":
            rm, add = "drop the named op ([] if none named)", "append the named op"
        else:
            rm = _fmt_effect(k.off_value, k.off_path or k.path, k.path) if k.off_value is not NOTHING else "-"
            if k.on_value is not NOTHING:
                add = _fmt_effect(k.on_value, k.on_path or k.path, k.path)
            else:
                add = "-" if k.kind != "bool" else "True"
        said = ", ".join(k.aliases[:6]).replace("|", "/")
        rows.append(f"| `{k.name}` | {path} | {typ} | {k.scope} | {rm} | {add} | {said} |")
    return "\n".join(rows) + "\n"


def _fmt_effect(value: Any, path: str, own: str) -> str:
    v = "[]" if value == [] else repr(value) if isinstance(value, str) else str(value)
    return v if path == own else f"`{path}`={v}"
