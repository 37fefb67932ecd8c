"""Typed experiment configuration: defaults, YAML files, dotted overrides, one-line errors.

One :class:`ExperimentConfig` describes a whole experiment: the data, the teacher (architecture,
objective, schedule), the student (architecture, distillation methods, schedule) and the runtime.
``kdlab train-teacher`` uses the teacher part, ``kdlab distill`` the student part, ``kdlab pipeline``
both. Every field below is a knob an ablation plan can address by its dotted path, e.g.
``objective.intra.delta`` or ``distill.cocord.m_c``.

Errors are :class:`ConfigError` with one line that names the key, what is wrong and the fix.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, with a one-line message that says how to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


AugmentName = Literal["crop", "flip", "rrc", "color_jitter", "grayscale", "blur", "cutout"]
DatasetName = Literal["digits", "cifar10", "cifar100", "tiny-imagenet", "imagefolder"]


# --------------------------------------------------------------------------------------------- data
class DataConfig(_Strict):
    name: DatasetName = "digits"
    root: str | None = Field(None, description="dataset folder or archive; not needed for digits")
    download: bool = False
    subset: int | None = Field(None, ge=1, description="stratified train subset size (CPU-scale studies)")
    test_subset: int | None = Field(None, ge=1)
    split_seed: int = Field(0, ge=0, lt=2**31)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    augment: list[AugmentName] | None = Field(None, description="train augmentation; None = dataset default")
    view_augment: list[AugmentName] | None = Field(
        None, description="augmentation of the extra contrastive views; None = same as augment"
    )
    crop_padding: int | None = Field(None, ge=0, description="None = dataset default (4; 1 for digits)")
    streaming: bool = Field(False, description="imagefolder: decode in worker processes each epoch (ImageNet size)")
    image_size: int = Field(224, ge=8, description="streaming: decoded image side (shorter side resized, centre "
                            "crop; a train view with rrc crops the full-resolution image in the workers instead)")
    workers: int | None = Field(None, ge=0, description="streaming: decode processes (None = cores - 1)")

    @model_validator(mode="after")
    def _streaming_needs_folder(self) -> "DataConfig":
        if self.streaming and (self.name != "imagefolder" or not self.root):
            raise ValueError("data.streaming=true needs data.name=imagefolder and data.root=FOLDER")
        return self


# ---------------------------------------------------------------------------------------- teacher
class HeadConfig(_Strict):
    """Projection head P for contrastive objectives: e = normalize(P(h))."""

    kind: Literal["none", "linear", "mlp2", "mlp3"] = "mlp2"
    dim: int = Field(128, ge=1, description="embedding size (ignored for kind=none)")
    hidden: int | None = Field(None, ge=1, description="hidden width; None = the backbone feature size")
    bn: bool = True


class CacheConfig(_Strict):
    """Per-class FIFO cache of detached negatives (the paper's 'pipeline')."""

    enabled: bool = True
    size: int = Field(128, ge=1, description="Q, entries per class")
    mode: Literal["fifo", "flush"] = "fifo"


class IntraConfig(_Strict):
    lambda_: float = Field(0.02, ge=0, description="weight of L_Intra")
    delta: float = Field(0.5, ge=-1, le=1, description="margin threshold on rho = p_y - max_k!=y p_k")
    margin: bool = Field(True, description="False: every sample is an anchor")
    tau: float = Field(0.1, gt=0, description="temperature")
    positive: Literal["view", "memory"] = "view"
    cache: CacheConfig = CacheConfig()


class ContrastConfig(_Strict):
    lambda_: float = Field(0.02, ge=0)
    tau: float = Field(0.1, gt=0)


class ObjectiveConfig(_Strict):
    """Teacher objective: L_CE + lambda * L_kind (kind=ce: cross-entropy alone)."""

    kind: Literal["ce", "intra", "supcon", "simclr"] = "ce"
    views: int | None = Field(
        None, ge=1, le=4, description="views per image; None = 1 for ce, 2 for contrastive kinds"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    intra: IntraConfig = IntraConfig()
    supcon: ContrastConfig = ContrastConfig()
    simclr: ContrastConfig = ContrastConfig()
    head: HeadConfig = HeadConfig()


# ---------------------------------------------------------------------------------------- student
class KDConfig(_Strict):
    weight: float | None = Field(None, ge=0, description="None = 0.9 when KD is the only method, else 1")
    T: float = Field(4.0, gt=0)


class RKDConfig(_Strict):
    weight: float = Field(1.0, ge=0)
    distance_weight: float = Field(25.0, ge=0)
    angle_weight: float = Field(50.0, ge=0)


class FitNetConfig(_Strict):
    weight: float = Field(100.0, ge=0)
    hint_layer: int = Field(2, description="stage index into ModelOutput.stages (negative from the end)")


class ATConfig(_Strict):
    weight: float = Field(1000.0, ge=0)
    p: float = Field(2.0, gt=0)


class SPConfig(_Strict):
    weight: float = Field(3000.0, ge=0)


class PKTConfig(_Strict):
    weight: float = Field(30000.0, ge=0)


class DKDConfig(_Strict):
    weight: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    T: float = Field(4.0, gt=0)
    warmup: int = Field(20, ge=0, description="epochs of linear warm-up of the DKD weight")


class CRDConfig(_Strict):
    weight: float = Field(0.8, ge=0)
    feat_dim: int = Field(128, ge=1)
    nce_k: int = Field(16384, ge=1, description="negatives drawn from the memory bank per anchor")
    nce_t: float = Field(0.07, gt=0)
    nce_m: float = Field(0.5, ge=0, le=1, description="memory bank momentum")


class CoCoRDConfig(_Strict):
    ctr_weight: float = Field(1.0, ge=0)
    pred_weight: float = Field(4.0, ge=0)
    queue_size: int = Field(2048, ge=1)
    tau: float = Field(0.1, gt=0)
    m_c: float = Field(0.999, ge=0, le=1, description="teacher projector EMA of the student projector")
    m_r: float = Field(0.9, ge=0, le=1, description="slow-moving student EMA")
    pred: Literal["both", "forward", "reverse"] = "both"
    memory: Literal["queue", "bank"] = "queue"
    proj_dim: int = Field(2048, ge=1)
    proj_hidden: int = Field(2048, ge=1)
    pred_hidden: int = Field(512, ge=1)


DistillMethod = Literal["kd", "rkd", "fitnet", "at", "sp", "pkt", "dkd", "crd", "cocord"]


class DistillConfig(_Strict):
    methods: list[DistillMethod] = Field(["kd"], description="loss terms beside CE, e.g. [kd, rkd]")
    ce_weight: float | None = Field(None, ge=0, description="None = 0.1 when KD is the only method, else 1")
    kd: KDConfig = KDConfig()
    rkd: RKDConfig = RKDConfig()
    fitnet: FitNetConfig = FitNetConfig()
    at: ATConfig = ATConfig()
    sp: SPConfig = SPConfig()
    pkt: PKTConfig = PKTConfig()
    dkd: DKDConfig = DKDConfig()
    crd: CRDConfig = CRDConfig()
    cocord: CoCoRDConfig = CoCoRDConfig()

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"methods are listed twice: {v}")
        return v

    def resolved_ce_weight(self) -> float:
        if self.ce_weight is not None:
            return self.ce_weight
        return 0.1 if self.methods == ["kd"] else 1.0

    def resolved_kd_weight(self) -> float:
        if self.kd.weight is not None:
            return self.kd.weight
        return 0.9 if self.methods == ["kd"] else 1.0


# ------------------------------------------------------------------------------------------ stages
class OptimConfig(_Strict):
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        "sgd", description="sgd (the field's CIFAR/ImageNet recipes), adam or adamw (betas 0.9/0.999; momentum "
        "and nesterov are SGD's); set lr to match (1e-3 is Adam's usual)")
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, description="L2 penalty for sgd/adam; decoupled decay for adamw")
    nesterov: bool = False
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[float] = Field(
        [0.625, 0.75, 0.875], description="step decay points as fractions of the epochs (150/180/210 of 240)"
    )
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _nesterov_is_sgd(self) -> "OptimConfig":
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError(f"nesterov applies to SGD only, got optimizer={self.optimizer}; set nesterov=false")
        return self


