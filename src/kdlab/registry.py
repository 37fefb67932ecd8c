"""The method registry: every student-side distiller and teacher objective is a plugin registered here.

A plugin is one module in ``kdlab/distillers/`` or ``kdlab/objectives/`` that defines its config model, its
loss, its ablation knobs and a :class:`MethodSpec` passed to :func:`register`. Everything that lists or
dispatches on methods reads this registry: the config schema (``kdlab.experiment.schema``: the
``distill.<name>`` and ``objective.<name>`` blocks, ``distill.methods`` and ``objective.kind``), the knob
registry of the plan reader, the method names a plan may use, and the docs tables. No code outside a
plugin tests a method's name.

This module holds data types only and imports no plugin; :func:`load_plugins` imports the two plugin
packages (each imports every module in its folder), which is what registers them.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from pydantic import BaseModel

__all__ = [
    "NOTHING",
    "Knob",
    "knob",
    "MethodSpec",
    "register",
    "load_plugins",
    "import_plugins",
    "spec",
    "distillers",
    "objectives",
    "all_specs",
]

Role = Literal["distiller", "objective"]
#: which paper's plans a knob belongs to: the intra-class teacher paper, CoCoRD's, or any
Scope = Literal["intra", "cocord", "common"]


class _Nothing:
    def __repr__(self) -> str:
        return "NOTHING"

    def __bool__(self) -> bool:
        return False


NOTHING: Any = _Nothing()  # "no off/on value": REMOVE/ADD is not meaningful for the knob


@dataclass(frozen=True)
class Knob:
    """One named thing an ablation plan can change.

    ``path``: a dotted config path; ``kind``: ``float | int | bool | choice | augment | methods | arch | pair``
    (``augment`` and ``methods`` are lists that ADD appends to and REMOVE takes from; ``pair`` sets
    teacher.arch and student.arch). ``aliases``/``description``: how a plan talks about it.
    ``choices``: for ``choice`` knobs, value -> phrases a plan may use for it.
    ``off_value``/``off_path``: what REMOVE sets (default path: ``path``). ``on_value``/``on_path``: ADD.
    ``also``: further paths that receive the same value (``lr`` sets both stages).
    ``requires``: which runs the knob acts on: ``"path=value"``, ``"path=a|b|c"`` (one of) or ``"path~item"``
    (list contains), several joined by ``&``; ``None``: every run of its stage (``stage``). A plan's change of a knob that does not act on
    the base run is refused (ADD excepted where the requirement is a component kdlab can add: a distiller).
    ``parse``: ``(text, generic) -> value`` reads a plan's value text for this knob, usually by rewriting the
    text and calling ``generic`` (the parser of the knob's kind); raises ValueError.
    ``companions``: ``(overrides, base) -> extra overrides`` that must accompany a value of this knob for the
    variant to be valid (e.g. one view needs the memory positive); the knob's plugin owns this rule.
    ``typical``: (lo, hi), where the field's values usually lie, narrower than what the config accepts (a
    contrastive τ in [0.01, 1], a KD temperature in [1, 64]); a plan's values outside it lower the knob's
    score, so "temperature: 1, 4, 8, 16" reads as the KD temperature, "0.05, 0.2" as the contrastive one.
    ``to_overrides``: value -> overrides, for a knob whose one value sets more than itself on every path
    (Hinton's α: the KD weight α and the CE weight 1 - α); None: the value on each of ``paths``.
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
    parse: Callable[[str, Callable[[str], Any]], Any] | None = None
    companions: Callable[[dict, Any], dict] | None = None
    notes: str = ""
    typical: tuple[float, float] | None = None
    to_overrides: Callable[[Any], dict[str, Any]] | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.path,) + tuple(self.also)

    @property
    def stage(self) -> str:
        """Which stage the knob changes: teacher, student or both."""
        stages = {_stage_of(p) for p in self.paths + ((self.off_path,) if self.off_path else ())}
        return stages.pop() if len(stages) == 1 else "both"

    def removable(self) -> bool:
        return self.off_value is not NOTHING or self.kind in ("bool", "augment", "methods")

    def addable(self) -> bool:
        return self.on_value is not NOTHING or self.kind in ("bool", "augment", "methods")


#: where a contrastive loss's temperature usually lies (SimCLR/SupCon/CRD/MoCo use 0.05-0.5)
CONTRASTIVE_TAU = (0.01, 1.0)
#: where a KD temperature usually lies (Hinton et al. 1-20; RepDistiller and mdistiller use 4)
KD_TEMPERATURE = (1.0, 64.0)


def knob(name: str, path: str, kind: str, aliases, description: str, **kw) -> Knob:
    """A :class:`Knob`, with ``aliases`` given as any sequence of phrases."""
    return Knob(name=name, path=path, kind=kind, aliases=tuple(aliases), description=description, **kw)


