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

import re
from dataclasses import dataclass, replace
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from kdlab import registry
from kdlab.ablation.text import ascii_text
from kdlab.config import AugmentName
from kdlab.experiment.schema import ExperimentConfig
from kdlab.registry import NOTHING, Knob, Scope, turns_off_batch_norm

__all__ = [
    "Knob",
    "KNOBS",
    "NOTHING",
    "METHOD_NAMES",
    "AUGMENT_NAMES",
    "knob_by_name",
    "knobs_for_path",
    "weighted_method",
    "field_info",
    "FieldInfo",
    "render_knob_table",
    "Scope",
]

# ------------------------------------------------------------------------------------ named values
#: distillation method -> phrases (for the ``methods`` knob and method detection in part text), from the plugins
METHOD_NAMES: dict[str, tuple[str, ...]] = {s.name: s.phrases for s in registry.distillers()}

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


ADAM_LR = 1e-3
_SCHEDULES = {"step": ("step", "step decay", "multistep", "multi step", "piecewise"),
              "cosine": ("cosine", "cosine annealing", "cosine decay"),
              "constant": ("constant", "fixed", "no decay", "none")}


def _per_stage(name: str, field: str, kind: str, words: tuple[str, ...], what: str, **kw) -> tuple[Knob, ...]:
    """``teacher.<name>`` and ``student.<name>``: an optimiser setting of one stage, named as plans name it
    ("teacher weight decay", "weight decay of the student", "distillation weight decay")."""
    return tuple(
        _k(f"{stage}.{name}", f"{stage}.optim.{field}", kind,
           [f"{stage} {w}" for w in words] + [f"{w} of the {stage}" for w in words]
           + ([f"distillation {w}" for w in words] if stage == "student" else []),
           f"{what} of the {stage} stage", **kw)
        for stage in ("teacher", "student"))


def _adam_takes_its_lr(overrides: dict, base) -> dict:
    """Adam at SGD's learning rate (0.05) is not the comparison anyone means: take Adam's usual 1e-3 unless
    the plan sets the learning rate itself (and drop Nesterov, which is SGD's)."""
    out = {}
    for stage in ("teacher", "student"):
        opt = overrides.get(f"{stage}.optim.optimizer")
        if opt in ("adam", "adamw") and getattr(base, stage).optim.optimizer == "sgd":
            out[f"{stage}.optim.lr"] = ADAM_LR
            if getattr(base, stage).optim.nesterov:
                out[f"{stage}.optim.nesterov"] = False
    return out


def _parse_head_kind(text: str, generic) -> str:
    """The head's kind; a value that also switches its batch norm off ("2-layer MLP without BN") is refused:
    that is ``head.bn``'s ablation, and reading the kind alone would train the base's head under that name."""
    if turns_off_batch_norm(text):
        raise ValueError(f"{text!r} also switches batch norm off: ablate it with head.bn "
                         "(objective.head.bn) as its own ablation")
    return generic(text)


def _head_requirement() -> str:
    """The projection head ``objective.head`` exists only for the objectives that build it (not the CE teacher)."""
    return "objective.kind=" + "|".join(s.name for s in registry.objectives() if s.builds_head)


_HEAD = _head_requirement()