class StageConfig(_Strict):
    arch: str
    epochs: int = Field(240, ge=1)
    optim: OptimConfig = OptimConfig()
    checkpoint: str | None = Field(
        None, description="weights to start from; for the teacher, distill and pipeline use it as the trained "
                          "teacher (no teacher training), train-teacher fine-tunes from it")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from kdlab.models import list_models

        names = list_models()
        if v not in names:
            close = difflib.get_close_matches(v, names, n=3, cutoff=0.4)
            hint = f" did you mean {' or '.join(close)}?" if close else f" choose one of {', '.join(names)}"
            raise ValueError(f"unknown architecture {v!r};{hint}")
        return v


class RuntimeConfig(_Strict):
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False
    deterministic: bool = False
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    tensorboard: bool = Field(True, description="write TensorBoard event files when the package is installed")
    sync_bn: bool = Field(False, description="under torchrun on GPUs, BatchNorm statistics over the global batch "
                          "(SyncBatchNorm); a no-op in one process; refused on CPU ranks, which SyncBatchNorm "
                          "does not support")

    @field_validator("amp", "channels_last", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any, info) -> Any:
        """YAML (files and ``key=value`` overrides alike) reads on/off/yes/no as booleans: map them back."""
        if isinstance(v, bool):
            return "off" if not v else ("bf16" if info.field_name == "amp" else "on")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")


