"""Run identity: which resolved configs are the same run.

One function, :func:`run_identity`, says it for every kind of run: a teacher (what changes a teacher: its
data, architecture, schedule, objective, seed and the runtime settings that change results), a student (the
whole config) and an ablation variant (a student without its seed). Everything that finds, reuses or resumes
a run (stage folders, the sweep store, the plan reader's duplicate check) uses it. What does not count is one
list, :data:`NOT_IDENTITY`, plus keys added to the schema after runs were recorded while they hold their
default (:data:`ADDED_LATER`), so that the folders and records of earlier runs are still found.

Identities written before this module (version 1: each caller hashed with its own ignore list) are
recognised by :func:`legacy_stage_hash` and :func:`legacy_run_key`; version 2 counted the blocks of methods a
run does not use, version 3 does not. Run folders record the identity tree they were computed from, and stores
are renamed to the current keys when opened, so runs of earlier versions are reused or refused with a reason,
never retrained over silently.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Iterable, Literal

from kdlab import registry
from kdlab.experiment.schema import ExperimentConfig

__all__ = ["IDENTITY_VERSION", "NOT_IDENTITY", "ADDED_LATER", "identity_tree", "run_identity", "Stage"]

IDENTITY_VERSION = 3
Stage = Literal["teacher", "student", "variant"]

#: what does not make a run different: its display name and output folder, where it runs and how it logs
#: (device, threads, progress, TensorBoard) and execution-only settings (channels_last, torch.compile)
NOT_IDENTITY: tuple[str, ...] = (
    "name", "out",
    "runtime.device", "runtime.threads", "runtime.progress", "runtime.tensorboard",
    "runtime.channels_last", "runtime.compile",
)

#: keys added after runs were recorded, with their default: left out while they hold it
ADDED_LATER: dict[str, Any] = {
    "runtime.sync_bn": False,
    "teacher.optim.optimizer": "sgd",
    "student.optim.optimizer": "sgd",
    "objective.intra.lambda_schedule": "constant",
    "objective.intra.warmup_epochs": 5.0,
    "objective.intra.eta": 0.1,
    "objective.intra.target_ratio": 0.7,
    "objective.intra.ratio_gain": 2.0,
    "distill.kd.logit_std": False,
    "distill.kd.logit_std_T": 2.0,
    "distill.kd.logit_std_weight": 9.0,
    "distill.dkd.logit_std": False,
    "distill.dkd.logit_std_T": 2.0,
    "distill.dkd.logit_std_weight": 9.0,
    "distill.cocord.proj_layers": 2,
    "distill.cocord.proj_bn": True,
    "distill.cocord.pred_layers": 2,
    "distill.cocord.pred_bn": True,
    "distill.cocord.teacher_proj_layers": None,
    "distill.cocord.teacher_proj_hidden": None,
    "distill.cocord.teacher_proj_bn": None,
    "distill.ctkd.temperature": "global",
    "distill.ctkd.instance_hidden": 256,
}

#: the sections a teacher run depends on (the student parts of its config never change it)
TEACHER_SECTIONS = ("seed", "data", "teacher", "objective", "runtime")


def _tree(cfg: ExperimentConfig | dict) -> dict:
    return cfg.model_dump(mode="json") if isinstance(cfg, ExperimentConfig) else copy.deepcopy(cfg)


def _drop(tree: dict, dotted: str, only_if: Any = ...) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf in node and (only_if is ... or node[leaf] == only_if):
        del node[leaf]


def _drop_unused_methods(tree: dict) -> None:
    """The settings of a method a run does not use cannot change it: keep the blocks of the distillers in
    ``distill.methods`` and of the teacher objective ``objective.kind`` only (so a new plugin, which adds a
    block to every config, changes no run's identity)."""
    distill, objective = tree.get("distill"), tree.get("objective")
    if isinstance(distill, dict):
        used = set(distill.get("methods") or [])
        for name in [s.name for s in registry.distillers()]:
            if name not in used:
                distill.pop(name, None)
    if isinstance(objective, dict):
        for name in [s.name for s in registry.objectives()]:
            if name != objective.get("kind"):
                objective.pop(name, None)


def identity_tree(cfg: ExperimentConfig | dict, stage: Stage = "student") -> dict:
    """The part of a resolved config that identifies a run of ``stage``: the config tree without
    :data:`NOT_IDENTITY`, without :data:`ADDED_LATER` keys at their default, without the blocks of methods it
    does not use, for a teacher only its sections, for a variant without the seed."""
    tree = _tree(cfg)
    _drop_unused_methods(tree)
    for dotted in NOT_IDENTITY:
        _drop(tree, dotted)
    for dotted, default in ADDED_LATER.items():
        _drop(tree, dotted, default)
    if stage == "teacher":
        tree = {k: v for k, v in tree.items() if k in TEACHER_SECTIONS}
    elif stage == "variant":
        tree.pop("seed", None)
    return tree


def _digest(tree: Any, n: int | None = 20) -> str:
    h = hashlib.sha256(json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return h[:n] if n else h


def run_identity(cfg: ExperimentConfig | dict, stage: Stage = "student") -> str:
    """A short hash of :func:`identity_tree` (20 hex digits)."""
    return _digest(identity_tree(cfg, stage))


# ------------------------------------------------------------------------------- version 1 (reading)
#: the method blocks every version-1 config held (plugins added since then are left out of its hashes)
V1_BLOCKS = {"distill": ("kd", "rkd", "fitnet", "at", "sp", "pkt", "dkd", "crd", "cocord"),
             "objective": ("intra", "supcon", "simclr")}


def _legacy_tree(cfg: ExperimentConfig | dict, runtime_ignore: Iterable[str]) -> dict:
    tree = _tree(cfg)
    for section, kept in V1_BLOCKS.items():
        node = tree.get(section)
        if isinstance(node, dict):
            for name in [s.name for s in registry.all_specs() if s.name not in kept]:
                node.pop(name, None)
    for dotted, default in ADDED_LATER.items():
        _drop(tree, dotted, default)
    if isinstance(tree.get("runtime"), dict):
        tree["runtime"] = {k: v for k, v in tree["runtime"].items() if k not in runtime_ignore}
    return tree


def legacy_stage_hash(cfg: ExperimentConfig | dict) -> str:
    """The ``config_hash`` that version 1 wrote into a stage folder's summary.json."""
    tree = _legacy_tree(cfg, ("progress", "threads", "tensorboard"))
    tree.pop("out", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


def legacy_run_key(cfg: ExperimentConfig | dict) -> str:
    """The folder name version 1 gave a student run of an ablation store."""
    t = _legacy_tree(cfg, ("device", "threads", "progress"))
    t.pop("name", None)
    t.pop("out", None)
    return _digest(t)


def legacy_teacher_key(cfg: ExperimentConfig | dict) -> str:
    """The folder name version 1 gave a teacher run of an ablation store."""
    t = _legacy_tree(cfg, ())
    rt = t.get("runtime", {})
    ident = {"data": t["data"], "teacher": t["teacher"], "objective": t["objective"], "seed": t["seed"],
             "deterministic": rt.get("deterministic"), "amp": rt.get("amp"),
             **({"sync_bn": True} if rt.get("sync_bn") else {})}
    return _digest(ident)