_COMMON: tuple[Knob, ...] = (
    # ---------------------------------------------------------------- teacher objective (with a head)
    _k("head.kind", "objective.head.kind", "choice",
       ["projection head", "projection head architecture", "projection head depth", "projector", "projector architecture",
        "embedding head", "head architecture", "projection mlp", "number of projection layers", "head depth",
        "projection network", "projection head type"],
       "projection head P of the teacher embedding e = normalize(P(h)): none, linear, mlp2 (default), mlp3",
       scope="intra", off_value="none", requires=_HEAD, parse=_parse_head_kind,
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
       "embedding size of the projection head output", scope="intra", requires=_HEAD),
    _k("head.hidden", "objective.head.hidden", "int",
       ["projection head width", "hidden width", "hidden dimension", "hidden units", "hidden layer size",
        "width of the projection head", "projector hidden dimension", "head width"],
       "hidden width of the projection head (None: backbone feature size)", scope="intra", requires=_HEAD),
    _k("head.bn", "objective.head.bn", "bool",
       ["batch normalization in the projection head", "projection head batch norm", "bn in the head", "head batchnorm",
        "batch norm in projector", "projection head normalization"],
       "BatchNorm between the projection head's layers", scope="intra", off_value=False, on_value=True,
       requires=_HEAD),
    _k("view_augment", "data.view_augment", "augment",
       ["augmentation policy", "view augmentation", "augmentation of the views", "augmentation for the contrastive views",
        "contrastive augmentation", "augmentations for positive pairs", "positive pair augmentation", "view generation",
        "augmentation strategy", "data augmentation for contrastive learning", "augmentation pipeline", "augmentations",
        "augmentation", "data augmentation", "view transformations", "augmentation for creating positive pairs",
        "data augmentation for positive pairs", "random augmentation for positive pairs",
        "augmented views", "augmentations of the views"],
       "augmentations producing the extra contrastive views (crop, flip, rrc, color_jitter, grayscale, blur, cutout)",
       scope="common"),  # the CoCoRD student's extra views too
    # ---------------------------------------------------------------- student distillation (any method)
    _k("ce_weight", "distill.ce_weight", "float",
       ["cross entropy weight", "ce weight", "classification loss weight", "lambda cls", "cls weight", "weight of the classification loss",
        "cross entropy loss weight", "hard label loss weight", "task loss weight", "task specific loss weight", "gamma",
        "ground truth loss weight", "supervised loss weight", "lcls", "classification loss", "task loss", "cross entropy loss",
        "hard label loss", "weight of the task loss"],
       "weight of the student's cross-entropy on labels (lambda_cls in CoCoRD; REMOVE: 0)", off_value=0.0),
    # ---------------------------------------------------------------- architectures
    _k("student.arch", "student.arch", "arch",
       ["student architecture", "student model", "student network", "student backbone", "student", "architecture of the student",
        "student capacity", "student size", "student depth", "depth of the student", "number of layers of the student",
        "student layers"],
       "student network, a name from kdlab.models.list_models(), or a depth of the base's family (20: resnet20)"),
    _k("teacher.arch", "teacher.arch", "arch",
       ["teacher architecture", "teacher model", "teacher network", "teacher backbone", "teacher", "architecture of the teacher",
        "teacher capacity", "teacher size", "teacher depth", "depth of the teacher", "number of layers of the teacher",
        "teacher layers"],
       "teacher network, a name from kdlab.models.list_models(), or a depth of the base's family (20: resnet20)"),
    _k("arch.pair", "teacher.arch", "pair",
       ["teacher student pair", "teacher student combination", "architecture pair", "teacher student architecture",
        "network pair", "model pair", "cross architecture pair", "teacher and student architectures", "student teacher pair",
        "backbone pair", "heterogeneous architectures"],
       "teacher and student together: 'resnet32x4 -> resnet8x4' (teacher first)", also=("student.arch",)),
    # ---------------------------------------------------------------- schedule, data, regularisation
    _k("epochs", "teacher.epochs", "int", ["epochs", "number of epochs", "training epochs", "training length", "training duration", "schedule length",
                                         "teacher and student epochs", "number of teacher and student epochs"],
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
       choices=_SCHEDULES, off_value="constant"),
    _k("warmup", "teacher.optim.warmup_epochs", "int", ["warmup", "warm up", "warmup epochs", "learning rate warmup", "lr warmup"],
       "linear learning-rate warm-up epochs of both stages", also=("student.optim.warmup_epochs",), off_value=0),
    # one stage's optimiser settings ("weight decay of the teacher"): the knobs above set both stages
    *_per_stage("weight_decay", "weight_decay", "float", ("weight decay", "wd", "l2 regularization"), "weight decay",
                off_value=0.0),
    *_per_stage("momentum", "momentum", "float", ("momentum", "sgd momentum"), "SGD momentum", off_value=0.0),
    *_per_stage("schedule", "schedule", "choice", ("learning rate schedule", "lr schedule", "scheduler"),
                "learning-rate schedule", choices=_SCHEDULES, off_value="constant"),
    *_per_stage("warmup", "warmup_epochs", "int", ("warmup", "warm up", "warmup epochs", "lr warmup"),
                "linear learning-rate warm-up epochs", off_value=0),
    _k("label_smoothing", "objective.label_smoothing", "float", ["label smoothing", "label smoothing factor", "smoothing epsilon", "label smoothing regularization"],
       "label smoothing of the teacher's CE (REMOVE: 0)", off_value=0.0, on_value=0.1),
    _k("amp", "runtime.amp", "choice", ["mixed precision", "amp", "automatic mixed precision", "bf16", "autocast", "half precision"],
       "mixed-precision training (bf16 autocast on GPU)", off_value="off", on_value="bf16",
       choices={"auto": ("auto", "default"), "bf16": ("bf16", "bfloat16", "mixed precision", "half precision", "on"),
                "off": ("off", "fp32", "full precision", "float32", "none")}),
    _k("augmentation", "data.augment", "augment",
       ["augmentation of every view", "augmentation of all views", "all augmentation", "every augmentation",
        "augmentation of both stages", "augmentation of teacher and student"],
       "augmentation of every training view of both stages: the main view and the contrastive views",
       also=("data.view_augment",)),
    _k("augment", "data.augment", "augment",
       ["training augmentation", "train augmentation", "standard augmentation", "classification augmentation",
        "augmentation of the training images", "base augmentation", "input augmentation", "train time augmentation"],
       "augmentation of the main training view of both stages"),
    _k("optimizer", "teacher.optim.optimizer", "choice",
       ["optimizer", "optimiser", "optimization algorithm", "optimizer choice", "training optimizer", "update rule"],
       "optimizer of both stages (adam/adamw variants also take lr 1e-3 unless the plan sets the learning rate)",
       also=("student.optim.optimizer",), choices={"sgd": ("sgd", "sgd with momentum", "stochastic gradient descent", "momentum sgd"),
                "adam": ("adam",), "adamw": ("adamw", "adam w", "adam with decoupled weight decay")}, companions=_adam_takes_its_lr),
    _k("teacher.optimizer", "teacher.optim.optimizer", "choice", ["teacher optimizer", "optimizer of the teacher"],
       "optimizer of the teacher stage", choices={"sgd": ("sgd", "sgd with momentum", "stochastic gradient descent", "momentum sgd"),
                "adam": ("adam",), "adamw": ("adamw", "adam w", "adam with decoupled weight decay")}, companions=_adam_takes_its_lr),
    _k("student.optimizer", "student.optim.optimizer", "choice", ["student optimizer", "optimizer of the student",
       "distillation optimizer"], "optimizer of the student stage", choices={"sgd": ("sgd", "sgd with momentum", "stochastic gradient descent", "momentum sgd"),
                "adam": ("adam",), "adamw": ("adamw", "adam w", "adam with decoupled weight decay")}, companions=_adam_takes_its_lr),
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
    _k("views", "objective.views", "int", ["number of views", "views per image", "number of augmented views", "view count", "crops per image",
                                          "second view", "second augmented view", "two views", "two view augmentation",
                                          "multi view", "multiple views", "extra view", "second augmentation"],
       "augmented views per image in the teacher stage (REMOVE: one view, the positive then comes from memory)",
       off_value=1),
    _k("subset", "data.subset", "int", ["training set size", "number of training samples", "training data size", "data fraction",
                                       "amount of training data", "subset size", "dataset size", "fraction of training data",
                                       "images per class", "training images per class", "samples per class",
                                       "training samples per class", "examples per class", "number of training images"],
       "stratified training subset size (a percentage is taken of the base subset; k per class is k x classes)"),
)