class ExperimentConfig(_Strict):
    name: str = "experiment"
    seed: int = Field(0, ge=0, lt=2**31, description="seeds every RNG (data order, augmentation, init)")
    out: str = "runs"
    data: DataConfig = DataConfig()
    teacher: StageConfig = StageConfig(arch="resnet14", epochs=240)
    student: StageConfig = StageConfig(arch="resnet8", epochs=240)
    objective: ObjectiveConfig = ObjectiveConfig()
    distill: DistillConfig = DistillConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        o = self.objective
        memory_positive = o.kind == "intra" and o.intra.positive == "memory"
        if o.kind != "ce" and not memory_positive and self.teacher_views() < 2:
            raise ValueError(
                f"objective.kind={o.kind} takes its positive from a second view: set objective.views=2"
                + (" or objective.intra.positive=memory" if o.kind == "intra" else "")
            )
        return self

    def teacher_views(self) -> int:
        o = self.objective
        if o.views is not None:
            return o.views
        if o.kind == "ce" or (o.kind == "intra" and o.intra.positive == "memory"):
            return 1
        return 2


# ---------------------------------------------------------------------------------- load / override
# Keys added after runs were recorded, with their default: run identities (stage folders, ablation run keys)
# leave them out while they hold that default, so the folders and records of earlier runs are still found.
ADDED_LATER: dict[str, Any] = {
    "runtime.sync_bn": False,
    "teacher.optim.optimizer": "sgd",
    "student.optim.optimizer": "sgd",
}


