"""Resolve a parsed plan into a grid of validated configs: part -> knob, text -> values, base selection.

Rules (docs/ABLATION.md repeats them):

* The plan's method (``scope``) comes from the base config when one is given (``objective.kind=intra`` ->
  intra, ``cocord`` in ``distill.methods`` -> cocord), else from the plan's title and parts. Without
  ``--base`` the shipped base of that method on digits is used (``ablation/intra_digits`` or
  ``ablation/cocord_digits``).
* Each ablated part resolves to ONE knob: ``--map`` first (by ablation name, part text or ``#k``), else the
  best-scoring knob of the registry (aliases, description, scope of the plan, what the action needs,
  whether the replacement values parse and fit the knob's type and range). Too weak a best match, or a
  runner-up within 20 % that would do something else, is an error listing the closest knobs and ``--map``.
* A part that resolves to a hyper-parameter of a distiller the base's student does not use (DKD's beta, CRD's
  nce_k...) gets its own base: the base student distilled with that method alone, as the literature trains it
  (CE + the method at its defaults); its variants and its "base" row are that student (:func:`needed_distillers`).
  Every other ablation keeps the plan's base.
* Values are parsed to the knob's type; REMOVE applies the knob's off value, ADD its on value (or appends a
  named method / augmentation); every variant is validated by building the config.
* Every ablation that resolves runs; each one that does not is listed with its problems and the fix (a
  ``--map`` or an override) where one exists. A plan where nothing resolves (or any problem with ``strict``)
  is an error listing every problem. Settings meaningless on the base's data are warnings (:mod:`.checks`).
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Iterable, Sequence

from kdlab import registry
from kdlab.ablation.checks import TRAIN_SIZES, config_warnings, num_classes
from kdlab.ablation.knobs import (
    AUGMENT_NAMES,
    KNOBS,
    METHOD_NAMES,
    NOTHING,
    FieldInfo,
    Knob,
    field_info,
    generic_knob,
    knob_by_name,
    knobs_for_path,
    weighted_method,
)
from kdlab.ablation.plan import Ablation, AblationError, Plan, clean_inline
from kdlab.ablation.text import PhraseIndex, ascii_text, readable_text, repair_mojibake, tokens, weighted_tokens
from kdlab.config import ConfigError, load_yaml, resolve_config_path
from kdlab.experiment.identity import run_identity
from kdlab.experiment.terms import TERM_METRICS, run_terms
from kdlab.experiment.schema import (
    ExperimentConfig,
    build_config,
    get_path,
    parse_overrides,
)
from kdlab.sweep.grid import (
    SweepAblation,
    SweepGrid,
    SweepVariant,
    config_diff,
    format_value,
)

__all__ = [
    "ResolveError",
    "Variant",
    "MetricSpec",
    "ResolvedAblation",
    "Grid",
    "resolve_plan",
    "detect_scope",
    "scope_of_config",
    "rank_knobs",
    "parse_value",
    "map_metric",
    "METRICS",
    "SHIPPED_BASES",
    "format_grid",
    "format_unresolved",
    "parse_maps",
    "Problem",
    "Unresolved",
    "fit_metric",
    "run_terms",
    "TERM_METRICS",
]

SHIPPED_BASES = {"intra": "ablation/intra_digits", "cocord": "ablation/cocord_digits"}
MIN_SCORE = 1.5  # below this the best knob is "unknown"
AMBIGUOUS_RATIO = 0.8  # a runner-up within this ratio of the best, doing something else, is "ambiguous"


class ResolveError(AblationError):
    """A plan that does not resolve: unknown/ambiguous parts, bad values; the message says how to fix it."""


# ------------------------------------------------------------------------------------------ data
@dataclass
class Variant:
    label: str  # what the table shows: "0.1", "supcon", "removed", "+rkd", "base"
    value: Any  # for plots: a number for numeric sweeps, else the label
    raw: str  # the plan's text for it ("" for base / REMOVE without values)
    overrides: dict[str, Any]  # dotted path -> value, on top of the base
    config: ExperimentConfig
    is_base: bool = False
    same_as_base: bool = False
    merged: list[str] = field(default_factory=list)  # other texts of the plan that read as this same run

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "value": self.value,
            "raw": self.raw,
            "overrides": self.overrides,
            "is_base": self.is_base,
            "same_as_base": self.same_as_base,
        }


STAGE_WORDS = {"both": "student and teacher"}


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as the plan says it
    keys: tuple[str, ...]  # kdlab metric keys ("top1", "loss_std", ...); () = not measured
    stage: str | None = None  # "teacher" | "student" | "both" | None (the default: student, teacher too if it varies)
    note: str = ""  # why a key was left out or why nothing is measured ("this base records no cocord_pred term")

    def to_dict(self) -> dict:
        return {"name": self.name, "keys": list(self.keys), "stage": self.stage, "note": self.note}

    def describe(self) -> str:
        """``name -> keys`` as the dry run and --explain show it."""
        where = f" ({STAGE_WORDS.get(self.stage, self.stage)})" if self.stage and self.keys else ""
        got = "+".join(self.keys) + where if self.keys else "not measured"
        return f"{self.name} -> {got}" + (f" [{self.note}]" if self.note else "")


@dataclass(frozen=True)
class Problem:
    """Why one ablation does not resolve: a one-line reason, optional detail lines, and the fix when one exists
    (the ``--map`` or override that would make it run)."""

    reason: str
    details: tuple[str, ...] = ()
    fix: str = ""

    def lines(self, where: str) -> list[str]:
        """The reason on the first line, the details and the fix indented under it."""
        details = [d if d.startswith(" ") else f"  {d}" for d in self.details]
        return [f"{where}: {self.reason}", *details] + ([f"  fix: {self.fix}"] if self.fix else [])

    def to_dict(self) -> dict:
        return {"reason": self.reason, "details": list(self.details), "fix": self.fix}


Candidate = tuple[str, float, str]  # (knob name, score, the alias phrase that scored), best first


@dataclass
class Unresolved:
    """An ablation of the plan that does not resolve: it is listed, with its problems, and not run."""

    index: int  # 1-based position in the plan
    ablation: Ablation
    problems: list[Problem]
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def where(self) -> str:
        return ablation_where(self.ablation, self.index)

    def lines(self) -> list[str]:
        return [line for p in self.problems for line in p.lines(self.where)]

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.ablation.name, "part": self.ablation.part,
                "action": self.ablation.action, "line": self.ablation.line,
                "problems": [p.to_dict() for p in self.problems],
                "candidates": [[k, round(s, 3), ph] for k, s, ph in self.candidates]}


def ablation_where(ab: Ablation, index: int) -> str:
    return f"ablation #{index} {ab.name!r}" + (f" (line {ab.line})" if ab.line else "")


@dataclass
class ResolvedAblation:
    ablation: Ablation
    knob: Knob
    how: str  # "score 4.21 via 'margin threshold'" | "--map"
    score: float
    variants: list[Variant]
    metrics: list[MetricSpec]
    base_value: Any = None
    base: ExperimentConfig | None = None  # this ablation's own reference config; None: the plan's base
    base_note: str = ""  # why it has its own base ("the dkd student: DKD's hyper-parameters are varied")
    index: int = 0  # 1-based position in the plan (ablations that do not resolve leave gaps)
    phrase: str = ""  # the knob alias that scored best ("" with --map)
    candidates: list[Candidate] = field(default_factory=list)  # the best knobs with their scores
    warnings: list[str] = field(default_factory=list)  # "label: setting meaningless on the base's data"

    @property
    def numeric(self) -> bool:
        vals = [v.value for v in self.variants]
        return self.knob.kind in ("float", "int") and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals)

    @property
    def teacher_varies(self) -> bool:
        return any(_touches_teacher(v.overrides) for v in self.variants)

    def to_dict(self) -> dict:
        return {
            "name": self.ablation.name,
            "part": self.ablation.part,
            "action": self.ablation.action,
            "replacements": list(self.ablation.replacements),
            "line": self.ablation.line,
            "knob": {"name": self.knob.name, "path": self.knob.path, "kind": self.knob.kind, "scope": self.knob.scope,
                     "description": self.knob.description},
            "how": self.how,
            "score": round(self.score, 3),
            "base_value": _jsonable(self.base_value),
            "base_note": self.base_note,
            "index": self.index,
            "warnings": self.warnings,
            "numeric": self.numeric,
            "teacher_varies": self.teacher_varies,
            "metrics": [m.to_dict() for m in self.metrics],
            "variants": [v.to_dict() for v in self.variants],
        }


@dataclass
class Grid:
    plan: Plan
    scope: str
    scope_reason: str
    base_name: str
    base: ExperimentConfig
    seeds: list[int]
    ablations: list[ResolvedAblation]
    overrides: list[str] = field(default_factory=list)
    maps: dict[str, str] = field(default_factory=dict)
    unresolved: list[Unresolved] = field(default_factory=list)  # ablations that are listed, not run
    warnings: list[str] = field(default_factory=list)  # settings of the base meaningless on its data

    def configs(self) -> list[ExperimentConfig]:
        """The distinct configs of the grid (base first), without seeds."""
        seen: dict[str, ExperimentConfig] = {}
        own = [a.base for a in self.ablations if a.base is not None]
        for cfg in [self.base] + own + [v.config for a in self.ablations for v in a.variants]:
            key = run_identity(cfg, "student")
            seen.setdefault(key, cfg)
        return list(seen.values())

    def to_sweep(self) -> SweepGrid:
        """The grid the sweep layer runs: configs and overrides, with what the plan reader knows attached for
        the report (``info``). Text from the plan reaches it as readable ASCII (damaged glyphs dropped)."""
        info = {k: v for k, v in self.to_dict().items() if k not in ("base", "seeds", "ablations")}
        info["plan"] = {**info["plan"], "title": readable_text(self.plan.title)}
        ablations = []
        for a in self.ablations:
            ad = a.to_dict()
            own = a.base
            ablations.append(SweepAblation(
                name=readable_text(a.ablation.name), knob=a.knob.name, path=a.knob.path,
                variants=[SweepVariant(readable_text(v.label), v.value, config_diff(v.config, own or self.base),
                                       v.config, v.same_as_base, info={"raw": readable_text(v.raw), "is_base": v.is_base})
                          for v in a.variants],
                metrics=[{**m.to_dict(), "name": readable_text(m.name)} for m in a.metrics], base=own,
                base_overrides=config_diff(own, self.base) if own is not None else {},
                info={**{k: v for k, v in ad.items() if k not in ("name", "variants", "metrics", "teacher_varies")},
                      "part": readable_text(a.ablation.part)},
            ))
        return SweepGrid(readable_text(self.plan.title), self.base, list(self.seeds), ablations, info=info)

    def to_dict(self) -> dict:
        return {
            "plan": self.plan.to_dict(),
            "scope": self.scope,
            "scope_reason": self.scope_reason,
            "base_name": self.base_name,
            "base": self.base.model_dump(mode="json"),
            "seeds": self.seeds,
            "overrides": self.overrides,
            "maps": self.maps,
            "ablations": [a.to_dict() for a in self.ablations],
            "unresolved": [u.to_dict() for u in self.unresolved],
            "warnings": self.warnings,
        }


def _touches_teacher(overrides: dict) -> bool:
    return any(p.split(".")[0] in ("objective", "teacher", "data") for p in overrides)


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


# ------------------------------------------------------------------------------------------ scope
_SCOPE_CUES = {
    "cocord": ["cocord", "contrastive consistent representation distillation", "consistent representation",
               "slow moving student", "slowmoving", "teacher dictionary", "dictionary size", "lpred", "prediction loss",
               "teacher projection head", "mc", "mr", "cognate", "momentum coefficient", "lctr", "consistency loss"],
    "intra": ["intraclass contrastive", "intraclass", "margin", "pipeline", "cache", "enriching knowledge distillation",
              "soft labels", "lintra", "anchor", "intra"],
}


def _count_cues(text: str, scope: str) -> int:
    toks = " " + " ".join(tokens(text)) + " "
    n = 0
    for cue in _SCOPE_CUES[scope]:
        ct = " " + " ".join(tokens(cue)) + " "
        if ct.strip() and ct in toks:
            n += 1
    return n


def detect_scope(plan: Plan) -> tuple[str, str]:
    """Which method the plan ablates: ``intra`` or ``cocord`` (title counts thrice), with the reason."""
    scores = {}
    for s in ("intra", "cocord"):
        scores[s] = 3 * _count_cues(plan.title, s) + _count_cues(
            "\n".join(f"{a.name} {a.part} {' '.join(a.replacements)}" for a in plan.ablations), s
        )
    if scores["intra"] == scores["cocord"] == 0:
        return "intra", "no method cue in the plan; the intra-class method is the default"
    best = max(scores, key=lambda s: (scores[s], s == "intra"))
    return best, f"plan cues intra={scores['intra']} cocord={scores['cocord']}"


def scope_of_config(cfg: ExperimentConfig) -> str | None:
    """The paper a base config belongs to: that of a distiller it uses with a paper of its own (CoCoRD), else
    that of its teacher objective's term (the intra-class teacher and its alternatives); None for CE + KD."""
    for m in cfg.distill.methods:
        if registry.spec(m, "distiller").scope != "common":
            return registry.spec(m, "distiller").scope
    objective = cfg.objective.method()
    return objective.scope if objective.config is not None and objective.scope != "common" else None