def turns_off_batch_norm(text: str) -> bool:
    """Whether a value also switches a head's batch norm off ("2-layer MLP without BN", "MLP w/o batch norm"):
    that is the head's batch-norm knob's ablation, so a head-depth value that says it is refused, not half read."""
    raw = unicodedata.normalize("NFKC", text).lower()
    return bool(re.search(r"\b(without|no|w/o|minus)\s+(bn|batch[\s-]*norm(alization|alisation)?)\b", raw))


def _stage_of(path: str) -> str:
    head = path.split(".")[0]
    if head in ("objective", "teacher"):
        return "teacher"
    if head in ("distill", "student"):
        return "student"
    return "both"


@dataclass(frozen=True)
class MethodSpec:
    """What a plugin declares.

    ``config``: the pydantic model of its block (``distill.<name>`` or ``objective.<name>``); ``None`` for a
    method without settings (the CE teacher). ``build(block, ctx)``: the loss module (a ``DistillLoss`` for a
    distiller, an ``ObjectiveTerm`` or ``None`` for an objective). ``phrases``: how a plan names the method.
    ``knobs``: its ablation knobs (paths inside its own block, or anything it owns). ``scope``: the paper its
    knobs belong to. Distillers may set ``solo_ce_weight`` (the CE weight when the method is the only one,
    KD's 0.1) and ``resolve_block(block, methods)`` (defaults that depend on the method list). Objectives set
    ``views(block)`` (views per image by default) and ``min_views(block)`` with ``views_hint`` (how to fix a
    config with fewer). ``companions(overrides, base)``: further overrides a plan's variant needs so that it
    stays valid and means what it says under this method (the plan reader applies every method's rule).
    ``terms``: the names of the loss terms the module returns, each with its roles (a plan's "contrastive loss"
    is every term with the role ``contrastive``; the method's own name is a role of all its terms).
    """

    name: str
    role: Role
    config: type[BaseModel] | None
    build: Callable[[Any, Any], Any]
    summary: str
    phrases: tuple[str, ...] = ()
    list_aliases: tuple[str, ...] = ()
    knobs: tuple[Knob, ...] = ()
    scope: Scope = "common"
    solo_ce_weight: float | None = None
    resolve_block: Callable[[Any, list[str]], Any] | None = None
    views: Callable[[Any], int] = lambda block: 1
    min_views: Callable[[Any], int] = lambda block: 1
    views_hint: str = ""
    companions: Callable[[dict, Any], dict] | None = None
    terms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    order: int = 100  # listings sort by (order, name): the baseline objective (ce) leads with 0

    @property
    def loss_terms(self) -> dict[str, tuple[str, ...]]:
        """The loss terms the method's module returns (logged as ``train_<term>``) with their roles
        (``contrastive``, ``prediction``, ``kd``, ...); a method that declares none logs one term, its name."""
        return dict(self.terms) if self.terms else {self.name: (self.name,)}

    @property
    def builds_head(self) -> bool:
        """Whether a teacher trained with this objective builds the projection head ``objective.head``: an
        objective with a term does (``TeacherObjective`` builds the head for its term), the CE teacher does not."""
        return self.role == "objective" and self.config is not None

    @property
    def section(self) -> str:
        return f"distill.{self.name}" if self.role == "distiller" else f"objective.{self.name}"

    @property
    def requirement(self) -> str:
        """The ``requires`` condition under which the method's own knobs act."""
        return f"distill.methods~{self.name}" if self.role == "distiller" else f"objective.kind={self.name}"


_SPECS: dict[str, MethodSpec] = {}
_PLUGIN_PACKAGES = ("kdlab.distillers", "kdlab.objectives")


def register(method: MethodSpec) -> MethodSpec:
    """Add a plugin's spec (called at import time of the plugin module)."""
    if method.name in _SPECS:
        raise ValueError(f"method {method.name!r} registered twice")
    _SPECS[method.name] = method
    return method


def import_plugins(package: str, path) -> None:
    """Import every public module of a plugin package (its ``__init__`` calls this with ``__name__`` and
    ``__path__``): each method module registers itself on import, so a new method is a new file."""
    for module in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")


def load_plugins() -> None:
    """Import the plugin packages (idempotent): every method module registers itself."""
    for pkg in _PLUGIN_PACKAGES:
        importlib.import_module(pkg)


def all_specs() -> list[MethodSpec]:
    """Every registered method, sorted by (order, name), whatever the import order of the plugins."""
    load_plugins()
    return sorted(_SPECS.values(), key=lambda s: (s.order, s.name))


def distillers() -> list[MethodSpec]:
    """Student-side distillers, sorted by name."""
    return [s for s in all_specs() if s.role == "distiller"]


def objectives() -> list[MethodSpec]:
    """Teacher objectives, sorted by name after the baseline (``ce``)."""
    return [s for s in all_specs() if s.role == "objective"]


def spec(name: str, role: Role | None = None) -> MethodSpec:
    load_plugins()
    found = _SPECS.get(name)
    if found is None or (role is not None and found.role != role):
        names = [s.name for s in all_specs() if role is None or s.role == role]
        raise KeyError(f"unknown {role or 'method'} {name!r}; available: {', '.join(names)}")
    return found