def _objective_kind_knob() -> Knob:
    specs = registry.objectives()
    return _k("objective.kind", "objective.kind", "choice",
              ["contrastive learning method", "contrastive method", "contrastive objective", "contrastive loss",
               "type of contrastive loss", "contrastive loss type", "form of contrastive learning", "teacher objective",
               "teacher training objective", "teacher loss", "intra class contrastive loss", "intra class contrastive learning",
               "intra class loss", "l_intra", "auxiliary loss", "auxiliary contrastive loss", "contrastive term",
               "contrastive regularizer", "intra class contrastive objective", "contrastive learning"],
              "teacher objective L_CE + lambda * L_kind: " + ", ".join(s.name for s in specs if s.config is not None)
              + ", ce (none; REMOVE)",
              scope="intra", off_value="ce", choices={s.name: s.phrases for s in specs},
              parse=parse_objective_kind, companions=_same_weight_and_temperature)


def parse_objective_kind(text: str, generic) -> str:
    """"CE + SupCon" means L_CE + lambda * L_supcon: drop the CE part, then read the objective's name."""
    t = ascii_text(text).strip()
    rest = re.sub(r"\b(l\s*_?\s*ce|ce|cross[\s-]*entropy)\s*(\+|and|with|plus)\s*", " ", t).strip()
    return generic(rest if rest and rest != t else text)