# ------------------------------------------------------------------------------------------ metrics
METRICS: dict[str, tuple[str, ...]] = {
    "top1": ("top1 accuracy", "accuracy", "top1", "acc", "acc 1", "test accuracy", "classification accuracy",
             "top1 acc", "final accuracy", "performance", "validation accuracy", "student accuracy", "teacher accuracy",
             "last epoch accuracy", "recognition accuracy", "top1 test accuracy", "student performance"),
    "top1_best": ("best accuracy", "best top1 accuracy", "peak accuracy", "maximum accuracy", "best epoch accuracy"),
    "top5": ("top5 accuracy", "top5", "top5 acc", "acc 5"),
    "top5_best": ("best top5 accuracy", "best top5", "peak top5 accuracy", "maximum top5 accuracy"),
    "convergence_epoch": ("convergence speed", "convergence", "epochs to converge", "convergence rate", "speed of convergence",
                          "time to converge", "convergence epoch", "epochs to convergence", "training speed"),
    "stability": ("training stability", "stability", "loss variance", "loss oscillation", "loss fluctuation",
                  "training instability", "loss spikes", "stability of training", "loss curve smoothness"),
    "loss": ("loss", "training loss", "train loss", "final loss", "final training loss", "objective value",
             "total loss", "overall loss", "total training loss", "loss curve", "training loss curve"),
    "test_loss": ("test loss", "validation loss", "val loss", "evaluation loss", "generalization loss", "nll",
                  "negative log likelihood", "test nll", "test cross entropy"),
    "peak_mem_mb": ("gpu memory", "memory utilization", "memory usage", "memory", "peak memory", "memory consumption",
                    "memory footprint", "vram", "gpu memory utilization", "memory cost", "memory efficiency"),
    "train_time_s": ("training time", "wall clock time", "training cost", "computational cost", "overhead",
                     "training overhead", "runtime", "time", "computation time", "compute cost", "efficiency",
                     "total training time"),
    "epoch_time_s": ("time per epoch", "epoch time", "training time per epoch", "per epoch time", "seconds per epoch",
                     "epoch duration"),
    "step_time_ms": ("step time", "iteration time", "time per iteration", "time per step", "per step time",
                     "speed per iteration", "training step time", "training throughput", "throughput",
                     "images per second"),
    "negatives_per_anchor": ("negatives per anchor", "number of negatives per anchor", "number of negatives",
                             "negative count"),
    "margin_pass_frac": ("margin pass fraction", "fraction of anchors", "anchor ratio", "fraction of samples passing the margin",
                         "selected samples", "anchor rate", "number of anchors", "selected anchor fraction"),
    "intra_inter_ratio": ("intra inter ratio", "intraclass distance", "intraclass diversity", "feature spread",
                          "intra inter distance ratio", "intraclass variance", "intraclass to interclass distance ratio",
                          "feature diversity", "embedding diversity"),
    "cache_fill": ("cache fill", "cache occupancy", "cache utilization"),
    "soft_label_entropy": ("soft label entropy", "entropy of soft labels", "soft label diversity", "label entropy",
                           "richness of soft labels", "soft label richness", "teacher output entropy", "entropy"),
    "ece": ("ece", "expected calibration error", "calibration error", "calibration", "model calibration",
            "confidence calibration", "miscalibration"),
    "off_true_mass": ("non target probability mass", "off target mass", "probability mass on non target classes",
                      "dark knowledge", "non target mass"),
}
#: a loss term of the training objective -> the plan's names for it (the term's own metric key, per stage)
TERM_PHRASES: dict[str, tuple[str, ...]] = {
    "ce_loss": ("ce loss", "cross entropy loss", "classification loss", "lce", "lcls", "hard label loss", "cls loss",
                "supervised loss", "ce term"),
    "kd_loss": ("kd loss", "kl divergence loss", "kl loss", "soft label loss", "lkd", "kd term", "kl divergence"),
    "contrastive_loss": ("contrastive loss", "infonce loss", "lctr", "ctr loss", "contrastive term", "nce loss",
                         "contrastive objective value"),
    "prediction_loss": ("prediction loss", "lpred", "consistency loss", "pred loss", "prediction term"),
    "intra_loss": ("intra class loss", "lintra", "intra class contrastive loss", "intra loss"),
    "supcon_loss": ("supcon loss", "supervised contrastive loss"),
    "simclr_loss": ("simclr loss", "self supervised contrastive loss", "ntxent loss"),
    "rkd_loss": ("rkd loss", "relational knowledge distillation loss", "relational loss"),
    "crd_loss": ("crd loss", "contrastive representation distillation loss"),
    "dkd_loss": ("dkd loss", "decoupled knowledge distillation loss"),
    "fitnet_loss": ("fitnet loss", "hint loss"),
    "at_loss": ("attention transfer loss",),
    "sp_loss": ("sp loss", "similarity preserving loss"),
    "pkt_loss": ("pkt loss", "probabilistic knowledge transfer loss"),
}
#: loss terms of plugins without phrases above: "<method> loss" (one phrase, so that "loss" alone keeps naming
#: the total training loss)
for _spec in registry.all_specs():
    TERM_PHRASES.setdefault(f"{_spec.name}_loss", (f"{_spec.name} loss",))
METRICS.update(TERM_PHRASES)
METRICS["topk"] = ("top k accuracy", "top k", "top1 top5 accuracy", "top1 and top5")
METRICS["train_test_loss"] = ("train test loss", "training and test loss", "train and test loss", "train val loss",
                              "training and validation loss")
#: a metric group -> its kdlab keys, where they are not the group's own name
_METRIC_KEYS = {"stability": ("loss_std", "loss_spikes"), "topk": ("top1", "top5"),
                "train_test_loss": ("loss", "test_loss")}
_ERROR_NOTE = "kdlab records accuracy (%): error = 100 - accuracy"
_EVALUATION_NOTE = "a different evaluation than the test top-1 kdlab records"
#: names that need a word on how kdlab reads them: group -> (keys, the note, the names). Keys () = not measured:
#: measurements kdlab does not make, some worded like one it makes ("inference latency" is no training step,
#: "linear probe accuracy" no test top-1), listed with the reason and never as that key
_NOTED_METRICS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "improvement": (("top1",), "the table's Δ vs base column of top1", (
        "improvement over baseline", "gain over baseline", "improvement over base", "improvement", "gain",
        "accuracy gain", "accuracy improvement", "relative improvement", "delta over baseline")),
    "top1_error": (("top1",), _ERROR_NOTE, (
        "top1 error", "top1 error rate", "error rate", "test error", "classification error", "error")),
    "top5_error": (("top5",), _ERROR_NOTE, ("top5 error", "top5 error rate")),
    "other_evaluation": ((), _EVALUATION_NOTE, (
        "linear probe accuracy", "linear probe", "linear evaluation", "knn accuracy", "k nearest neighbor accuracy",
        "transfer accuracy", "transfer learning accuracy", "few shot accuracy", "robustness to corruption",
        "corruption robustness", "corruption accuracy", "accuracy under label noise", "label noise accuracy",
        "robustness to label noise", "out of distribution accuracy", "ood accuracy", "adversarial robustness",
        "adversarial accuracy")),
    "class_accuracy": ((), "kdlab records the overall test top-1, not accuracy per class", (
        "per class accuracy", "worst class accuracy", "balanced accuracy", "mean class accuracy", "class wise accuracy",
        "per class recall")),
    "inference_cost": ((), "kdlab times training (step_time_ms, epoch_time_s, train_time_s), not inference", (
        "inference time", "inference latency", "latency", "inference speed", "inference throughput", "fps",
        "inference cost")),
    "other_efficiency": ((), "no quantity kdlab records (its costs: train_time_s, epoch_time_s, step_time_ms, "
                             "peak_mem_mb)", (
        "sample efficiency", "data efficiency", "parameter efficiency", "label efficiency",
        "knowledge transfer efficiency", "transfer efficiency")),
    "seed_variance": ((), "each table cell's ± is already the std across seeds", (
        "variance across seeds", "seed variance", "std across seeds", "standard deviation across seeds",
        "variance across runs", "run to run variance", "variability across runs")),
    "logit_variance": ((), "kdlab records no statistics of the logits", (
        "logit variance", "variance of logits", "logit norm", "logit magnitude")),
    "gradient": ((), "kdlab records no gradients", (
        "gradient conflict", "gradient similarity", "gradient cosine similarity", "gradient alignment",
        "gradient norm", "gradient interference")),
    "agreement": ((), "kdlab does not compare two networks' outputs (it logs the training terms kd_loss and "
                      "prediction_loss)", (
        "agreement", "prediction agreement", "prediction consistency", "representation consistency",
        "consistency of representations", "top1 agreement", "fidelity")),
    "lambda_trace": ((), "λ per epoch is logged as intra_lambda in each run's metrics.jsonl, not in its summary", (
        "lambda over training", "adaptive lambda", "effective lambda", "lambda schedule", "lambda trajectory",
        "learned lambda")),
    "epochs_to_accuracy": ((), "convergence_epoch is the first epoch reaching 95 % of the run's final top-1, not a "
                               "fixed accuracy", (
        "epochs to reach accuracy", "epochs to reach target accuracy", "time to reach accuracy",
        "epochs to target accuracy", "time to accuracy")),
}
for _group, (_keys, _, _names) in _NOTED_METRICS.items():
    METRICS[_group] = _names
    _METRIC_KEYS[_group] = _keys
_METRIC_NOTES = {group: note for group, (_, note, _) in _NOTED_METRICS.items()}


@lru_cache(maxsize=1)
def _metric_index() -> PhraseIndex:
    return PhraseIndex(METRICS)


_GAP = re.compile(r"\b(?:gaps?|differences?|discrepancy)\b")
#: one measurement of the pair, not one per stage ("KL divergence between teacher and student", "teacher-student
#: agreement")
_PAIR = re.compile(r"\bbetween\b|\b(?:teacher|student)s?\s*-?\s*(?:teacher|student)s?\b")


def metric_stage(name: str) -> tuple[str | None, bool]:
    """The stage a metric name picks ("teacher", "student", "both" or None) and whether it asks for the gap
    between the stages ("Teacher-student accuracy gap": both stages, which kdlab records one by one)."""
    t = ascii_text(name)
    named = [s for s in ("teacher", "student") if re.search(rf"\b{s}s?\b", t)]
    if len(named) < 2:
        return (named[0] if named else None), False
    gap = bool(_GAP.search(t))
    return ("both" if gap or not _PAIR.search(t) else None), gap


def _metric_group(q: tuple[str, ...]) -> str | None:
    """The group of METRICS that tokens ``q`` name, or None."""
    exact = [k for k, phrases in METRICS.items() if " ".join(q) in (" ".join(tokens(p)) for p in phrases)]
    if len(exact) == 1:  # a metric's own name ("loss", "top-1 accuracy") needs no scoring
        return exact[0]
    idx = _metric_index()
    best, score = max(((k, idx.score(k, q)[0]) for k in METRICS), key=lambda x: x[1])
    # "feature alignment loss" names a term kdlab does not log: never the total loss
    if score < 0.9 or (best == "loss" and not set(q) <= idx.vocab["loss"] | {"teacher", "student"}):
        return None
    return best


def map_metric(name: str) -> MetricSpec:
    """A plan metric name -> kdlab metric keys (empty keys: kept, reported as not measured, with the reason when
    kdlab knows the measurement)."""
    stage, gap = metric_stage(name)
    q = tokens(name)
    group = _metric_group(q) if q else None
    if group is None:
        note = "names a loss term kdlab does not record (the total training loss is 'loss')" if "loss" in q else ""
        return MetricSpec(name, (), stage, note)
    keys = _METRIC_KEYS.get(group, (group,))
    note = _METRIC_NOTES.get(group, "")
    if gap and keys:
        note = (f"kdlab records no teacher-student gap: each stage's {'+'.join(keys)} is shown, the gap is their "
                f"difference")
    return MetricSpec(name, keys, stage, note)


def fit_metric(spec: MetricSpec, configs: Sequence[ExperimentConfig]) -> MetricSpec:
    """``spec`` for the runs of one ablation (its base first): a loss term goes to the stage whose runs log it,
    or is not measured when none does; top-5 is left out on a data set of 10 classes or fewer unless named."""
    if len(spec.keys) == 1 and spec.keys[0] in TERM_METRICS:
        key = spec.keys[0]
        terms = set(TERM_METRICS[key])
        one = spec.stage in ("student", "teacher")  # None and "both": whichever stages log it
        stages = [s for s in ("student", "teacher") if any(terms & set(run_terms(c, s)) for c in configs)]
        if (one and spec.stage not in stages) or not stages:
            shown = (spec.stage,) if one else ("student", "teacher")
            logged = "; ".join(f"{s} terms: {', '.join(dict.fromkeys(t for c in configs for t in run_terms(c, s)))}"
                               for s in shown)
            return replace(spec, keys=(),
                           note=f"not recorded: these runs log no {' / '.join(sorted(terms))} term ({logged})")
        return spec if one or len(stages) == 2 else replace(spec, stage=stages[0])
    classes = num_classes(configs[0])
    top5 = tuple(k for k in spec.keys if k.startswith("top5"))  # top5, top5_best
    if top5 and classes is not None and classes <= 10:
        data = f"{configs[0].data.name} has {classes} classes, so top-5 accuracy says little"
        if re.search(r"top\s*-?\s*5|@\s*5\b", ascii_text(spec.name)):  # "Top-5 accuracy", "Acc@5"
            return _noted(spec, f"{'+'.join(top5)} kept because the plan names it, though {data}")
        return _noted(replace(spec, keys=tuple(k for k in spec.keys if k not in top5)),
                      f"{'+'.join(top5)} left out: {data}")
    return spec


def _noted(spec: MetricSpec, note: str) -> MetricSpec:
    """``spec`` with ``note`` after the note it has."""
    return replace(spec, note="; ".join(n for n in (spec.note, note) if n))


# ------------------------------------------------------------------------------------------ knob index
@lru_cache(maxsize=1)
def _knob_index() -> PhraseIndex:
    groups = {}
    weak = {}
    for k in KNOBS:
        groups[k.name] = list(k.aliases) + [k.name.replace(".", " ").replace("_", " ")]
        w = [k.description]
        if k.kind == "choice":
            w += [p for ps in k.choices.values() for p in ps]
        weak[k.name] = w
    return PhraseIndex(groups, weak=weak)


def knob_method(knob: Knob) -> str | None:
    """The distillation method a knob belongs to (``dkd`` for ``distill.dkd.alpha``), or None."""
    m = re.search(r"(?:^|&)\s*distill\.methods~(\w+)", knob.requires or "")
    if m:
        return m[1]
    parts = knob.path.split(".")
    if parts[0] == "distill" and len(parts) > 2 and parts[1] in METHOD_NAMES:
        return parts[1]
    return None


def methods_named(text: str) -> list[str]:
    """Distillation methods a text names by name ("PKT", "attention transfer", "AT"), without the guesses
    ``_parse_methods`` makes for replacement values ("ours" -> kd)."""
    table = {k: tuple(p for p in v if p != "at") for k, v in METHOD_NAMES.items()}
    found = _find_phrases(text, table)
    if re.search(r"(?<![A-Za-z])AT(?![A-Za-z])", text) and "at" not in found:
        found.append("at")
    return found