def identity_tree(tree: dict, runtime_ignore: Iterable[str] = ()) -> dict:
    """A copy of a config tree (``model_dump(mode="json")``) as run identities see it: without the
    ``runtime_ignore`` keys of the runtime section and without the ADDED_LATER keys at their default."""
    tree = copy.deepcopy(tree)
    for dotted, default in ADDED_LATER.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == default:
            del node[leaf]
    if isinstance(tree.get("runtime"), dict):
        tree["runtime"] = {k: v for k, v in tree["runtime"].items() if k not in runtime_ignore}
    return tree


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys here: {', '.join(options)}"


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    model: Any = ExperimentConfig
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or not isinstance(part, str):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _format_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = tuple(e.get("loc", ()))
    key = ".".join(str(p) for p in loc)
    if e["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        options = list(parent.model_fields) if parent else []
        return f"unknown config key {key!r}{_suggest(str(loc[-1]), options)}"
    if e["type"] == "literal_error":
        return f"{key}: {e['msg'].lower()}, got {e.get('input')!r}"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    shown = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
    where = f"{key}: " if key else ""
    return f"{where}{msg[0].lower() + msg[1:]}{shown}"


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(tree: dict, dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted='a.b.c'``; unknown keys are caught on validation."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"malformed override key {dotted!r}: expected dotted names like objective.intra.delta")
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. objective.intra.lambda_=0.03")
        key, text = item.split("=", 1)
        key, text = key.strip(), text.strip()
        keep_text = _is_text_field(key) and text.lower() not in ("null", "none", "~")
        out.append((key, text if keep_text else _parse_value(text)))
    return out


def _is_text_field(dotted: str) -> bool:
    """True for string fields (name, data.root, ...): their override text is kept as typed, not read as YAML."""
    *parents, leaf = dotted.split(".")
    model = _model_at(tuple(parents)) if parents else ExperimentConfig
    field = model.model_fields.get(leaf) if model else None
    return field is not None and field.annotation in (str, str | None)


def build_config(
    base: dict | ExperimentConfig | None = None,
    overrides: list[tuple[str, Any]] | list[str] | None = None,
) -> ExperimentConfig:
    """Validate ``base`` (a dict from YAML, or a config) with ``overrides`` applied on top."""
    if isinstance(base, ExperimentConfig):
        tree = base.model_dump()
    else:  # a partial tree (YAML) lands on the full defaults, section by section
        tree = _merge(ExperimentConfig().model_dump(), copy.deepcopy(base) if base else {})
    if overrides:
        pairs = parse_overrides(overrides) if isinstance(overrides[0], str) else overrides
        for key, value in pairs:  # type: ignore[misc]
            apply_override(tree, key, value)
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def _merge(defaults: dict, given: dict) -> dict:
    """``given`` over ``defaults``, recursing into sections; unknown keys are kept for validation to report."""
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            _merge(defaults[key], value)
        else:
            defaults[key] = value
    return defaults


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found (pass a YAML file, or `kdlab configs` to list shipped ones)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def shipped_configs_dir() -> Path:
    return Path(__file__).parent / "configs"


def shipped_recipes() -> list[str]:
    """Names of the shipped recipes (``demo``, ``cifar100/resnet56_resnet20``, ...); reference tables excluded."""
    root = shipped_configs_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if p.name != "reference.yaml")


def resolve_config_path(name_or_path: str) -> Path:
    """A path, or the name of a shipped recipe (``demo``, ``cifar100/resnet56_resnet20``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = shipped_configs_dir() / (name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml")
    if shipped.is_file():
        return shipped
    names = shipped_recipes()
    close = difflib.get_close_matches(name_or_path, names, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"shipped recipes: {', '.join(names)} (`kdlab configs`)"
    raise ConfigError(f"config {name_or_path!r} not found: neither a file nor a shipped recipe; {hint}")


def load_config(path: str | None, overrides: list[str] | None = None) -> ExperimentConfig:
    base = load_yaml(resolve_config_path(path)) if path else {}
    return build_config(base, overrides or [])


def to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def get_path(cfg: ExperimentConfig | dict, dotted: str) -> Any:
    node: Any = cfg.model_dump() if isinstance(cfg, BaseModel) else cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"no config key {dotted!r}")
        node = node[part]
    return node