def _same_weight_and_temperature(overrides: dict, base) -> dict:
    """"Replace the intra-class loss by X": X takes the base objective's weight and temperature, so that only
    the loss changes."""
    kind = overrides.get("objective.kind")
    old, new = base.objective.block(), getattr(base.objective, kind, None) if kind else None
    if old is None or new is None or kind == base.objective.kind:
        return {}
    return {f"objective.{kind}.{f}": getattr(old, f) for f in ("lambda_", "tau")
            if f in type(old).model_fields and f in type(new).model_fields}


def _methods_knob() -> Knob:
    named = [p for s in registry.distillers() for p in s.list_aliases]
    return _k("distill.methods", "distill.methods", "methods",
              ["distillation method", "distillation methods", "distillation loss", "distillation losses", "kd method",
               "knowledge distillation method", "distillation objective", "student objective", "distiller",
               "additional distillation loss", "complementary distillation method", "teacher guidance",
              "guidance from the teacher", "teacher supervision", "knowledge transfer from the teacher",
               "combination with another distillation method", *named],
              "distillation loss terms of the student beside CE; ADD appends one (Ours+RKD), REMOVE takes one away "
              "([] = CE only)", off_value=[])


def _acting_with(spec: registry.MethodSpec, k: Knob) -> Knob:
    """A method's knob inside its own config block acts only on runs that use the method (``kd.T`` does nothing
    to a CoCoRD-only student): its ``requires`` starts with the method's requirement, whatever the plugin says."""
    if not k.path.startswith(spec.section + ".") or spec.requirement in (k.requires or ""):
        return k
    return replace(k, requires=f"{spec.requirement} & {k.requires}" if k.requires else spec.requirement)


def _assemble() -> tuple[Knob, ...]:
    """Every knob: the teacher objectives' own, the common teacher knobs, the distillers' own, the common
    student knobs, then schedule, data and architecture knobs."""
    by_section = {"objective": [], "teacher": [], "distill": [], "student": [], "rest": []}
    for k in _COMMON:
        head = k.path.split(".")[0]
        by_section["teacher" if head in ("objective",) or k.name == "view_augment" else
                   "student" if head == "distill" else "rest"].append(k)
    objective_knobs = [_acting_with(s, k) for s in registry.objectives() for k in s.knobs]
    distiller_knobs = [_acting_with(s, k) for s in registry.distillers() for k in s.knobs]
    return tuple(objective_knobs + [_objective_kind_knob()] + by_section["teacher"] + distiller_knobs
                 + [_methods_knob()] + by_section["student"] + by_section["rest"])


KNOBS: tuple[Knob, ...] = _assemble()

_BY_NAME = {k.name: k for k in KNOBS}
assert len(_BY_NAME) == len(KNOBS), "duplicate knob names"


def weighted_method(knob: Knob) -> str | None:
    """The distiller whose overall weight the knob is (``kd`` for ``distill.kd.weight``), else None. REMOVE on
    such a knob takes the method out of ``distill.methods``: the student's CE weight is then the one without it."""
    m = re.fullmatch(r"distill\.(\w+)\.weight", knob.path)
    return m[1] if m and m[1] in METHOD_NAMES else None


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
            kind = "augment" if set(choices) == set(get_args(AugmentName)) else (
                "methods" if path == "distill.methods" else "list")
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
        elif weighted_method(k):
            rm, add = f"drop {weighted_method(k)} from `distill.methods`", "-"
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