def _unmet(knob: Knob, cfg: ExperimentConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """The conditions of ``knob.requires`` (joined by ``&``) that ``cfg`` does not meet, each as (what it
    needs, the ``key=value`` override that meets it, the overrides that add the component or {} when kdlab
    cannot add it: only a distiller can be added)."""
    out = []
    for cond in (c.strip() for c in (knob.requires or "").split("&") if c.strip()):
        if "~" in cond:
            path, item = cond.split("~", 1)
            cur = list(get_path(cfg, path) or [])
            if item not in cur:
                out.append((f"{path} to contain {item} (base: {cur})", f"{path}=[{','.join(cur + [item])}]",
                            {path: cur + [item]}))
            continue
        path, want = cond.split("=", 1)
        cur = get_path(cfg, path)
        options = want.split("|")
        if str(cur) not in options:
            need = f"{path}={want}" if len(options) == 1 else f"{path} to be one of {', '.join(options)}"
            out.append((f"{need} (base: {cur})", f"{path}={options[0]}", {}))
    return out


def _requires_ok(knob: Knob, cfg: ExperimentConfig) -> tuple[bool, str]:
    """Whether the knob acts on the run ``cfg`` (its ``requires``), and what it needs, for the refusal."""
    unmet = _unmet(knob, cfg)
    return not unmet, " and ".join(need for need, _, _ in unmet)


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"
#: what may lead a range: "sweep over", "vary", a knob's name ("lambda in [0.001, 0.1], 3 points")
_RANGE_LEAD = r"^\s*(?:(?:a\s+)?(?:sweep|sweeping|range|vary|varying|varied|grid)\s+(?:over|of|from|across)?\s*)?" \
              r"(?:[a-z_]+\s*(?:in|=|:)?\s*(?=[\[\d.+-]|from|between))?"
_RANGE = re.compile(_RANGE_LEAD + r"(?:from\s+)?(" + _NUM + r")\s*(?:to|\.\.|\s-\s)\s*(" + _NUM + r")\b(.*)$"
                    r"|" + _RANGE_LEAD + r"between\s+(" + _NUM + r")\s+and\s+(" + _NUM + r")\b(.*)$"
                    r"|" + _RANGE_LEAD + r"\[\s*(" + _NUM + r")\s*,\s*(" + _NUM + r")\s*\](.+)$")  # "[a, b], 3 points"
_RANGE_WORDS = {"step", "steps", "of", "log", "scale", "logarithmic", "logarithmically", "spaced", "linear", "linearly", "uniform",
                "uniformly", "points", "point", "values", "value", "steps", "settings", "grid", "sweep", "on", "a",
                "with", "in", "total", "evenly", "equally", "geometric", "geometrically", "over", "range"}


def _range_values(raw: str, knob: Knob) -> list[str] | None:
    """A numeric range written as prose ("1e-3 to 1e-1, log scale, 5 points", "0.1 to 0.9, 5 values") as its
    values; None when the text is no range. Raises ValueError naming what cannot be read."""
    if knob.kind not in ("float", "int"):
        return None
    t = ascii_text(re.sub(r"(?<=\d)\s*[\u2013\u2014]\s*(?=[\d.])", " to ", clean_inline(raw)))  # "0.01–0.05"
    m = _RANGE.match(t)
    if not m:
        return None
    first, last, rest = next(m.groups()[i:i + 3] for i in (0, 3, 6) if m.groups()[i] is not None)
    lo, hi = float(first), float(last)
    words = set(re.findall(r"[a-z]+", re.sub(r"\d+", " ", rest)))
    unread = words - _RANGE_WORDS
    if unread:
        raise ValueError(f"range {raw!r}: cannot read {', '.join(sorted(unread))}")
    count = re.findall(r"(\d+)\s*(?:points?|values?|steps?|settings)", rest)
    step = re.findall(r"(?:in\s+)?steps?\s*(?:of|=|:)?\s*(" + _NUM + r")", rest)
    log = bool(words & {"log", "logarithmic", "logarithmically", "geometric", "geometrically"})
    if step and not log and float(step[0]) > 0:  # "0.1 to 0.9, step 0.2", "from 0.3 to 0.7 in steps of 0.2"
        span = (hi - lo) / float(step[0])
        if abs(span - round(span)) > 1e-6:
            raise ValueError(f"range {raw!r}: a step of {step[0]} does not reach {last} from {first}")
        n = int(round(span)) + 1
    elif count:
        n = int(count[0])
    elif log and lo > 0 and hi > 0 and float(f"{math.log10(hi / lo):.9g}").is_integer():
        n = int(round(abs(math.log10(hi / lo)))) + 1  # one point per decade
    else:
        raise ValueError(f"range {raw!r} gives no number of points (say e.g. '{first} to {last}, 5 points')")
    if n < 2 or (log and (lo <= 0 or hi <= 0)):
        raise ValueError(f"range {raw!r}: needs 2 or more points{' and positive ends for a log scale' if log else ''}")
    steps = [i / (n - 1) for i in range(n)]
    vals = [lo * (hi / lo) ** f for f in steps] if log else [lo + (hi - lo) * f for f in steps]
    out = [str(int(round(v))) if knob.kind == "int" else f"{float(f'{v:.3g}'):g}" for v in vals]
    return list(dict.fromkeys(out))


def expand_values(knob: Knob, values: Sequence[str], base: ExperimentConfig | None) -> list[str]:
    """The replacement values, with an inline list that does not parse as one value ("linear, 3-layer MLP,
    none", "16, 256, 1k", "0.1 or 0.5") split into its items when every item parses for the knob, and a
    range ("1e-3 to 1e-1, log scale, 5 points") written out as its points."""
    out: list[str] = []
    values = [v for raw in values for v in re.split(r"\s+(?:vs\.?|versus)\s+", raw) if v.strip()]  # never one value
    for raw in values:
        try:
            points = _range_values(raw, knob)
        except ValueError:
            points = None  # kept whole: parse_value says why it cannot be read
        if points:
            out += points
            continue
        try:
            parse_value(knob, raw, base)
            whole = True
        except ValueError:
            whole = False
        if whole and knob.kind not in ("choice", "arch", "bool", "methods") and knob.parse is None:
            out.append(raw)  # "crop, flip" is one augmentation policy
            continue
        if len(set(_ASSIGNMENT.findall(ascii_text(raw)))) > 1 or re.fullmatch(r"\s*[\[(].*[\])]\s*", raw):
            out.append(raw)  # "λ=0.05, δ=0.3", "[1, 10]": one setting of two things, not two values of one knob
            continue
        # "0.3 and 0.7" are two values; but methods joined by "and" are one combination ("KD and RKD"), while
        # "DKD, CRD, RKD" are three students to compare
        serial = knob.kind != "methods" or "," in raw  # "DKD, CRD and RKD": three; "KD and RKD": one combination
        joins = (r"\s*[,;]\s*|\s+or\s+|\s+/\s+" + (r"|\s+and\s+" if serial else "")
                 + (r"|(?<=\d)/(?=\d)" if knob.kind == "int" else ""))
        items = [i.strip() for i in re.split(joins, clean_inline(raw)) if i.strip()]
        parsed = []
        for item in items if len(items) > 1 else ():
            try:
                parsed.append("off" if _is_off_word(item) and knob.removable() else repr(parse_value(knob, item, base)))
            except ValueError:
                parsed = []
                break
        # items that name different values are a list ("linear, mlp3, none"); items naming one value twice are
        # not ("KD and CE weights: 1 / 1" is a pair of weights; a single value that parses stays whole)
        if parsed and len(set(parsed)) == len(parsed):
            out += items
        else:
            out.append(raw)
    return out


def _value_fit(knob: Knob, values: Sequence[str], base: ExperimentConfig) -> tuple[float, float, float]:
    """Fraction of the values that parse for the knob, fraction of those inside the knob's range, and fraction
    of the numbers inside its typical range (``Knob.typical``; 1 when it has none)."""
    values = expand_values(knob, values, base)
    if not values:
        return 1.0, 1.0, 1.0
    ok = inr = 0
    numbers: list[float] = []
    info = _info(knob)
    for raw in values:
        try:
            v = parse_value(knob, raw, base)
        except ValueError:
            if _is_off_word(raw) and knob.removable():
                ok += 1
                inr += 1
            continue
        ok += 1
        if isinstance(v, (int, float)) and not isinstance(v, bool) and info is not None:
            inr += int(info.in_range(float(v)))
            numbers.append(float(v))
        else:
            inr += 1
    usual = 1.0
    if knob.typical and numbers:
        lo, hi = knob.typical
        usual = sum(lo <= v <= hi for v in numbers) / len(numbers)
    return ok / len(values), (inr / ok if ok else 0.0), usual


def rank_knobs(ab: Ablation, scope: str, base: ExperimentConfig, *, top: int | None = None,
               values: bool = True) -> list[tuple[Knob, float, str]]:
    """Every knob with its score for this ablation, best first (see module doc for the factors; ``values``:
    whether the replacement values count, off to ask which knob the part alone names)."""
    idx = _knob_index()
    q, qw = weighted_tokens(ab.part)
    if not q:
        q, qw = weighted_tokens(ab.name)
    named = methods_named(ab.part) or methods_named(ab.name)
    both_stages = "teacher" in q and "student" in q
    # "ADD colour jitter for the contrastive views": an augmentation the part names is added to (removed from)
    # an augmentation knob, the contrastive views' unless the words say another
    ops = _find_phrases(ab.part, AUGMENT_NAMES) if ab.action in ("ADD", "REMOVE") else []
    # a distillation method the part names, replaced by values that each name methods: a swap of methods
    swapped = named if ab.action == "REPLACE" and ab.replacements and all(
        methods_named(v) for v in ab.replacements) else []
    out = []
    for k in KNOBS:
        s, phrase = idx.score(k.name, q, qw)
        if ops and k.kind == "augment":
            s, phrase = max(s, 2 * MIN_SCORE * (1.0 if k.name == "view_augment" else 0.7)), phrase or ops[0]
        if swapped and k.kind == "methods":  # "Vanilla KD in the student" -> "CTKD": the student's methods
            s, phrase = max(s, 2 * MIN_SCORE), phrase or swapped[0]
        if s <= 0:
            continue
        own = knob_method(k)
        if not (named and own in named):  # a method the part names brings its knobs whatever the plan's paper
            s *= 1.25 if k.scope == scope else (1.0 if k.scope == "common" else 0.35)
        if named and k.kind != "methods":
            # "PKT loss weight" is PKT's weight, not the intra-class loss weight
            s *= 1.4 if own in named else (0.6 if own is not None else 0.75)
        vocab = idx.vocab[k.name]
        if both_stages:
            # "epochs of teacher and student": the knob for both stages, not one stage's
            if ("teacher" in vocab) != ("student" in vocab):
                s *= 0.7
        elif ("teacher" in q or "student" in q) and k.stage == "both" and k.also:
            # "learning rate of the student": student.lr, not the knob that sets both stages
            s *= 0.6
        elif ("teacher" in q) != ("student" in q) and k.kind == "pair" and not set(q) & {"pair", "combination", "combine"}:
            # "Teacher model: ResNet56 -> ResNet20" changes the teacher; it names no student
            s *= 0.5
        if not _requires_ok(k, base)[0] and not (ab.action == "ADD" and _addable_requirement(k, base)):
            s *= 0.6
        if ab.action == "REMOVE":
            s *= (1.1 if k.kind == "bool" else 1.0) if k.removable() else 0.4
        elif ab.action == "ADD":
            if k.addable():
                s *= 1.1 if k.kind in ("bool", "methods", "augment") else 1.0
            elif not ab.replacements:
                s *= 0.4
        if values and (ab.action == "REPLACE" or (ab.action == "ADD" and ab.replacements and k.kind not in ("bool", "methods", "augment"))):
            p, r, usual = _value_fit(k, ab.replacements, base)
            s *= (0.3 + 0.7 * p) * (0.75 + 0.25 * r) * (0.4 + 0.6 * usual)
        out.append((k, s, phrase))
    out.sort(key=lambda x: -x[1])
    return out[:top] if top else out


# ------------------------------------------------------------------------------------------ values
_OFF_WORDS = {"none", "off", "no", "disabled", "disable", "without", "removed", "remove", "absent", "inactive", "drop", "dropped", "nothing"}
_TRUE_WORDS = {"true", "on", "yes", "enabled", "enable", "with", "use", "used", "active", "present", "keep", "kept", "1"}
_FALSE_WORDS = _OFF_WORDS | {"false", "0"}
_FILLER = {"default", "baseline", "original", "paper", "epoch", "epochs", "sample", "samples", "entries", "entry", "negatives",
           "negative", "keys", "key", "per", "class", "classes", "items", "elements", "dims", "dim", "dimensional", "d",
           "only", "value", "setting", "set", "to", "of", "the", "with", "a", "approximately", "approx", "about", "eg", "e", "g",
           "fixed", "ie", "i", "x", "ours", "proposed", "used", "in", "is", "as", "and", "queue", "size", "weight",
           "frozen", "freeze", "no", "momentum", "update", "updates", "standard", "typical", "higher", "lower", "larger",
           "smaller", "small", "large", "medium", "very", "strong", "weak", "moderate", "aggressive", "light", "heavy",
           "either", "we", "try", "tried", "test", "tested", "are", "values", "using", "both"}


def _is_off_word(raw: str) -> bool:
    words = set(re.findall(r"[a-z]+", ascii_text(raw)))
    return bool(words & _OFF_WORDS) and not re.search(r"\d", raw)


def _info(knob: Knob) -> FieldInfo | None:
    try:
        return field_info(knob.path)
    except KeyError:
        return None


def _alias_words(knob: Knob) -> set[str]:
    words = set()
    for a in knob.aliases + (knob.name,):
        words.update(re.findall(r"[a-z]+", a.lower()))
    return words | {"lambda", "delta", "tau", "rho", "alpha", "beta", "gamma"}


_ASSIGNMENT = re.compile(r"([a-z][a-z_]*)\s*(?:=|:)\s*" + _NUM)
_MULTIPLIER = re.compile(r"(?<![\w.])(" + _NUM + r")\s*(?:x|times)(?![a-z0-9])")
_SCALE_WORDS = {"half": 0.5, "halved": 0.5, "double": 2.0, "doubled": 2.0, "twice": 2.0, "quarter": 0.25,
                "triple": 3.0, "tripled": 3.0}
_SMALLER = {"smaller", "fewer", "less", "lower", "shorter", "weaker", "reduced", "decreased"}
_RELATIVE_FILLER = {"larger", "bigger", "more", "higher", "greater", "longer", "stronger", "increased", "the", "of",
                    "default", "base", "baseline", "original", "value", "as", "than", "a", "an", "its", "current",
                    "many", "long", "much"}


def _relative_number(t: str, knob: Knob, base: ExperimentConfig | None) -> float | None:
    """A value written relative to the base's ("4x larger", "10 times smaller", "half the default", "double"),
    as a number; None when the text is not such a phrase. Raises ValueError when it is one but the base has
    no number to scale."""
    words = set(re.findall(r"[a-z]+", re.sub(_NUM, " ", t)))
    m = _MULTIPLIER.search(t)
    fraction = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s+(.*)", t)
    signed = re.fullmatch(r"\s*([+-])\s*(\d+(?:\.\d+)?)\s*%\s*", t)
    if signed:  # "+50%", "-50%": a change of the base's value by that share
        factor, rest = 1.0 + (1 if signed[1] == "+" else -1) * float(signed[2]) / 100.0, set()
    elif fraction and int(fraction[2]) and words & {"default", "base", "baseline", "original", "current"}:
        factor, rest = int(fraction[1]) / int(fraction[2]), words  # "1/4 of the default"
    elif m and not _MULTIPLIER.search(t, m.end()) and len(re.findall(_NUM, t)) == 1:
        factor = float(m[1])
        if words & _SMALLER:
            factor = 1.0 / factor
        rest = words - {"x", "times"} - _SMALLER
    else:
        scale = [w for w in words if w in _SCALE_WORDS]
        if len(scale) != 1 or re.search(r"\d", t):
            return None
        factor, rest = _SCALE_WORDS[scale[0]], words - {scale[0]}
    if rest - _RELATIVE_FILLER - _alias_words(knob):
        return None
    current = effective_base_value(knob, base) if base is not None else None
    if not isinstance(current, (int, float)) or isinstance(current, bool):
        raise ValueError(f"{t.strip()!r} is relative to the base's {knob.path}, which has no number here; give the value")
    if knob.kind == "int":
        return float(max(1, round(current * factor)))  # "3x smaller" batch of 128: 43
    return float(f"{current * factor:.12g}")  # 0.1 * 3 is 0.3, not 0.30000000000000004


_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")


def _unicode_powers(text: str) -> str:
    """Powers of ten as typeset ("5 × 10⁻⁴", "2·10⁻²") in the ASCII form read below ("5 x 10^-4")."""
    text = re.sub(r"10([⁻⁺]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+)", lambda m: "10^" + m[1].translate(_SUPERSCRIPT), text)
    return re.sub(r"\s*[×·⋅]\s*(?=10\^)", " x ", text)


def _parse_number(text: str, knob: Knob, base: ExperimentConfig | None) -> int | float:
    t = ascii_text(_unicode_powers(text))
    labels = _ASSIGNMENT.findall(t)
    assigned = sorted(set(labels))
    if len(labels) > 1 and len(assigned) == 1:  # "δ = 0.3 and δ = 0.7": a list, which expand_values splits
        raise ValueError(f"{text!r} gives {len(labels)} values of {assigned[0]}, not one")
    if len(assigned) > 1:
        names = ", ".join(assigned)
        raise ValueError(f"{text!r} sets {len(assigned)} things at once ({names}); an ablation varies one knob: split "
                         "it into one ablation per knob, or write the combinations as a grid for `kdlab sweep` "
                         "(docs/ABLATION.md, 'Grid files')")
    outside = re.sub(r"\([^)]*\)|\[[^\]]*\]", " ", t)
    inside = [a or b for a, b in re.findall(r"\(([^)]*)\)|\[([^\]]*)\]", t)]
    numbered = [x for x in inside if re.search(r"\d", x)]
    if len(numbered) == 1 and _MULTIPLIER.search(outside):
        t = numbered[0]  # "4x larger (256)": the number in parentheses is the value, the words say how it relates
    elif re.search(r"\d", outside):
        t = outside  # "0.5 (default)": the number outside the parentheses is the value
    else:
        if len(numbered) == 1 and outside.strip():
            t = numbered[0]  # "last stage (-1)": the words describe the number in parentheses
    relative = _relative_number(t, knob, base)
    if relative is not None:
        t = repr(relative)
    t = re.sub(r"(\d+(?:\.\d+)?)\s*[x*]\s*10\s*\^\s*([-+]?\d+)", lambda m: repr(float(m[1]) * 10 ** int(m[2])), t)
    t = re.sub(r"\b10\s*\^\s*\{?([-+]?\d+)\}?", lambda m: repr(10.0 ** int(m[1])), t)
    t = re.sub(r"\b2\s*\^\s*\{?(\d+)\}?", lambda m: str(2 ** int(m[1])), t)
    t = re.sub(r"\bzero\b", "0", t)
    if knob.kind != "int":  # "1/100" is 0.01 ("1 / 1", spaced, is two values); on an integer knob "32/128" is a list
        t = re.sub(r"(?<![\w.])(\d+)/(\d+)(?![\w.])", lambda m: repr(int(m[1]) / int(m[2])) if int(m[2]) else m[0], t)
    if "=" in t:
        head, t = t.rsplit("=", 1)
        if re.search(r"(?<![\w.])" + _NUM + r"(?![\w.])", head):  # "0.01 (weak) vs lambda = 0.1": two numbers
            raise ValueError(f"expected one number, found more in {text!r}")
    elif re.search(r":\s*" + _NUM, t):
        if re.fullmatch(r"\s*" + _NUM + r"\s*:\s*" + _NUM + r"\s*", t):  # "1:4": two numbers in proportion
            raise ValueError(f"{text!r} is a ratio of two numbers, not a value of {knob.path}: a ratio of two weights "
                             "sets two knobs (write the pairs as a grid for `kdlab sweep`), else give the value itself")
        t = t.rsplit(":", 1)[1]
    matches = list(re.finditer(r"(?<![\w.])(" + _NUM + r")(\s*%|\s*k\b)?", t))
    _range_values(text, knob)  # a range that cannot be written out says why
    if len(matches) != 1:
        raise ValueError(f"expected one number, found {len(matches) or 'none'} in {text!r}")
    m = matches[0]
    rest = (t[: m.start()] + " " + t[m.end():]).lower()
    words = set(re.findall(r"[a-z]+", rest))
    extra = words - _FILLER - _alias_words(knob)
    if extra:
        raise ValueError(f"{text!r} is not a plain number (unexpected {', '.join(sorted(extra))})")
    v = float(m.group(1))
    suffix = (m.group(2) or "").strip()
    info = _info(knob)
    if suffix == "%":
        if knob.name == "subset" and base is not None:
            ref = base.data.subset or TRAIN_SIZES.get(base.data.name)
            if ref is None:
                raise ValueError(f"a percentage of the training set needs data.subset in the base ({base.data.name} size unknown)")
            v = round(ref * v / 100.0)
        elif info is not None and info.hi is not None and info.hi <= 1:
            v = v / 100.0
        else:
            raise ValueError(f"a percentage makes no sense for {knob.path}")
    elif suffix == "k":
        pow2 = v * 1024
        v = pow2 if pow2 == int(pow2) and int(pow2) & (int(pow2) - 1) == 0 else v * 1000
    kind = knob.kind if knob.kind in ("int", "float") else (info.kind if info else "float")
    if kind == "int":
        if v != int(v):
            raise ValueError(f"{knob.path} takes an integer, got {text!r}")
        return int(v)
    return float(v)


def _parse_bool(text: str) -> bool:
    t = ascii_text(text).strip()
    if re.search(r"\d", t) and t not in ("0", "1"):
        raise ValueError(f"{text!r} is a number, not on/off")
    words = set(re.findall(r"[a-z0-9]+", t))
    if words & {"non", "not"} and words & {"enabled", "on", "used", "use", "active", "applied", "apply"}:
        return False
    if words & _FALSE_WORDS:
        return False
    if words & _TRUE_WORDS:
        return True
    raise ValueError(f"{text!r} is not on/off (say on, off, true, false, with, without)")


@lru_cache(maxsize=None)
def _choice_index(knob_name: str, items: tuple) -> PhraseIndex:
    return PhraseIndex({c: tuple(ps) + (str(c),) for c, ps in items})


def _parse_choice(text: str, knob: Knob) -> str:
    choices = dict(knob.choices) or {c: (str(c),) for c in (_info(knob).choices if _info(knob) else ())}
    t = ascii_text(text).strip()
    compact = re.sub(r"[^a-z0-9]", "", t)
    for c in choices:
        if compact == re.sub(r"[^a-z0-9]", "", str(c).lower()):
            return c
    named = _find_phrases(text, {c: tuple(ps) for c, ps in choices.items()})
    if len(named) == 1:  # "fixed-size teacher queue (CoCoRD)", "full dataset memory bank"
        return named[0]
    if len(named) > 1:
        raise ValueError(f"{text!r} names more than one of {', '.join(map(str, choices))}: {', '.join(map(str, named))}")
    idx = _choice_index(knob.name, tuple((c, tuple(ps)) for c, ps in choices.items()))
    ranked = idx.rank(text)
    if ranked and ranked[0][1] > 0.5 and (len(ranked) == 1 or ranked[0][1] > 1.15 * ranked[1][1]):
        return ranked[0][0]
    raise ValueError(f"{text!r} is none of {', '.join(map(str, choices))}")


def unicodedata_lower(text: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFKC", text).lower()


def _find_phrases(text: str, table: dict[str, tuple[str, ...]]) -> list[str]:
    t = ascii_text(text)
    found: list[tuple[int, str]] = []
    mask = [False] * len(t)
    phrases = sorted(((p, name) for name, ps in table.items() for p in ps + (name,)), key=lambda x: -len(x[0]))
    for phrase, name in phrases:
        pat = r"(?<![a-z0-9])" + r"[\s_\-]*".join(re.escape(w) for w in re.split(r"[\s_\-]+", phrase.lower())) + r"(?![a-z0-9])"
        for m in re.finditer(pat, t):
            if any(mask[m.start(): m.end()]):
                continue
            for i in range(m.start(), m.end()):
                mask[i] = True
            found.append((m.start(), name))
    out: list[str] = []
    for _, name in sorted(found):
        if name not in out:
            out.append(name)
    return out


def _parse_augment(text: str) -> list[str] | None:
    t = ascii_text(text).strip()
    ops = _find_phrases(text, AUGMENT_NAMES)
    if ops:
        return ops
    if re.fullmatch(r"(none|no( data)? augmentations?|identity|nothing|\[\]|off|disabled?|no views? augmentation)", t):
        return []
    if re.search(r"\b(default|same as (the )?train(ing)?|standard)\b", t):
        return None
    raise ValueError(f"{text!r} names no augmentation (known: {', '.join(AUGMENT_NAMES)})")


_METHOD_EXTRA = {"kd": ("ours", "vanilla", "baseline kd", "standard kd")}


def _parse_methods(text: str, *, allow_empty: bool = True) -> list[str]:
    table = {k: v + _METHOD_EXTRA.get(k, ()) for k, v in METHOD_NAMES.items()}
    table["at"] = tuple(p for p in table["at"] if p != "at")  # bare "at" is an English word
    found = _find_phrases(text, table)
    if re.search(r"(?<![A-Za-z])AT(?![A-Za-z])", text) and "at" not in found:
        found.append("at")
    if found:
        return found
    t = ascii_text(text).strip()
    if allow_empty and re.fullmatch(r"(none|no distillation|no kd|ce only|crossentropy only|cross[\s-]*entropy only|"
                                    r"without distillation|student alone|\[\]|label only|labels only)", t):
        return []
    raise ValueError(f"{text!r} names no distillation method (known: {', '.join(METHOD_NAMES)})")


def _arch_table() -> dict[str, str]:
    from kdlab.models import list_models

    return {re.sub(r"[^a-z0-9]", "", n.lower()): n for n in list_models()}


def _arch_text(text: str) -> str:
    t = ascii_text(text)
    t = re.sub(r"wide\s*-?\s*res\s*-?\s*net", "wrn", t)
    t = re.sub(r"shuffle\s*-?\s*net", "shuffle", t)
    t = re.sub(r"mobile\s*-?\s*net", "mobilenet", t)
    return re.sub(r"res\s*-?\s*net", "resnet", t)


def _find_archs(text: str) -> list[tuple[int, str]]:
    """(position in _arch_text(text), model name) of every architecture named in the text."""
    t = _arch_text(text)
    keep = [(i, c) for i, c in enumerate(t) if c.isalnum()]
    compact = "".join(c for _, c in keep)
    table = _arch_table()
    mask = [False] * len(compact)
    found = []
    for key in sorted(table, key=len, reverse=True):
        start = 0
        while True:
            j = compact.find(key, start)
            if j < 0:
                break
            start = j + 1
            end = j + len(key)
            if any(mask[j:end]) or (end < len(compact) and (compact[end].isdigit() or (key[-1].isdigit() and compact[end] == "x" and end + 1 < len(compact) and compact[end + 1].isdigit()))):
                continue
            for i in range(j, end):
                mask[i] = True
            found.append((keep[j][0], table[key]))
    return sorted(found)


def _parse_arch(text: str) -> str:
    found = _find_archs(text)
    names = {n for _, n in found}
    if len(names) != 1:
        from kdlab.models import list_models

        raise ValueError(
            f"{text!r} names {'no' if not names else 'more than one'} architecture (known: {', '.join(list_models())})"
        )
    return found[0][1]


def _states_defaults(text: str, base: ExperimentConfig) -> bool:
    """Whether every ``name = number`` a method's value states is that one method's setting at its value on
    ``base`` (case aside: "DKD (α=1, β=8, T=4)")."""
    try:
        methods = _parse_methods(text, allow_empty=False)
    except ValueError:
        return False
    block = getattr(base.distill, methods[0], None) if len(methods) == 1 else None
    if block is None:
        return False
    fields = {f.lower(): f for f in type(block).model_fields}
    pairs = re.findall(r"([a-z][a-z_]*)\s*(?:=|:)\s*(" + _NUM + r")", ascii_text(text))
    return bool(pairs) and all(n.lower() in fields and getattr(block, fields[n.lower()]) == float(v) for n, v in pairs)


def _arch_of_depth(depth: int, knob: Knob, base: ExperimentConfig | None) -> str:
    """A depth given for an architecture ("Teacher depth: 20, 32, 56"): the base network's family at that depth
    (resnet14 -> resnet20, resnet8x4 -> resnet32x4, wrn_40_2 -> wrn_16_2)."""
    from kdlab.models import list_models

    current = get_path(base, knob.path) if base is not None else None
    family = re.fullmatch(r"([A-Za-z_]+?)(\d+)(\D.*)?", str(current or ""))
    if family is None:
        raise ValueError(f"depth {depth} needs a base architecture of a family with depths (base: {current})")
    name = f"{family[1]}{depth}{family[3] or ''}"
    if name not in list_models():
        same = [m for m in list_models() if re.fullmatch(re.escape(family[1]) + r"\d+" + re.escape(family[3] or ""), m)]
        raise ValueError(f"depth {depth} of the base's {current} would be {name}, which kdlab does not have "
                         f"(that family: {', '.join(same)})")
    return name


def _parse_pair(text: str) -> tuple[str, str]:
    found = _find_archs(text)
    if len(found) != 2:
        raise ValueError(f"{text!r} should name a teacher and a student architecture, e.g. 'resnet32x4 -> resnet8x4'")
    t = _arch_text(text)
    roles = [(m.start(), m.end(), m.group(1)) for m in re.finditer(r"(teacher|student)s?", t)]

    def role(pos: int, name: str) -> str | None:
        end = pos + len(name)
        best = min(roles, key=lambda r: min(abs(pos - r[1]), abs(r[0] - end)), default=None)
        return best[2] if best else None

    (p0, a0), (p1, a1) = found
    r0, r1 = role(p0, a0), role(p1, a1)
    if r0 == "student" and r1 != "student":
        return a1, a0
    return a0, a1  # teacher first, as in "resnet32x4 -> resnet8x4"


#: words that make a value "the base's own" ("the default", "baseline (current)", "as in the paper")
_BASE_WORDS = {"default", "baseline", "current", "original", "unchanged", "reference", "base"}
_BASE_FILLER = {"the", "value", "setting", "config", "as", "in", "paper", "s", "our", "kdlab", "is", "keep", "kept"}


def _names_the_base_value(text: str) -> bool:
    words = set(re.findall(r"[a-z]+", ascii_text(text)))
    return bool(words & _BASE_WORDS) and words <= _BASE_WORDS | _BASE_FILLER and not re.search(r"\d", text)


def _without_remarks(text: str) -> str:
    """The value without its parenthetical or bracketed remarks ("queue (CoCoRD)", "linear [current]")."""
    return re.sub(r"\s+", " ", re.sub(r"\([^)]*\)|\[[^\]]*\]", " ", text)).strip(" ,;:-")


#: "2 → 4", "ResNet8 -> ResNet20": a change from the first value to the second (teacher -> student for a pair)
_ARROW = re.compile(r"\s*(?:->|=>|\u2192|\u21d2|\u27f6|\u2794|\u279c|\u27f9)\s*")


def _reads(knob: Knob, text: str, base: ExperimentConfig | None) -> bool:
    try:
        parse_value(knob, text, base)
    except ValueError:
        return False
    return bool(text.strip())


def _transition(knob: Knob, text: str, before: str, after: str, base: ExperimentConfig | None) -> Any:
    """"2 → 4" on a one-value knob (both ends read as its values): the value after the arrow, when the one
    before it is the base's (else the plan and the base disagree on where the change starts, which is an error
    that names both)."""
    new, old = parse_value(knob, after, base), parse_value(knob, before, base)
    current = effective_base_value(knob, base) if base is not None else None
    if current is not None and old != current:
        raise ValueError(f"{text!r} reads as a change from {format_value(old)} to {format_value(new)}, but the base's "
                         f"{knob.path} is {format_value(current)}; give the new value alone (or another --base)")
    return new


def parse_value(knob: Knob, raw: str, base: ExperimentConfig | None = None) -> Any:
    """Parse one replacement text to the knob's type (ValueError with a readable message if it does not).

    Prose is read too: "the default" / "baseline (current)" is the base's value; a remark in parentheses or
    brackets (a method name, "current", "ours") is dropped when the value does not read with it."""
    text = repair_mojibake(clean_inline(raw))
    if base is not None and _names_the_base_value(text):
        value = effective_base_value(knob, base)
        if value is not None:
            return tuple(value) if knob.kind == "pair" else value
    ends = _ARROW.split(text)
    if len(ends) == 2 and knob.kind != "pair" and all(_reads(knob, e, base) for e in ends):
        return _transition(knob, text, ends[0], ends[1], base)  # else the arrow is prose ("student → teacher only")
    m = re.fullmatch(r"(.+?)\s+instead\s+of\s+(.+)", text, re.I)
    if m and knob.kind != "pair":  # "0.7 instead of 0.5"
        return _transition(knob, text, m[2], m[1], base)
    m = re.fullmatch(r"(?:.*?\s)?from\s+(\S+)\s+to\s+(\S+)", text, re.I)
    if m and base is not None and knob.kind != "pair":  # "increase δ from 0.5 to 0.7": a change, when it starts at the base
        try:
            starts_at_base = parse_value(knob, m[1], base) == effective_base_value(knob, base)
        except ValueError:
            starts_at_base = False
        if starts_at_base:
            return parse_value(knob, m[2], base)

    settings = list(dict.fromkeys(_ASSIGNMENT.findall(ascii_text(text)))) if knob.kind in ("choice", "methods") else []
    if settings and knob.kind == "methods" and base is not None and _states_defaults(text, base):
        settings = []  # "DKD (α=1, β=8, T=4)": DKD's own defaults, said for the reader
    if settings:  # "ratio (target r = 0.5)": the choice would run at its default r, not the plan's
        raise ValueError(f"{text!r} also sets {', '.join(settings)}: an ablation varies one knob; choose here and "
                         f"vary {', '.join(settings)} in an ablation of its own")

    def generic(t: str) -> Any:
        return _parse_by_kind(t, knob, base)

    def read(t: str) -> Any:
        return knob.parse(t, generic) if knob.parse is not None else generic(t)

    try:
        return read(text)
    except ValueError as exc:
        bare = _without_remarks(text)
        if bare and bare != text:
            try:
                return read(bare)
            except ValueError:
                pass
        raise exc


def _parse_by_kind(text: str, knob: Knob, base: ExperimentConfig | None) -> Any:
    kind = knob.kind
    if kind in ("float", "int"):
        return _parse_number(text, knob, base)
    if kind == "bool":
        return _parse_bool(text)
    if kind == "choice":
        return _parse_choice(text, knob)
    if kind == "augment":
        return _parse_augment(text)
    if kind == "methods":
        return _parse_methods(text)
    if kind == "arch":
        same = re.search(r"\bsame\b.*\b(teacher|student)\b", ascii_text(text).lower())
        if same and base is not None and not _find_archs(text):  # "same as the student": self-distillation
            return getattr(base, same[1]).arch
        depth = re.fullmatch(r"\s*(?:depth\s*)?(\d+)\s*(?:-?\s*layers?)?\s*", ascii_text(text).lower())
        return _arch_of_depth(int(depth[1]), knob, base) if depth else _parse_arch(text)
    if kind == "pair":
        return _parse_pair(text)
    return text


# ------------------------------------------------------------------------------------------ variants
def _effective_augment(base: ExperimentConfig, path: str) -> list[str]:
    cur = get_path(base, path)
    if cur is None and path == "data.view_augment":
        cur = base.data.augment
    if cur is None:
        try:
            from kdlab.data.augment import default_policy

            cur = default_policy(base.data.name)
        except Exception:  # the data module may be absent in stripped installs
            cur = ["crop"] if base.data.name == "digits" else ["crop", "flip"]
    return list(cur)




def _companions(overrides: dict[str, Any], base: ExperimentConfig) -> dict[str, Any]:
    """Settings that must move with a change so the variant means what the plan says: the rules the methods
    (their plugins) and the knobs own, each given the plan's overrides and the base."""
    out = dict(overrides)
    hooks = {id(h): h for h in [s.companions for s in registry.all_specs()] + [k.companions for k in KNOBS] if h}
    for hook in hooks.values():
        for key, value in hook(overrides, base).items():
            out.setdefault(key, value)
    return out


def _overrides_for(knob: Knob, value: Any) -> dict[str, Any]:
    if knob.kind == "pair":
        return {"teacher.arch": value[0], "student.arch": value[1]}
    if knob.to_overrides is not None:
        return knob.to_overrides(value)
    return {p: copy.deepcopy(value) for p in knob.paths}


def _off_overrides(knob: Knob) -> dict[str, Any]:
    if knob.off_path:
        return {knob.off_path: copy.deepcopy(knob.off_value)}
    return {p: copy.deepcopy(knob.off_value) for p in knob.paths}


def _on_overrides(knob: Knob) -> dict[str, Any]:
    if knob.on_path:
        return {knob.on_path: copy.deepcopy(knob.on_value)}
    return {p: copy.deepcopy(knob.on_value) for p in knob.paths}


def _build(base_tree: dict, overrides: dict[str, Any]) -> ExperimentConfig:
    return build_config(base_tree, list(overrides.items()))


_WEIGHT = re.compile(r"(?:\b([a-z][a-z-]*)\s+)?\b(?:weight(?:ed)?|coefficient|lambda|w)\s*(?:of|=|:|by)?\s*("
                     + _NUM + r")(?![\w.])")
#: words before "weight" that leave it the method's overall weight ("loss weight 2", "with weight 2")
_OVERALL_WORDS = {"loss", "overall", "total", "global", "with", "its", "the", "a", "an", "at", "and", "term", "method"}


def _stated_settings(text: str, method: str | None, base: ExperimentConfig) -> tuple[float | None, dict[str, Any], list[str]]:
    """What an ADD states for the method it adds: its overall weight ("RKD loss (weight 2.0)", "CRD with λ = 0.8"),
    and as overrides the weights of its own terms ("RKD (distance weight 25, angle weight 50)": ``distance_weight``,
    ``angle_weight``) and its other settings ("hint layer 2"), with an error for each one the method does not have."""
    overall: float | None = None
    terms: dict[str, float] = {}
    errors: list[str] = []
    block = getattr(base.distill, method, None) if method else None
    fields = [f for f in type(block).model_fields if f != "weight"] if block is not None else []
    t = ascii_text(text).lower()
    for m in _WEIGHT.finditer(t):
        word, value = m[1], float(m[2])
        if word is None or word in _OVERALL_WORDS or methods_named(word):
            overall = value
            continue
        field = next((f for f in fields if word.split("-")[0] in f.split("_")), None)
        if field is None:
            errors.append(f"{m[0]!r}: {method or 'the added method'} has no {word} weight (its settings: "
                          f"{', '.join(fields) or 'none'})")
        else:
            terms[f"distill.{method}.{field}"] = value
    # other settings of the method ("hint layer 2", "T = 4"): a field whose name has all of the words
    for m in re.finditer(r"([a-z][a-z_ ]*?)\s*(?:=|:)?\s*(" + _NUM + r")(?![\w.])", _WEIGHT.sub(" ", t)):
        words = [w for w in re.split(r"[\s_]+", m[1]) if w and w not in _OVERALL_WORDS and not methods_named(w)]
        if not words or method is None:
            continue
        field = next((f for f in fields if all(w in f.lower().split("_") for w in words)), None)
        if field is None:
            errors.append(f"{m[0].strip()!r}: {method} has no setting {' '.join(words)!r} (its settings: weight, "
                          f"{', '.join(fields)})")
        else:
            terms[f"distill.{method}.{field}"] = int(float(m[2])) if float(m[2]).is_integer() and \
                isinstance(getattr(block, field), int) else float(m[2])
    return overall, terms, errors


def _zero_means_off(knob: Knob, raw: str, base: ExperimentConfig) -> bool:
    """A size of 0 on a knob that cannot be 0 but whose REMOVE switches a component off (the intra-class cache's
    size: 0 entries is no cache)."""
    info = _info(knob)
    if knob.kind != "int" or not knob.off_path or knob.off_value is NOTHING or info is None or info.in_range(0):
        return False
    try:
        return _parse_number(raw, knob, base) == 0
    except ValueError:
        return False


def _switch_setting(ab: Ablation, knob: Knob, base: ExperimentConfig) -> Knob | None:
    """For a REPLACE of an on/off knob whose values are numbers other than on/off ("Per-class cache: 0, 128"): the
    numeric knob that the switch turns off (the cache's size), when every value reads as one of its values."""
    if knob.kind != "bool" or ab.action != "REPLACE" or not make_variants(ab, knob, base)[1]:
        return None
    for k in KNOBS:
        if k.off_path == knob.path and k.kind in ("int", "float") and not make_variants(ab, k, base)[1]:
            return k
    return None


def make_variants(ab: Ablation, knob: Knob, base: ExperimentConfig,
                  added: dict[str, Any] | None = None) -> tuple[list[Variant], list[str]]:
    """The variants of one ablation on the base, and the errors (empty when all is well). ``added``: overrides
    every variant carries (the component an ADD needs, e.g. the distiller whose knob it sets)."""
    errors: list[str] = []
    specs: list[tuple[str, Any, str, dict[str, Any]]] = []  # (label, value, raw, overrides)
    base_tree = base.model_dump(mode="json")

    def named_in_part(parser) -> list[str]:
        for text in list(ab.replacements) + [ab.part, ab.name]:
            try:
                found = parser(text)
            except ValueError:
                continue
            if found:
                return found
        return []

    if ab.action == "REMOVE":
        if knob.kind == "methods":
            named = named_in_part(lambda s: _parse_methods(s, allow_empty=False))
            cur = list(base.distill.methods)
            if named:
                missing = [m for m in named if m not in cur]
                if len(missing) == len(named):
                    errors.append(f"REMOVE {', '.join(named)}: not among the base's distill.methods {cur}")
                value = [m for m in cur if m not in named]
                specs.append((f"-{'-'.join(n for n in named if n in cur)}", f"-{'-'.join(named)}", "", {knob.path: value}))
            else:
                specs.append(("no distillation", "removed", "", {knob.path: []}))
        elif knob.kind == "augment":  # on every path of the knob, each from its own current list
            named = named_in_part(lambda s: _find_phrases(s, AUGMENT_NAMES))
            ov = {p: [o for o in _effective_augment(base, p) if o not in named] if named else [] for p in knob.paths}
            label = f"-{'-'.join(named)}" if named else "no augmentation"
            specs.append((label, label if named else "removed", "", ov))
        elif weighted_method(knob) in base.distill.methods:
            # "REMOVE the KD loss" read as kd.weight: take KD out of the methods, so the student's CE weight is
            # what it is without KD (a zero weight would keep KD's CE weight, 0.1, and train CE at a tenth)
            method = weighted_method(knob)
            specs.append(("removed", "removed", "", {"distill.methods": [m for m in base.distill.methods if m != method]}))
        elif knob.removable():
            ov = _off_overrides(knob) if knob.off_value is not NOTHING else {knob.path: False}
            if knob.path == "objective.kind" and _KEEP_VIEWS.search(ascii_text(f"{ab.part} {ab.name}").lower()):
                ov["objective.views"] = base.teacher_views()  # "... (the two views are kept for CE)"
            specs.append(("removed", "removed", "", ov))
        else:
            errors.append(f"REMOVE has no meaning for {knob.name} ({knob.path}): it has no off value; use REPLACE with values")
    elif ab.action == "ADD" and (knob.kind in ("methods", "augment", "bool") or not ab.replacements):
        if knob.kind in ("methods", "augment"):
            parser = (lambda s: _parse_methods(s, allow_empty=False)) if knob.kind == "methods" else (lambda s: _find_phrases(s, AUGMENT_NAMES))
            cur = list(base.distill.methods) if knob.kind == "methods" else _effective_augment(base, knob.path)
            groups: list[tuple[str, list[str]]] = []
            for raw in ab.replacements:
                try:
                    names = parser(raw)
                except ValueError:
                    names = []
                if not names and knob.kind == "methods" and len(named_in_part(parser)) == 1:
                    names = named_in_part(parser)  # "ADD FitNet hint loss" with "hint layer 2, weight 100"
                if names:
                    groups.append((raw, names))
                else:
                    errors.append(f"ADD value {raw!r}: names no {'distillation method' if knob.kind == 'methods' else 'augmentation'}")
            if not ab.replacements:
                names = named_in_part(parser)
                if names:
                    groups.append(("", names))
                else:
                    errors.append(f"ADD on {knob.name}: the part names no {'method' if knob.kind == 'methods' else 'augmentation'} to add; list it under Replacement")
            for raw, names in groups:
                label = "+" + "+".join([n for n in names if n not in cur] or names)
                if knob.kind == "methods":
                    ov = {knob.path: cur + [n for n in names if n not in cur]}
                    added_names = [n for n in names if n not in cur]
                    one = added_names[0] if len(added_names) == 1 else None
                    weight, terms, werr = _stated_settings(raw or f"{ab.part} {ab.name}", one, base)
                    errors += werr
                    if one:  # "ADD RKD (weight 2.0)": at that weight; "(distance weight 25)": that term's weight
                        ov.update(terms)
                        if weight is not None:
                            ov[f"distill.{one}.weight"] = weight
                            label += f" (weight {format_value(weight)})"
                    elif weight is not None or terms:
                        errors.append(f"ADD {', '.join(added_names)} with a weight: name one method per ablation to "
                                      f"give it a weight")
                else:
                    ov = {p: have + [n for n in names if n not in have]
                          for p, have in ((p, _effective_augment(base, p)) for p in knob.paths)}
                specs.append((label, label, raw, ov))
        elif knob.kind == "bool":
            ov = _on_overrides(knob) if knob.on_value is not NOTHING else {knob.path: True}
            specs.append(("added", "added", "", ov))
        elif knob.kind == "choice" and len(chosen := [c for c in _find_phrases(f"{ab.part} {ab.name}", dict(knob.choices))
                                                      if c != knob.off_value]) == 1:
            # "ADD ratio-based adaptive λ": the choice the part names, not the knob's default ADD
            specs.append((f"added ({format_value(chosen[0])})", chosen[0], "", _overrides_for(knob, chosen[0])))
        elif knob.on_value is not NOTHING:
            ov = _on_overrides(knob)
            specs.append((f"added ({format_value(knob.on_value)})", knob.on_value, "", ov))
        else:
            errors.append(f"ADD on {knob.name} ({knob.path}) needs values under Replacement (it has no 'on' value)")
    else:  # REPLACE (or ADD with values on a value knob)
        for raw in expand_values(knob, ab.replacements, base):
            if _zero_means_off(knob, raw, base):
                specs.append(("removed", "removed", raw, _off_overrides(knob)))
                continue
            try:
                v = parse_value(knob, raw, base)
            except ValueError as exc:
                if _is_off_word(raw) and knob.removable() and knob.kind not in ("choice",):
                    ov = _off_overrides(knob) if knob.off_value is not NOTHING else {knob.path: False}
                    specs.append(("removed", "removed", raw, ov))
                    continue
                errors.append(f"value {raw!r} for {knob.name} ({knob.path}): {exc}")
                continue
            extra, settings = _value_settings(raw, knob)
            if extra:
                errors.append(f"value {raw!r} for {knob.name} also sets {extra}: an ablation varies one knob; give "
                              "that setting an ablation of its own, or write the combinations as a grid for `kdlab sweep`")
                continue
            if knob.name == "subset" and _PER_CLASS.search(ascii_text(f"{ab.part} {ab.name} {raw}")):
                classes = num_classes(base)  # the subset is stratified: k per class is k x classes
                if classes is None:
                    errors.append(f"value {raw!r} per class: the number of classes of {base.data.name} is unknown; "
                                  "give the total number of training images")
                    continue
                v = int(v) * classes
            specs.append((format_value(v), v if knob.kind in ("float", "int") else format_value(v), raw,
                          {**_overrides_for(knob, v), **settings}))

    variants: list[Variant] = []
    base_ident = run_identity(base, "student")
    seen: dict[str, Variant] = {}  # run identity -> the variant of the first value that gave it
    for label, value, raw, ov in specs:
        ov = _companions({**(added or {}), **ov}, base)
        try:
            cfg = _build(base_tree, ov)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={format_value(v)}" for k, v in ov.items())
            errors.append(f"value {raw or label!r} ({shown}) is invalid: {exc}")
            continue
        size = TRAIN_SIZES.get(cfg.data.name)
        if isinstance(cfg.data.subset, int) and size is not None and cfg.data.subset > size:
            errors.append(f"value {raw or label!r} gives data.subset={cfg.data.subset}, but {cfg.data.name} has {size} "
                          "training images: every run would fail; give a smaller number or a percentage")
            continue
        key = run_identity(cfg, "student")
        if key in seen:
            if raw and raw != seen[key].raw:  # two texts of the plan, one run: the ablation warns
                seen[key].merged.append(raw)
            continue
        variants.append(Variant(label, _jsonable(value), raw, _jsonable(ov), cfg, same_as_base=key == base_ident))
        seen[key] = variants[-1]
    return variants, errors


# ------------------------------------------------------------------------------------------ maps
def parse_maps(maps: Iterable[str] | dict[str, str]) -> dict[str, str]:
    if isinstance(maps, dict):
        return dict(maps)
    out = {}
    for m in maps:
        if "=" not in m:
            raise ResolveError(f"--map {m!r} must look like \"ABLATION NAME=knob or config.path\", e.g. \"Ablation A=objective.intra.delta\"")
        name, target = m.rsplit("=", 1)
        out[name.strip()] = target.strip()
    return out


def _norm_name(s: str) -> str:
    return re.sub(r"\s+", " ", ascii_text(clean_inline(s))).strip(" .:")


def _knob_for_target(target: str) -> Knob:
    k = knob_by_name(target)
    if k is not None:
        return k
    ks = knobs_for_path(target)
    if ks:
        return ks[0]
    try:
        return generic_knob(target)
    except KeyError:
        names = [k.name for k in KNOBS]
        import difflib

        close = difflib.get_close_matches(target, names + [k.path for k in KNOBS], n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; see docs/ABLATION.md for the knob table"
        raise ResolveError(f"--map target {target!r} is neither a knob name nor a config path{hint}") from None


def _mapped(ab: Ablation, index: int, maps: dict[str, str]) -> tuple[str, str] | None:
    for key, target in maps.items():
        k = _norm_name(key)
        if k in (_norm_name(ab.name), _norm_name(ab.part)) or k == f"#{index}":
            return key, target
    return None


# ------------------------------------------------------------------------------------------ base
def load_base(base: Any, scope: str, overrides: Sequence[str]) -> tuple[str, ExperimentConfig]:
    try:
        if base is None:
            name = SHIPPED_BASES[scope]
            tree = load_yaml(resolve_config_path(name))
        elif isinstance(base, ExperimentConfig):
            name, tree = base.name, base.model_dump(mode="json")
        elif isinstance(base, dict):
            name, tree = str(base.get("name", "base")), copy.deepcopy(base)
        else:
            name = str(base)
            tree = load_yaml(resolve_config_path(name))
        cfg = build_config(tree, parse_overrides(list(overrides)) if overrides else None)
    except ConfigError as exc:
        raise ResolveError(f"base config: {exc}") from None
    return name, cfg


# ------------------------------------------------------------------------------------------ resolve
#: things plans ablate that no kdlab config key can express -> what to say instead (one line each)
UNSUPPORTED: dict[str, str] = {
    "gradient clipping": "kdlab does not clip gradients; there is no config key for it, drop this ablation",
    "dropout": "kdlab's networks have no dropout; there is no config key for it, drop this ablation",
    "mixup": "kdlab has no mixup/cutmix; for other augmentation name crop, flip, rrc, color_jitter, grayscale, blur or cutout",
    "cutmix": "kdlab has no mixup/cutmix; for other augmentation name crop, flip, rrc, color_jitter, grayscale, blur or cutout",
    "pretrained teacher weights": "set teacher.checkpoint=PATH (a trained teacher) with --map or an override instead",
    "similarity function": "every contrastive term in kdlab scores pairs by the cosine similarity of L2-normalised "
                           "embeddings; no config key selects another (dot product, Euclidean distance), drop this ablation",
    "l2 normalization of the embeddings": "every contrastive term in kdlab L2-normalises its embeddings; no config key "
                                          "turns that off, drop this ablation",
}
UNSUPPORTED["cosine similarity"] = UNSUPPORTED["euclidean distance"] = UNSUPPORTED["similarity function"]
UNSUPPORTED["teacher cross entropy"] = (
    "the teacher is always trained with CE (L_teacher = L_CE + lambda * L_Intra); no config key removes it. To remove "
    "the contrastive term instead: --map \"NAME=objective.kind\" (REMOVE gives the CE teacher)")


@lru_cache(maxsize=1)
def _unsupported_index() -> PhraseIndex:
    return PhraseIndex({k: (k,) for k in UNSUPPORTED})


def _unsupported(ab: Ablation, least: float = 0.9) -> str | None:
    """What to say when the part names something kdlab cannot do (``least``: the score that counts)."""
    q = tokens(ab.part) or tokens(ab.name)
    ranked = sorted(((k, _unsupported_index().score(k, q)[0]) for k in UNSUPPORTED), key=lambda x: -x[1])
    return UNSUPPORTED[ranked[0][0]] if ranked and ranked[0][1] >= least else None


def _describe(k: Knob, s: float) -> str:
    return f"  {k.name:<22} {k.path:<34} score {s:5.2f}  {k.description[:70]}"


def effective_base_value(knob: Knob, base: ExperimentConfig) -> Any:
    """The base's value of the knob as it acts, with ``None`` defaults resolved (kd.weight None -> 0.9 for
    KD alone, objective.views None -> 2 for a contrastive teacher, ...), so tables and plots show a number."""
    if knob.kind == "pair":
        return (base.teacher.arch, base.student.arch)
    try:
        value = get_path(base, knob.path)
    except ConfigError:
        return None
    if value is not None:
        return value
    parts = knob.path.split(".")
    if parts[0] == "distill" and len(parts) == 3 and parts[1] in METHOD_NAMES:
        return getattr(base.distill.resolved(parts[1]), parts[2])
    if knob.path == "distill.ce_weight":
        return base.distill.resolved_ce_weight()
    if knob.path == "objective.views":
        return base.teacher_views()
    if knob.path == "data.subset":
        return TRAIN_SIZES.get(base.data.name)
    if knob.kind == "augment":
        return _effective_augment(base, knob.path)
    return None


def _nested(ab: Ablation, k1: Knob, v1: list[Variant], k2: Knob, v2: list[Variant]) -> bool:
    """Removing one knob switches the other off too (REMOVE "the intra-class loss": objective.kind=ce leaves
    intra.lambda without effect), so both readings remove the same component: not an ambiguity."""
    if ab.action != "REMOVE" or len(v1) != 1 or len(v2) != 1:
        return False
    return not _requires_ok(k2, v1[0].config)[0] or not _requires_ok(k1, v2[0].config)[0]


def _more_specific(ab: Ablation, best: Knob, other: Knob) -> bool:
    """The best knob reads words of the part that the other knob's vocabulary lacks, and not the reverse
    ("teacher projection head BN": the teacher side's knob, not both sides'; "augmentation for positive
    pairs": the view augmentation, not the main view's)."""
    q = set(tokens(ab.part) or tokens(ab.name))
    vocab = _knob_index().vocab
    return bool((q & vocab[best.name]) - vocab[other.name]) and not (q & vocab[other.name]) - vocab[best.name]


def _enabling_override(knob: Knob, base: ExperimentConfig) -> str:
    """The ``key=value`` overrides that satisfy ``knob.requires`` on this base."""
    return " ".join(fix for _, fix, _ in _unmet(knob, base))


def _addable_requirement(knob: Knob, base: ExperimentConfig) -> dict[str, Any]:
    """For an ADD onto a knob the base does not use: the overrides that add the components it needs, when
    kdlab can add every one of them (a distiller to ``distill.methods``), else {}."""
    unmet = _unmet(knob, base)
    if not unmet or not all(add for _, _, add in unmet):
        return {}
    return {k: v for _, _, add in unmet for k, v in add.items()}


#: "+" joins two components when it stands apart ("margin + cache"); between two words it names a combination
#: ("Ours+RKD", "KD+RKD"), one component
_JOINERS = re.compile(r"\s*(?:,|;|&|(?<!\w)\+|\+(?!\w)|\band\b|\bas well as\b|\bplus\b|\balong with\b)\s*")
_TOGETHER = re.compile(r"\(?\b(?:both|together|jointly|all|at once)\b\)?")


def _removal_pieces(part: str) -> list[str]:
    """A REMOVE's part split at "and", "+", "," into the components it names ("both", "together" dropped; "the
    loss between student and teacher" is one component)."""
    part = re.sub(r"\b(between\b.*?)\band\b", r"\1with", part)
    return [p.strip() for p in _JOINERS.split(_TOGETHER.sub(" ", part)) if tokens(p)]


def _compound_removal(ab: Ablation, scope: str, base: ExperimentConfig, best: Knob) -> list[tuple[str, Knob, Variant]] | None:
    """A REMOVE whose part names two or more components joined by "and", "+", "," ("margin filter and cache
    (both)"): each piece with the knob it resolves to, when every piece resolves on its own to a different
    removable knob, one of them the whole part's, and no removal voids another (removing the intra-class loss
    voids its margin: that is one component). Each piece comes with its own removal's variant. None otherwise."""
    if ab.action != "REMOVE":
        return None
    pieces = _removal_pieces(ab.part)
    if len(pieces) < 2:
        return None
    found: list[tuple[str, Knob, Variant]] = []
    for piece in pieces:
        sub = replace(ab, part=piece, name=piece)
        ranked = rank_knobs(sub, scope, base, top=1)
        if not ranked or ranked[0][1] < MIN_SCORE or not ranked[0][0].removable():
            return None
        k = ranked[0][0]
        v, err = make_variants(sub, k, base)
        if err or len(v) != 1 or v[0].same_as_base or any(k.name == f.name for _, f, _ in found):
            return None
        found.append((piece, k, v[0]))
    if best.name not in {k.name for _, k, _ in found}:
        return None
    # a removal that leaves another piece's knob without effect contains it ("the loss and its margin": the loss)
    kept = [(piece, k, v) for piece, k, v in found
            if all(_requires_ok(k, v2.config)[0] for _, k2, v2 in found if k2.name != k.name)]
    for i, (_, _, v1) in enumerate(kept):
        for _, _, v2 in kept[i + 1:]:
            if any(v2.overrides.get(key, val) != val for key, val in v1.overrides.items()):
                return None
    if not kept or (len(kept) == 1 and kept[0][1].name == best.name):
        return None
    return kept


def _unremoved_pieces(ab: Ablation, scope: str, base: ExperimentConfig, chosen: Knob) -> list[str]:
    """The pieces of a REMOVE's part joined by "and", "+", "," that neither name the chosen knob nor another
    removable one ("Margin filter and temperature scaling": temperature scaling)."""
    pieces = _removal_pieces(ab.part)
    if len(pieces) < 2:
        return []
    out = []
    for piece in pieces:
        ranked = rank_knobs(replace(ab, part=piece, name=piece), scope, base, top=1)
        if ranked and ranked[0][1] >= MIN_SCORE and (ranked[0][0].name == chosen.name or ranked[0][0].removable()):
            continue
        out.append(piece)
    return out


def _removed_together(parts: list[tuple[str, Knob, Variant]], base: ExperimentConfig) -> Variant:
    """One variant with every component of a compound REMOVE switched off."""
    if len(parts) == 1:
        return parts[0][2]
    overrides: dict[str, Any] = {}
    for _, _, v in parts:
        overrides.update(v.overrides)
    overrides = _companions(overrides, base)
    cfg = _build(base.model_dump(mode="json"), overrides)
    label = "removed (" + ", ".join(k.name for _, k, _ in parts) + ")"
    return Variant(label, "removed", "", _jsonable(overrides), cfg,
                   same_as_base=run_identity(cfg, "student") == run_identity(base, "student"))


def resolve_ablation(ab: Ablation, index: int, scope: str, base: ExperimentConfig,
                     maps: dict[str, str]) -> ResolvedAblation | Unresolved:
    """One ablation on ``base``: resolved, or the problems that keep it from running (with their fixes)."""
    mapped = _mapped(ab, index, maps)
    ranked = rank_knobs(ab, scope, base)
    candidates = [(k.name, s, ph) for k, s, ph in ranked[:4]]

    def unresolved(*problems: Problem) -> Unresolved:
        return Unresolved(index, ab, list(problems), candidates)

    phrase = ""
    parts = None  # a REMOVE of several named components (_compound_removal)
    if mapped:
        knob = _knob_for_target(mapped[1])  # resolve_plan checked every --map target
        how, score = f"--map {mapped[0]}={mapped[1]}", float("inf")
    else:
        by_part = rank_knobs(ab, scope, base, top=1, values=False) if ab.replacements and not _unsupported(ab, 0.5) else []
        if (not ranked or ranked[0][1] < MIN_SCORE) and by_part and by_part[0][1] >= 2 * MIN_SCORE:
            # the part names a knob clearly, its values are what does not read: say that, not "cannot place"
            knob = by_part[0][0]
            _, verr = make_variants(ab, knob, base)
            if verr:
                return unresolved(*(Problem(e, fix=f"correct the value in the plan; or --map \"{ab.name}=<knob>\" if "
                                                   f"{knob.name} is not the part you mean") for e in verr))
        if not ranked or ranked[0][1] < MIN_SCORE:
            why = _unsupported(ab)
            why = f": {why}" if why else ""
            close = tuple(_describe(k, s) for k, s, _ in ranked[:5] if s >= 0.05) or ("  (nothing close)",)
            eg = ranked[0][0].path if ranked and ranked[0][1] >= 0.6 * MIN_SCORE else "some.config.path"
            return unresolved(Problem(f"cannot place the ablated part {ab.part!r} on a knob{why}",
                                      ("Closest knobs:",) + close,
                                      f"--map \"{ab.name}={eg}\" (a knob name or any config path)"))
        knob, score, phrase = ranked[0]
        how = f"matched {phrase!r} (score {score:.2f})"
        setting = _switch_setting(ab, knob, base)
        if setting is not None:  # "Per-class cache: 0, 128": sizes of the cache, not on/off
            how += f"; numbers for the switch {knob.name} set {setting.name}, whose REMOVE turns it off"
            candidates = [(setting.name, score, phrase)] + [c for c in candidates if c[0] not in (knob.name, setting.name)]
            knob = setting
        # ambiguity: a close runner-up that would do something else (a REMOVE of two named parts removes both)
        parts = _compound_removal(ab, scope, base, knob)
        together = {k.name for _, k, _ in parts or ()}
        for k2, s2, _ in ranked[1:4]:
            if s2 < AMBIGUOUS_RATIO * score:
                break
            if k2.name in together:
                continue
            v1, _ = make_variants(ab, knob, base)
            v2, e2 = make_variants(ab, k2, base)
            if e2 or _more_specific(ab, knob, k2):
                continue  # a reading whose values do not read, or that misses words the best one reads, competes not
            same = [v.overrides for v in v1] == [v.overrides for v in v2]
            if not same and not (set(k2.paths) & set(knob.paths)) and not _nested(ab, knob, v1, k2, v2):
                why = _unsupported(ab)
                if why:  # "the teacher's CE": neither reading is what the plan means
                    return unresolved(Problem(f"cannot run {ab.part!r}: {why}"))
                close = tuple(_describe(k, s) for k, s, _ in ranked[:4])
                return unresolved(Problem(
                    f"the ablated part {ab.part!r} is ambiguous between {knob.name} and {k2.name}",
                    close, f"--map \"{ab.name}={knob.path}\" (or the one you mean)"))
    problems: list[Problem] = []
    ok, need = _requires_ok(knob, base)
    added = _addable_requirement(knob, base) if not ok and ab.action == "ADD" else {}
    if not ok and not added:  # a knob that cannot act on the run would train the base again under another name
        enable = _enabling_override(knob, base)
        problems.append(Problem(
            f"{knob.name} ({knob.path}) has no effect on this base run: it needs {need}",
            fix=f"add the override {enable} after the plan (kdlab ablate PLAN {enable}), pass another --base, "
                f"or --map \"{ab.name}=<knob>\""))
    variants, verr = make_variants(ab, knob, base, added)
    warnings_pre: list[str] = []
    if parts and not verr:  # "REMOVE the margin filter and the cache": one variant without either
        variants = [_removed_together(parts, base)]
        how += ("; the part names " + " and ".join(f"{k.name} ({piece!r})" for piece, k, _ in parts)
                + (", removed together" if len(parts) > 1 else f", whose removal voids {knob.name}"))
        knob = parts[0][1]
        candidates = [(knob.name, score, phrase)] + [c for c in candidates if c[0] not in together]
    other = "" if mapped else f"; or --map \"{ab.name}=<knob>\" if {knob.name} is not the part you mean"
    problems += [Problem(e, fix=f"correct the value in the plan{other}") for e in verr]
    if not variants and not verr:
        problems.append(Problem("no variant to run"))
    if ab.action == "REMOVE" and not mapped and not parts:
        for piece in _unremoved_pieces(ab, scope, base, knob):
            why = _unsupported(replace(ab, part=piece, name=piece))
            if why:
                problems.append(Problem(f"the part also names {piece!r}, which kdlab cannot remove: {why}",
                                        fix=f"remove it from the plan's part, or --map \"{ab.name}=<knob>\""))
            else:
                warnings_pre.append(f"the part also names {piece!r}, which no knob removes: only {knob.name} is removed")
    for v in variants:
        if not v.config.distill.methods and v.config.distill.resolved_ce_weight() == 0:
            problems.append(Problem(f"variant {v.label!r} leaves the student no loss at all (no distillation, CE weight 0)"))
    if variants and all(v.same_as_base for v in variants) and not verr:
        shown = "; ".join(dict.fromkeys(", ".join(f"{k}={format_value(x)}" for k, x in v.overrides.items())
                                        for v in variants))
        problems.append(Problem(
            f"every variant equals the base run ({shown}): the base already has it, so this ablation would "
            f"measure nothing",
            fix=f"pass a base where {knob.path} differs (--base, or an override after the plan){other}"))
    why = _unsupported(ab, least=0.5) if problems and not mapped else None
    if why:  # "ADD mixup" found the augmentation knob but names nothing it can hold: say what kdlab lacks
        return unresolved(Problem(f"cannot run {ab.part!r}: {why}"))
    if problems:
        return unresolved(*problems)
    configs = [base] + [v.config for v in variants]
    metrics = [fit_metric(map_metric(m), configs) for m in ab.metrics] or [MetricSpec("(none named)", ("top1",), None)]
    base_warnings = config_warnings(base)
    warnings = warnings_pre + [f"{v.label}: {w}" for v in variants for w in config_warnings(v.config) if w not in base_warnings]
    warnings += [f"{v.label}: {', '.join(map(repr, v.merged))} read{'s' if len(v.merged) == 1 else ''} as the same run as "
                 f"{v.raw!r}, so they are one variant (to tell them apart, set the key that differs: --map or a grid)"
                 for v in variants if v.merged]
    named_stages = [st for st in ("teacher", "student") if re.search(rf"\b{st}s?\b", ascii_text(ab.part).lower())]
    if len(named_stages) == 1 and knob.stage == "both" and len(knob.paths) == 1:  # data.*: no per-stage setting
        warnings.append(f"the part names the {named_stages[0]}, but {knob.path} is one setting of both stages: the "
                        f"{'student' if named_stages[0] == 'teacher' else 'teacher'} changes with it")
    base_value = effective_base_value(knob, base)
    warnings += [f"{v.label}: the plan calls {v.raw!r} its default, but this base's {knob.name} is "
                 f"{format_value(base_value)}: the base row is that, and {v.label} is a variant"
                 for v in variants if not v.same_as_base and v.value != base_value and _CALLED_DEFAULT.search(
                     ascii_text(v.raw).lower())]
    if knob.name == "view_augment" and not any("data.augment" in v.overrides for v in variants):
        main = format_value(_effective_augment(base, "data.augment"))
        warnings.append(f"this changes the extra contrastive views only (data.view_augment); the main view of both "
                        f"stages keeps data.augment={main}. To change every view: --map \"{ab.name}=augmentation\"")
    return ResolvedAblation(ab, knob, how, score, variants, metrics, _jsonable(effective_base_value(knob, base)),
                            index=index, phrase=phrase, candidates=candidates, warnings=warnings)


def needed_distillers(plan: Plan, scope: str, base: ExperimentConfig, maps: dict[str, str]) -> dict[int, str]:
    """Per ablation (1-based index): the distiller (a common one: a method with a paper of its own, CoCoRD, has its
    own shipped base) whose hyper-parameter it varies while the base's student does not use it -- "DKD beta" on a
    KD-only base means a DKD student."""
    everything = [s.name for s in registry.distillers() if s.scope == "common"]
    probe_tree = base.model_dump(mode="json")
    probe_tree["distill"]["methods"] = list(dict.fromkeys(list(base.distill.methods) + everything))
    try:
        probe = build_config(probe_tree)
    except ConfigError:
        return {}
    needed: dict[int, str] = {}
    for i, ab in enumerate(plan.ablations, 1):
        mapped = _mapped(ab, i, maps)
        if mapped:
            try:
                knob = _knob_for_target(mapped[1])
            except ResolveError:
                continue
        else:
            ranked = rank_knobs(ab, scope, probe, top=1)
            if not ranked or ranked[0][1] < MIN_SCORE:
                continue
            knob = ranked[0][0]
        m = knob_method(knob)
        if m and m in everything and m not in base.distill.methods and knob.kind != "methods":
            needed[i] = m
    return needed


def setting_base(ab: Ablation, index: int, scope: str, base: ExperimentConfig, maps: dict[str, str],
                 chosen: Iterable[str] = ()) -> tuple[ExperimentConfig, str] | None:
    """For an ablation whose knob acts only under a setting of its own block that the base does not have (η
    needs the gradnorm λ schedule, the warm-up length the warm-up schedule, ``kd.logit_std_T`` logit
    standardisation): the base with that setting, and the overrides that make it, as text. None otherwise, and
    when the user set that setting on the command line (``chosen``: the override keys): their choice stands."""
    mapped = _mapped(ab, index, maps)
    try:
        knob = _knob_for_target(mapped[1]) if mapped else None
    except ResolveError:
        return None
    if knob is None:
        ranked = rank_knobs(ab, scope, base, top=1)
        if not ranked or ranked[0][1] < MIN_SCORE:
            return None
        knob = ranked[0][0]
    unmet = _unmet(knob, base)
    block = knob.path.rsplit(".", 1)[0] + "."
    fixes = [fix for _, fix, add in unmet if not add and fix.startswith(block)]
    if not unmet or len(fixes) != len(unmet) or any(fix.split("=", 1)[0] in set(chosen) for fix in fixes):
        return None
    try:
        own = build_config(base.model_dump(mode="json"), parse_overrides(fixes))
    except ConfigError:
        return None
    return own, " ".join(fixes)


def _plan_setting(plan: Plan, base: ExperimentConfig) -> str | None:
    """A note when the plan's text (its preamble, a base section, a part's parentheses; not its replacement
    values) names data sets or networks the base does not use: "All runs use ResNet32x4 → ResNet8x4 on
    CIFAR-100" on the digits base runs digits, and should say so."""
    lines = plan.text.splitlines()
    first = min((ab.line for ab in plan.ablations if ab.line), default=len(lines) + 1)
    values = {v.strip() for ab in plan.ablations for v in ab.replacements if v.strip()}
    text = "\n".join([line for i, line in enumerate(lines, 1) if i < first or not any(v in line for v in values)]
                     + [ab.part for ab in plan.ablations])
    archs = [n for n in dict.fromkeys(n for _, n in _find_archs(text)) if n not in (base.teacher.arch, base.student.arch)]
    datasets = [d for d in _find_phrases(text, knob_by_name("dataset").choices) if d not in (base.data.name, "imagefolder")]
    if not archs and not datasets:
        return None
    named = ", ".join(dict.fromkeys(datasets + archs))
    keys = " ".join([f"data.name={d}" for d in datasets[:1]]
                    + [f"{stage}.arch={a}" for stage, a in zip(("teacher", "student"), archs)])
    return (f"the plan's text names {named} (beside its values); this run uses {base.data.name} with "
            f"{base.teacher.arch} -> {base.student.arch}. If the plan means that setting, pass --base or overrides "
            f"(e.g. {keys})")


def method_base(base: ExperimentConfig, method: str, *, keep: bool = False) -> ExperimentConfig:
    """``base`` with its student distilled by ``method`` alone (CE + the method at its default weights), or with
    ``keep`` by the base's methods and ``method`` ("Ours+RKD": KD + RKD)."""
    tree = base.model_dump(mode="json")
    tree["distill"]["methods"] = list(dict.fromkeys([*tree["distill"]["methods"], method])) if keep else [method]
    return build_config(tree)


#: optimiser settings a value may carry beside the optimiser ("AdamW (lr 3e-4, weight decay 0.05)")
_OPTIM_SETTINGS = {"lr": r"\b(?:lr|learning rate)", "weight_decay": r"\b(?:weight decay|wd)", "momentum": r"\bmomentum"}


def _value_settings(raw: str, knob: Knob) -> tuple[str, dict[str, Any]]:
    """What a value sets beside the knob's own value: for an optimiser, its learning rate, weight decay, momentum
    and Nesterov as overrides of the same stages; for any other knob, a description of the other setting (to
    refuse: "64 (lr 0.025)" scales the learning rate with the batch, "2-layer MLP, 256-d" sets the width too,
    "50% of CIFAR-100" the training fraction) or ""."""
    t = ascii_text(_unicode_powers(raw)).lower()
    optimizer = [p for p in knob.paths if p.endswith("optim.optimizer")]
    found: dict[str, float] = {}
    for key, name in _OPTIM_SETTINGS.items():
        m = re.search(name + r"\s*(?:=|:|of)?\s*(" + _NUM + r")(?![\w.])", t)
        if m and not any(p.endswith(f"optim.{key}") for p in knob.paths):
            found[key] = float(m[1])
    if optimizer:
        out: dict[str, Any] = {p.replace("optimizer", key): v for p in optimizer for key, v in found.items()}
        if re.search(r"\bnesterov\b", t):
            out.update({p.replace("optimizer", "nesterov"): True for p in optimizer})
        return "", out
    if found:
        return ", ".join(f"the {k.replace('_', ' ')} ({v:g})" for k, v in found.items()), {}
    if knob.kind in ("choice", "arch", "pair", "methods"):
        dim = re.search(r"(?<![\w.])(\d+)\s*-?\s*(?:d|dim|dims|dimensional)\b", t)
        if dim:  # the kinds above never include the head width itself
            return f"a dimension ({dim[1]}-d)", {}
        pct = re.search(r"(?<![\w.])(" + _NUM + r")\s*%", t)
        if pct:
            return f"a fraction ({pct[1]} %)", {}
    return "", {}


#: a value the plan marks as its own default: "0.3 (default)", "0.3 (ours)", not "0.05 (half of the default)"
_CALLED_DEFAULT = re.compile(r"\(\s*(?:the\s+)?(?:default|ours|baseline|paper|original)(?:\s+(?:value|setting))?\s*\)")
#: a REMOVE of the teacher's contrastive term that keeps its views for CE ("but keep two views")
_KEEP_VIEWS = re.compile(r"\b(?:keep|keeps|keeping|kept|retain|retained|retaining)\b[^.;]*\bviews?\b|"
                         r"\bviews?\b[^.;]*\b(?:kept|retained)\b")
_PER_CLASS = re.compile(r"\bper[ -]?class\b|\bclass[ -]?wise\b|\beach class\b", re.IGNORECASE)
_COMBINATION = re.compile(r"[\w-]+(?:\s*\+\s*[\w-]+)+")


def combined_method(ab: Ablation, base: ExperimentConfig) -> str | None:
    """The distiller an ablation's part or name combines with the base's student ("… in Ours+RKD", "KD + RKD
    student"), when the base's student does not use it: the ablation is about that combination."""
    for text in (ab.part, ab.name):
        for combo in _COMBINATION.findall(ascii_text(text)):
            added = [m for m in methods_named(combo) if m not in base.distill.methods
                     and registry.spec(m, "distiller").scope == "common"]
            if len(added) == 1:
                return added[0]
    return None


def resolve_plan(
    plan: Plan,
    *,
    base: Any = None,
    maps: Iterable[str] | dict[str, str] = (),
    overrides: Sequence[str] = (),
    seeds: int | Sequence[int] = 3,
    strict: bool = False,
    allow_empty: bool = False,
) -> Grid:
    """Resolve every ablation of ``plan`` against a base config.

    Ablations that do not resolve are kept in ``grid.unresolved`` with their problems, and the others run. A
    ResolveError listing every problem is raised when none resolves (unless ``allow_empty``: --explain shows
    why), with ``strict`` when any does not, and for a ``--map`` that names no ablation."""
    maps_d = parse_maps(maps)
    for target in maps_d.values():
        _knob_for_target(target)  # a --map the user typed wrong stops the plan: one clear error line
    if base is None:
        scope, reason = detect_scope(plan)
    else:
        scope, reason = "intra", ""
    name, base_cfg = load_base(base, scope, overrides)
    if base is not None:
        s = scope_of_config(base_cfg)
        if s is not None:
            scope, reason = s, f"from the base config ({name})"
        else:
            scope, reason = detect_scope(plan)
    if isinstance(seeds, int):
        if seeds < 1:
            raise ResolveError(f"--seeds must be >= 1, got {seeds}")
        seed_list = [base_cfg.seed + i for i in range(seeds)]
    else:
        seed_list = [int(s) for s in seeds]
        if not seed_list:
            raise ResolveError("--seeds: give a count >= 1 or a list of seeds")
    overrides = list(overrides)
    # an explicit distill.methods override is the user's choice: no ablation gets a base of its own then
    user_methods = any(o.split("=", 1)[0].strip() == "distill.methods" for o in overrides)
    needed = {} if user_methods else needed_distillers(plan, scope, base_cfg, maps_d)
    resolved: list[ResolvedAblation] = []
    unresolved: list[Unresolved] = []
    plan_warnings = config_warnings(base_cfg)
    setting = _plan_setting(plan, base_cfg)
    if setting:
        plan_warnings.append(setting)
    for i, ab in enumerate(plan.ablations, 1):
        own, combo = None, None if user_methods else combined_method(ab, base_cfg)
        if combo:  # "RKD's angle term in Ours+RKD": on the base student with RKD added, unless it adds RKD itself
            first = resolve_ablation(ab, i, scope, base_cfg, maps_d)
            if isinstance(first, ResolvedAblation) and first.knob.kind == "methods":
                combo = None
        if combo or i in needed:
            method = combo or needed[i]
            try:
                own = method_base(base_cfg, method, keep=bool(combo))
            except ConfigError as exc:
                problem = Problem(f"a {method} student on this base is not valid: {exc}")
                unresolved.append(Unresolved(i, ab, [problem]))
                continue
        r = resolve_ablation(ab, i, scope, own or base_cfg, maps_d)
        setting = (setting_base(ab, i, scope, base_cfg, maps_d, [o.split("=", 1)[0].strip() for o in overrides])
                   if isinstance(r, Unresolved) and own is None else None)
        if setting is not None:  # "η of the gradnorm schedule" on a constant-λ base: a gradnorm base of its own
            r2 = resolve_ablation(ab, i, scope, setting[0], maps_d)
            if not isinstance(r2, Unresolved):
                r = r2
                r.base = setting[0]
                r.base_note = (f"own base: the plan's base with {setting[1]}, since {r.knob.name} acts only there")
                r.warnings[:0] = [f"base: {w}" for w in config_warnings(setting[0]) if w not in plan_warnings]
        if isinstance(r, Unresolved):
            unresolved.append(r)
            continue
        if own is not None:
            r.base = own
            methods = ", ".join(own.distill.methods)
            r.base_note = (f"own base: the plan's base student with {combo} added (distill.methods=[{methods}]), "
                           f"since the ablation names that combination" if combo else
                           f"own base: the {needed[i]} student (distill.methods=[{methods}]), "
                           f"since the plan's base student does not use {needed[i]}")
            r.warnings[:0] = [f"base: {w}" for w in config_warnings(own) if w not in plan_warnings]
        resolved.append(r)
    unused = [k for k in maps_d if not any(_mapped(ab, i, {k: maps_d[k]}) for i, ab in enumerate(plan.ablations, 1))]
    if unused:
        names = ", ".join(repr(a.name) for a in plan.ablations)
        raise ResolveError(f"--map {', '.join(map(repr, unused))} matches no ablation of the plan (names: {names})")
    if unresolved and (strict or not (resolved or allow_empty)):
        n = sum(len(u.problems) for u in unresolved)
        why = "--strict: nothing runs unless every ablation resolves" if resolved else "no ablation resolves"
        head = f"{plan.source}: {why} ({n} problem{'s' if n > 1 else ''}); nothing was run"
        raise ResolveError(head + "\n" + "\n".join(_listed(u.lines()) for u in unresolved))
    return Grid(plan, scope, reason, name, base_cfg, seed_list, resolved, overrides, maps_d, unresolved, plan_warnings)


def _listed(lines: list[str]) -> str:
    """Problem lines as a list: each problem's first line bulleted, its details and fix indented under it."""
    return "\n".join(line if line.startswith(" ") else f"- {line}" for line in lines)


def format_unresolved(grid: Grid) -> list[str]:
    """The "not run" block the dry run, the run and --explain print first (empty when everything resolved)."""
    if not grid.unresolved:
        return []
    n, total = len(grid.unresolved), len(grid.unresolved) + len(grid.ablations)
    lines = [f"NOT RUN: {n} of {total} ablation{'s' if total > 1 else ''} could not be resolved and will not run:"]
    lines += [_listed(u.lines()) for u in grid.unresolved]
    return lines + [""]


def grid_header(grid: Grid) -> list[str]:
    """The plan, method, base, seeds and the base's own warnings: the first lines of the dry run and --explain."""
    lines = [
        f"Plan: {grid.plan.title}  [{grid.plan.source}]",
        f"Method: {grid.scope} ({grid.scope_reason}); base: {grid.base_name}"
        + (f" + {' '.join(grid.overrides)}" if grid.overrides else ""),
        f"  teacher {grid.base.teacher.arch} ({grid.base.teacher.epochs} ep, objective {grid.base.objective.kind}) -> "
        f"student {grid.base.student.arch} ({grid.base.student.epochs} ep, {'+'.join(grid.base.distill.methods) or 'CE'}) "
        f"on {grid.base.data.name}",
        f"Seeds: {', '.join(map(str, grid.seeds))}",
    ]
    return lines + [f"  warning: base: {w}" for w in grid.warnings]


def variant_line(v: Variant) -> str:
    """``label  path=value, ...  [= base]  <- 'the plan's words'``."""
    ov = ", ".join(f"{k}={format_value(x)}" for k, x in v.overrides.items())
    note = "  [= base]" if v.same_as_base else ""
    raw = f"  <- {v.raw!r}" if v.raw and v.raw != v.label else ""
    return f"{v.label:<22} {ov}{note}{raw}"


SMOKE_TEST_NOTE = (
    "note: the embedded default (scikit-learn digits) is a smoke test: every variant reaches 98-99 % top-1, so "
    "its differences are seed noise. For a comparison that can show an effect, run the plan on CIFAR-10: "
    "--base studies/cifar10_kd/base.yaml (docs/RESULTS.md; about an hour for 3 seeds of two configs on 2 CPU cores)")


def format_grid(grid: Grid) -> str:
    """Human-readable resolved grid (what ``--dry-run`` prints): the smoke-test note on the embedded default,
    what is not run, then every ablation."""
    note = [SMOKE_TEST_NOTE, ""] if grid.base_name in SHIPPED_BASES.values() else []
    lines = note + format_unresolved(grid) + grid_header(grid)
    for a in grid.ablations:
        lines.append("")
        lines.append(f"[{a.index}] {a.ablation.name}: {a.ablation.action} {a.ablation.part!r}")
        lines.append(f"    -> knob {a.knob.name} = {' + '.join(a.knob.paths)}  ({a.how}); base value {format_value(a.base_value)}")
        if a.base is None:
            lines.append(f"    {'base':<22} (shared base run)")
        else:
            lines.append(f"    {'base':<22} {a.base_note}")
        lines += [f"    {variant_line(v)}" for v in a.variants]
        lines += [f"    warning: {w}" for w in a.warnings]
        lines.append(f"    metrics: {', '.join(m.describe() for m in a.metrics)}")
    n_cfg = len(grid.configs())
    teachers = {run_identity(c, "teacher") for c in grid.configs()}
    lines.append("")
    lines.append(
        f"Runs: {n_cfg} configs x {len(grid.seeds)} seeds = {n_cfg * len(grid.seeds)} student runs; "
        f"{len(teachers) * len(grid.seeds)} teacher trainings"
    )
    if grid.unresolved:
        lines.append(f"Not run: {len(grid.unresolved)} ablation{'s' if len(grid.unresolved) > 1 else ''} "
                     "(listed at the top, with the reason)")
    return "\n".join(lines)
