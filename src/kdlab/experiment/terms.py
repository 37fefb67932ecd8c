"""Loss terms as metrics: which terms a run logs, and what a metric that names a kind of term is worth.

Every method's plugin declares its loss terms and their roles (``MethodSpec.terms``). A run logs ``train_<term>``
per epoch and its summary keeps the last epoch's values, so a plan's "contrastive loss" can be read as the sum of
the run's terms with the role ``contrastive`` (L_Intra on an intra-class teacher, L_ctr on a CoCoRD student),
never as the total training loss.
"""

from __future__ import annotations

from typing import Any

from kdlab import registry
from kdlab.experiment.schema import ExperimentConfig

__all__ = ["TERM_METRICS", "run_terms", "term_value"]

#: roles every run has or that any method may declare, with the metric key that names them
_ROLE_METRICS = {"ce": "ce_loss", "kd": "kd_loss", "contrastive": "contrastive_loss", "prediction": "prediction_loss"}


def _term_metrics() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {"ce_loss": ["ce"]}
    for spec in registry.all_specs():
        for term, roles in spec.loss_terms.items():
            for role in roles:
                key = _ROLE_METRICS.get(role, f"{role}_loss")
                if term not in out.setdefault(key, []):
                    out[key].append(term)
    return {k: tuple(v) for k, v in out.items()}


#: a metric key -> the terms whose ``train_<term>`` values it sums
TERM_METRICS: dict[str, tuple[str, ...]] = _term_metrics()


def run_terms(cfg: ExperimentConfig, stage: str) -> tuple[str, ...]:
    """The loss terms a stage of ``cfg`` logs (``train_<term>`` in its metrics.jsonl), CE first."""
    if stage == "teacher":
        specs = [registry.spec(cfg.objective.kind, "objective")]
        return ("ce",) + tuple(t for s in specs if s.config is not None for t in s.loss_terms)
    return ("ce",) + tuple(t for m in cfg.distill.methods for t in registry.spec(m, "distiller").loss_terms)


def term_value(metrics: dict, column: str) -> Any:
    """The value of a record's column ``stage.key``; for a loss-term key, the sum of the run's terms it names
    (None when the run has none of them)."""
    stage, key = column.split(".", 1)
    if key not in TERM_METRICS:
        return metrics.get(column)
    vals = [metrics[f"{stage}.train_{t}"] for t in TERM_METRICS[key] if metrics.get(f"{stage}.train_{t}") is not None]
    return sum(vals) if vals else None
