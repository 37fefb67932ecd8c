"""The experiment config: the method-independent sections of :mod:`kdlab.config` plus one block per registered
method, assembled from :mod:`kdlab.registry`.

One :class:`ExperimentConfig` describes a whole experiment: the data, the teacher (architecture, objective,
schedule), the student (architecture, distillation methods, schedule) and the runtime. ``kdlab train-teacher``
uses the teacher part, ``kdlab distill`` the student part, ``kdlab pipeline`` both. Every field is a knob an
ablation plan can address by its dotted path, e.g. ``objective.intra.delta`` or ``distill.cocord.m_c``.

``objective.kind`` takes the name of any registered teacher objective and ``distill.methods`` a list of
registered distillers; ``objective.<name>`` and ``distill.<name>`` are each plugin's own config model. A new
plugin therefore appears here, with its defaults and its validation, without an edit to this file.
Errors are :class:`ConfigError` with one line that names the key, what is wrong and the fix.
"""


import copy
import difflib
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from kdlab import registry
from kdlab.config import (
    ConfigError,
    DataConfig,
    RuntimeConfig,
    StageConfig,
    Strict,
    _parse_value,
    apply_override,
    load_yaml,
    resolve_config_path,
)
from kdlab.distillers.composite import resolved_block, resolved_ce_weight
from kdlab.objectives import HeadConfig

__all__ = [
    "ExperimentConfig",
    "ObjectiveConfig",
    "DistillConfig",
    "DistillMethod",
    "ObjectiveKind",
    "build_config",
    "load_config",
    "parse_overrides",
    "to_yaml",
    "get_path",
]


def _blocks(specs: list[registry.MethodSpec]) -> dict[str, Any]:
    return {s.name: (s.config, Field(default_factory=s.config)) for s in specs if s.config is not None}


_OBJECTIVES = registry.objectives()
_DISTILLERS = registry.distillers()
ObjectiveKind = Literal[tuple(s.name for s in _OBJECTIVES)]  # type: ignore[valid-type]
DistillMethod = Literal[tuple(s.name for s in _DISTILLERS)]  # type: ignore[valid-type]


# ---------------------------------------------------------------------------------------- teacher
class _ObjectiveBase(Strict):
    """Teacher objective: L_CE + the term of ``kind`` (kind=ce: cross-entropy alone)."""

    kind: ObjectiveKind = "ce"
    views: int | None = Field(
        None, ge=1, le=4, description="views per image; None = the objective's own (1 for ce, 2 for contrastive kinds)"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    def method(self) -> registry.MethodSpec:
        return registry.spec(self.kind, "objective")

    def block(self) -> BaseModel | None:
        """The config block of the chosen objective (``None`` for one without settings)."""
        return getattr(self, self.kind, None)


ObjectiveConfig = create_model(
    "ObjectiveConfig", __base__=_ObjectiveBase, **_blocks(_OBJECTIVES),
    head=(HeadConfig, Field(default_factory=HeadConfig)),
)


# ---------------------------------------------------------------------------------------- student
class _DistillBase(Strict):
    methods: list[DistillMethod] = Field(["kd"], description="loss terms beside CE, e.g. [kd, rkd]")
    ce_weight: float | None = Field(
        None, ge=0, description="None = the sole method's own CE weight (KD: 0.1), else 1")

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"methods are listed twice: {v}")
        return v

    def resolved_ce_weight(self) -> float:
        return resolved_ce_weight(self)

    def resolved(self, name: str) -> BaseModel:
        """The ``distill.<name>`` block with the defaults that depend on the method list filled in."""
        return resolved_block(self, name)


DistillConfig = create_model("DistillConfig", __base__=_DistillBase, **_blocks(_DISTILLERS))


# ------------------------------------------------------------------------------------- experiment
class ExperimentConfig(Strict):
    name: str = "experiment"
    seed: int = Field(0, ge=0, lt=2**31, description="seeds every RNG (data order, augmentation, init)")
    out: str = "runs"
    data: DataConfig = DataConfig()
    teacher: StageConfig = StageConfig(arch="resnet14", epochs=240)
    student: StageConfig = StageConfig(arch="resnet8", epochs=240)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)  # type: ignore[valid-type]
    distill: DistillConfig = Field(default_factory=DistillConfig)  # type: ignore[valid-type]
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        o = self.objective
        method, block = o.method(), o.block()
        if self.teacher_views() < method.min_views(block):
            raise ValueError(f"objective.kind={o.kind} takes its positive from a second view: set {method.views_hint}")
        return self

    def teacher_views(self) -> int:
        o = self.objective
        return o.views if o.views is not None else o.method().views(o.block())


# ---------------------------------------------------------------------------------- load / override
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
