"""`kdlab ablate`: plan parsing, knob resolution, the results store, executors and reports.

Fast tests use the plan files in tests/plans/ (written for these tests in the AblationBench format, with the
same mojibake and HTML noise as the seed plans). Tests marked ``shared`` read the seed plans from ../shared
and are skipped when it is absent. End-to-end tests train tiny real runs on the embedded digits data.
"""

from __future__ import annotations

import importlib.util
import json
import re
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdlab.ablation import (
    KNOBS,
    PlanError,
    ResolveError,
    parse_plan,
    render_knob_table,
    resolve_plan,
    run_plan,
)
from kdlab.ablation.knobs import NOTHING, field_info
from kdlab.ablation.plan import parse_plan_text
from kdlab.ablation.resolve import _companions, load_base, map_metric, parse_value
from kdlab.sweep.store import CLAIM, Store, atomic_write_json, run_key, teacher_key
from kdlab.experiment.schema import build_config

ROOT = Path(__file__).resolve().parents[2]
PLANS = Path(__file__).resolve().parents[1] / "plans"
SEEDS = Path(__file__).resolve().parents[2].parent / "shared" / "seeds"
shared = pytest.mark.shared
needs_seeds = pytest.mark.skipif(not SEEDS.is_dir(), reason="../shared/seeds not present")
needs_stages = pytest.mark.skipif(importlib.util.find_spec("kdlab.experiment.stages") is None,
                                  reason="kdlab.experiment.stages not available yet")
FAKE = "fakestages"  # tests/fakestages.py (tests/ is on sys.path under pytest)
TINY = ("teacher.epochs=1", "student.epochs=1", "data.subset=200", "data.test_subset=100")


def grid_of(grid) -> list[tuple[str, str, list[str]]]:
    """(knob name, action, variant labels) per ablation: what the tests compare exactly."""
    return [(a.knob.name, a.ablation.action, [v.label for v in a.variants]) for a in grid.ablations]


def overrides_of(grid) -> list[list[dict]]:
    return [[v.overrides for v in a.variants] for a in grid.ablations]


def seed_file(prefix: str) -> Path:
    return next(SEEDS.glob(f"{prefix}_*.txt"))


# ----------------------------------------------------------------------------------------------- parsing
def test_markdown_plan_parses_and_ignores_the_reasoning_trace():
    plan = parse_plan(PLANS / "intra_renamed.md")
    assert plan.title == "Enriching Knowledge Distillation with Intra Class Contrastive Learning"
    names = [a.name for a in plan.ablations]
    assert "Draft: drop the teacher entirely" not in names  # lives in the reasoning trace
    assert len(plan.ablations) == 8
    first = plan.ablations[0]
    assert first.action == "REPLACE"
    assert first.replacements == ("Î´ = 0.2", "未=0.8", "-0.5")
    assert first.metrics == ("Top-1 accuracy (%)", "convergence speed")
    assert plan.ablations[3].action == "REMOVE" and plan.ablations[3].replacements == ()
    assert plan.ablations[3].metrics == ("Training time", "peak memory")
    assert plan.ablations[4].action == "ADD"


def test_jsonl_plan_parses_lists_strings_and_nulls():
    plan = parse_plan(PLANS / "intra_plan.jsonl")
    assert plan.format == "jsonl"
    assert [a.name for a in plan.ablations] == ["Margin sweep", "No anchor filtering", "Temperature", "Intra loss off"]
    assert plan.ablations[0].line == 1 and plan.ablations[1].line == 3  # blank lines are skipped, lines counted
    assert plan.ablations[1].metrics == ("Top-1 Accuracy", "Convergence Speed", "Training Stability")
    assert plan.ablations[2].replacements == ("0.05", "0.5")  # an inline numeric list is split


@pytest.mark.parametrize("name, message", [
    ("empty.md", "the plan file is empty"),
    ("no_plan.md", "no ablation plan found"),
    ("bad_action.md", "bad_action.md:7: ablation 'Margin': unknown action 'TWEAK'; use REMOVE, REPLACE or ADD"),
    ("bad_line.jsonl", "bad_line.jsonl:2: not valid JSON"),
    ("replace_without_values.md", "is REPLACE but lists no"),
])
def test_malformed_plans_give_clear_errors(name, message):
    with pytest.raises(PlanError) as err:
        parse_plan(PLANS / name)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_plan_file():
    with pytest.raises(PlanError, match="not found"):
        parse_plan(PLANS / "nope.md")


def test_json_object_that_is_not_an_ablation(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"name": "a", "action": "REMOVE"}\n')
    with pytest.raises(PlanError, match=r"x.jsonl:1: missing 'ablated_part'"):
        parse_plan(p)


# --------------------------------------------------------------------------------------------- resolution
def test_renamed_intra_plan_resolves_to_the_intended_grid():
    grid = resolve_plan(parse_plan(PLANS / "intra_renamed.md"))
    assert grid.scope == "intra" and grid.base_name == "ablation/intra_digits"
    assert grid.seeds == [0, 1, 2]
    assert grid_of(grid) == [
        ("intra.delta", "REPLACE", ["0.2", "0.8", "-0.5"]),
        ("intra.cache_size", "REPLACE", ["16", "256"]),
        ("objective.kind", "REPLACE", ["supcon", "simclr"]),
        ("intra.cache", "REMOVE", ["removed"]),
        ("distill.methods", "ADD", ["+rkd"]),
        ("intra.lambda", "REPLACE", ["0", "0.01", "0.05"]),
        ("view_augment", "REPLACE", ["[rrc, color_jitter]"]),
        ("view_augment", "ADD", ["+cutout"]),
    ]
    ov = overrides_of(grid)
    assert ov[0] == [{"objective.intra.delta": 0.2}, {"objective.intra.delta": 0.8}, {"objective.intra.delta": -0.5}]
    assert ov[1] == [{"objective.intra.cache.size": 16}, {"objective.intra.cache.size": 256}]
    # replacing the loss keeps the base's lambda and temperature
    assert ov[2][0] == {"objective.kind": "supcon", "objective.supcon.lambda_": 0.02, "objective.supcon.tau": 0.1}
    assert ov[3] == [{"objective.intra.cache.enabled": False}]
    assert ov[4] == [{"distill.methods": ["kd", "rkd"]}]
    assert ov[7] == [{"data.view_augment": ["crop", "cutout"]}]
    metrics = [[(m.name, m.keys) for m in a.metrics] for a in grid.ablations]
    assert metrics[0] == [("Top-1 accuracy (%)", ("top1",)), ("convergence speed", ("convergence_epoch",))]
    assert metrics[1][1] == ("GPU memory footprint", ("peak_mem_mb",))
    assert metrics[5] == [("Top-1 Accuracy", ("top1",)), ("Training Stability", ("loss_std", "loss_spikes")),
                          ("Frobnication index", ())]  # unknown metric: kept, not measured


def test_renamed_cocord_plan_resolves_to_the_intended_grid():
    grid = resolve_plan(parse_plan(PLANS / "cocord_renamed.md"))
    assert grid.scope == "cocord" and grid.base_name == "ablation/cocord_digits"
    assert grid_of(grid) == [
        ("cocord.queue_size", "REPLACE", ["256", "1024", "2048"]),
        ("cocord.m_r", "REPLACE", ["0", "0.99"]),
        ("cocord.pred_weight", "REMOVE", ["removed"]),
        ("cocord.tau", "REPLACE", ["0.05", "0.2"]),  # "temperature" in a CoCoRD plan is CoCoRD's tau
        ("cocord.m_c", "REPLACE", ["0.99", "1"]),
        ("cocord.pred", "REPLACE", ["reverse", "forward", "both"]),
        ("cocord.memory", "REPLACE", ["bank"]),
    ]
    assert grid.ablations[5].variants[2].same_as_base
    assert overrides_of(grid)[2] == [{"distill.cocord.pred_weight": 0.0}]
    assert not any(a.teacher_varies for a in grid.ablations)  # one CE teacher shared by every variant


def test_jsonl_plans_resolve():
    grid = resolve_plan(parse_plan(PLANS / "intra_plan.jsonl"))
    assert grid_of(grid) == [
        ("intra.delta", "REPLACE", ["0.1", "0.9"]),
        ("intra.margin", "REMOVE", ["removed"]),
        ("intra.tau", "REPLACE", ["0.05", "0.5"]),
        ("objective.kind", "REMOVE", ["removed"]),
    ]
    assert overrides_of(grid)[3] == [{"objective.kind": "ce"}]
    assert grid.ablations[3].metrics[1].stage == "teacher"
    grid = resolve_plan(parse_plan(PLANS / "cocord_plan.jsonl"))
    assert grid.scope == "cocord"
    assert grid_of(grid) == [("cocord.queue_size", "REPLACE", ["512", "4096"]),
                             ("cocord.pred_weight", "REPLACE", ["1", "8"])]


PHRASINGS = [
    # (method, ablated part, action, replacements, knob, expected overrides of the first variant)
    ("intra", "margin-based selection", "REMOVE", [], "intra.margin", {"objective.intra.margin": False}),
    ("intra", "Margin threshold", "REMOVE", [], "intra.delta", {"objective.intra.margin": False}),
    ("intra", "anchor filtering by teacher confidence", "REMOVE", [], "intra.margin", {"objective.intra.margin": False}),
    ("intra", "confidence threshold", "REPLACE", ["0.25"], "intra.delta", {"objective.intra.delta": 0.25}),
    ("intra", "pipeline queue", "REMOVE", [], "intra.cache", {"objective.intra.cache.enabled": False}),
    ("intra", "caching mechanism", "REMOVE", [], "intra.cache", {"objective.intra.cache.enabled": False}),
    ("intra", "memory queue", "REMOVE", [], "intra.cache", {"objective.intra.cache.enabled": False}),
    ("intra", "negative bank length", "REPLACE", ["32"], "intra.cache_size", {"objective.intra.cache.size": 32}),
    ("intra", "cache update strategy", "REPLACE", ["flush after each computation"], "intra.cache_mode",
     {"objective.intra.cache.mode": "flush"}),
    ("intra", "intra-class loss entirely", "REMOVE", [], "objective.kind", {"objective.kind": "ce"}),
    ("intra", "weight of the intra-class loss", "REMOVE", [], "intra.lambda", {"objective.intra.lambda_": 0.0}),
    ("intra", "Trade-off hyperparameter λ", "REPLACE", ["λ = 0.05"], "intra.lambda", {"objective.intra.lambda_": 0.05}),
    ("intra", "temperature", "REPLACE", ["0.2"], "intra.tau", {"objective.intra.tau": 0.2}),
    ("intra", "temperature of InfoNCE", "REPLACE", ["0.2"], "intra.tau", {"objective.intra.tau": 0.2}),
    ("intra", "KD temperature T", "REPLACE", ["8"], "kd.T", {"distill.kd.T": 8.0}),
    ("intra", "projection head depth", "REPLACE", ["single-layer MLP"], "head.kind", {"objective.head.kind": "linear"}),
    ("intra", "projection head", "REPLACE", ["linear projection"], "head.kind", {"objective.head.kind": "linear"}),
    ("intra", "projection head", "REMOVE", [], "head.kind", {"objective.head.kind": "none"}),
    ("intra", "positive sample source", "REPLACE", ["memory bank of previous embeddings"], "intra.positive",
     {"objective.intra.positive": "memory"}),
    ("intra", "Teacher training objective", "REPLACE", ["CE + SupCon"], "objective.kind",
     {"objective.kind": "supcon", "objective.supcon.lambda_": 0.02, "objective.supcon.tau": 0.1}),
    ("intra", "Combining with RKD (Ours+RKD)", "ADD", [], "distill.methods", {"distill.methods": ["kd", "rkd"]}),
    ("intra", "Distillation loss used for the student", "REPLACE", ["KD + CRD"], "distill.methods",
     {"distill.methods": ["kd", "crd"]}),
    ("intra", "Gaussian blur augmentation", "ADD", [], "view_augment", {"data.view_augment": ["crop", "blur"]}),
    ("intra", "student architecture", "REPLACE", ["ResNet-20"], "student.arch", {"student.arch": "resnet20"}),
    ("intra", "teacher-student pair", "REPLACE", ["WRN-40-2 -> WRN-16-2"], "arch.pair",
     {"teacher.arch": "wrn_40_2", "student.arch": "wrn_16_2"}),
    ("intra", "number of training epochs", "REPLACE", ["3"], "epochs", {"teacher.epochs": 3, "student.epochs": 3}),
    ("intra", "label smoothing", "ADD", [], "label_smoothing", {"objective.label_smoothing": 0.1}),
    ("intra", "δ", "REPLACE", ["0.3"], "intra.delta", {"objective.intra.delta": 0.3}),  # intact Greek is read
    ("intra", "Dataset size", "REPLACE", ["50%"], "subset", {"data.subset": 718}),
    ("intra", "mixed precision", "REMOVE", [], "amp", {"runtime.amp": "off"}),
    ("intra", "KD loss on the student", "REMOVE", [], "distill.methods", {"distill.methods": []}),
    ("cocord", "τ", "REPLACE", ["0.2"], "cocord.tau", {"distill.cocord.tau": 0.2}),
    ("cocord", "位ctr", "REPLACE", ["2"], "cocord.ctr_weight", {"distill.cocord.ctr_weight": 2.0}),
    ("cocord", "dictionary size N", "REPLACE", ["4096"], "cocord.queue_size", {"distill.cocord.queue_size": 4096}),
    ("cocord", "negative bank length", "REPLACE", ["2^10"], "cocord.queue_size", {"distill.cocord.queue_size": 1024}),
    ("cocord", "momentum coefficient of the teacher head", "REPLACE", ["0.99"], "cocord.m_c", {"distill.cocord.m_c": 0.99}),
    ("cocord", "slow-moving student", "REMOVE", [], "cocord.m_r", {"distill.cocord.m_r": 0.0}),
    ("cocord", "consistency loss", "REMOVE", [], "cocord.pred_weight", {"distill.cocord.pred_weight": 0.0}),
    ("cocord", "temperature of InfoNCE", "REPLACE", ["0.2"], "cocord.tau", {"distill.cocord.tau": 0.2}),
    ("cocord", "classification loss weight λcls", "REPLACE", ["0.5"], "ce_weight", {"distill.ce_weight": 0.5}),
    ("cocord", "symmetrization of Lpred", "REMOVE", [], "cocord.pred", {"distill.cocord.pred": "forward"}),
    ("cocord", "Prediction loss (L_pred) between student and slow-moving student", "REMOVE", [], "cocord.pred_weight",
     {"distill.cocord.pred_weight": 0.0}),
    # plans written by outside researchers (tests/plans/outside_*.md and the phrasings below)
    ("intra", "The weighting coefficient λ that scales the intra-class contrastive term in the teacher loss", "REPLACE",
     ["λ ∈ {0.005, 0.05, 0.1}"], "intra.lambda", {"objective.intra.lambda_": 0.005}),  # a set, not one value
    ("intra", "How the positive for each anchor is chosen", "REPLACE",
     ["memory (embedding of the same image from the previous epoch)"], "intra.positive", {"objective.intra.positive": "memory"}),
    ("intra", "number of views per image fed to the teacher", "REPLACE", ["1 view"], "views",
     {"objective.views": 1, "objective.intra.positive": "memory"}),  # one view: the positive comes from memory
    ("intra", "Training epochs for teacher and student", "REPLACE", ["3 epochs"], "epochs",
     {"teacher.epochs": 3, "student.epochs": 3}),  # not teacher.epochs or student.epochs
    ("intra", "initial learning rate of the student", "REPLACE", ["0.01"], "student.lr", {"student.optim.lr": 0.01}),
    ("intra", "weight decay regularisation", "REMOVE", [], "weight_decay",
     {"teacher.optim.weight_decay": 0.0, "student.optim.weight_decay": 0.0}),  # not the intra-class λ
    ("intra", "Cutout augmentation for training images", "ADD", [], "augment", {"data.augment": ["crop", "cutout"]}),
    ("intra", "KD loss of the student (student trained on hard labels only)", "REMOVE", [], "distill.methods",
     {"distill.methods": []}),  # the explanation in parentheses does not make it the CE weight
    ("intra", "Contrastive representation distillation on top of the proposed method (Ours+CRD)", "ADD", [],
     "distill.methods", {"distill.methods": ["kd", "crd"]}),
    ("intra", "the intra-class contrastive loss (λ = 0, i.e. vanilla CE teacher)", "REMOVE", [], "objective.kind",
     {"objective.kind": "ce"}),  # removing the loss also voids λ: one component, not an ambiguity
    ("intra", "Temperature T of the KD loss for the student", "REPLACE", ["T=8"], "kd.T", {"distill.kd.T": 8.0}),
    ("intra", "Nesterov momentum in SGD", "ADD", [], "nesterov",
     {"teacher.optim.nesterov": True, "student.optim.nesterov": True}),
    ("intra", "Dataset used for training and evaluation", "REPLACE", ["CIFAR-100"], "dataset", {"data.name": "cifar100"}),
    ("intra", "Teacher/student architecture pairs (same and different families)", "REPLACE", ["WRN-40-2 / ShuffleNetV1"],
     "arch.pair", {"teacher.arch": "wrn_40_2", "student.arch": "ShuffleV1"}),
    ("intra", "Logit standardization of the KD logits", "ADD", [], "kd.logit_std", {"distill.kd.logit_std": True}),
    ("intra", "Logit standardization on DKD", "ADD", [], "dkd.logit_std", {"distill.dkd.logit_std": True}),
    ("intra", "CTKD gradient reversal strength", "REPLACE", ["0.5"], "ctkd.lambda_max", {"distill.ctkd.lambda_max": 0.5}),
    ("cocord", "classification (cross-entropy) loss of the student, λcls", "REMOVE", [], "ce_weight", {"distill.ce_weight": 0.0}),
    ("cocord", "Size N of the teacher dictionary (queue of negative keys)", "REPLACE", ["N = 4K"], "cocord.queue_size",
     {"distill.cocord.queue_size": 4096}),
    # plans an outside reviewer wrote against kdlab: readings that used to be silently wrong
    ("intra", "Student architecture", "REPLACE", ["ResNet8 → ResNet20"], "student.arch",
     {"student.arch": "resnet20"}),  # a change of the student, not a teacher -> student pair
    ("intra", "Number of views", "REPLACE", ["2 → 4"], "views", {"objective.views": 4}),
    ("intra", "Cache size Q", "REPLACE", ["4x larger (256)"], "intra.cache_size", {"objective.intra.cache.size": 256}),
    ("intra", "Student distillation method", "REPLACE", ["DKD, CRD, RKD"], "distill.methods",
     {"distill.methods": ["dkd"]}),  # three students to compare, not one with three losses
    ("intra", "Second augmented view (positive pair)", "REMOVE", [], "views",
     {"objective.views": 1, "objective.intra.positive": "memory"}),
    ("intra", "temperature", "REPLACE", ["2", "6"], "kd.T", {"distill.kd.T": 2.0}),  # KD-scale values
    ("intra", "Temperature", "REPLACE", ["1", "4", "8", "16"], "kd.T", {"distill.kd.T": 1.0}),
    ("intra", "KL-divergence distillation loss", "REMOVE", [], "kd.weight",
     {"distill.methods": []}),  # KD out, so the CE weight is the student-alone's 1, not KD's 0.1
    ("intra", "Î´", "REPLACE", ["Î´ = 0.2"], "intra.delta", {"objective.intra.delta": 0.2}),  # UTF-8 read as cp1252
    ("intra", "Ï„ sensitivity", "REPLACE", ["Ï„ = 0.05"], "intra.tau", {"objective.intra.tau": 0.05}),
    ("intra", "cache size", "REPLACE", ["0", "32"], "intra.cache_size",
     {"objective.intra.cache.enabled": False}),  # no entries is no cache
    ("intra", "weight of L_Intra", "REPLACE", ["1/100, 1/10"], "intra.lambda", {"objective.intra.lambda_": 0.01}),
    # a depth for a network is the base's family at that depth (base teacher resnet14, student resnet8)
    ("intra", "Teacher depth (number of layers)", "REPLACE", ["20", "32", "56"], "teacher.arch", {"teacher.arch": "resnet20"}),
    ("intra", "Student depth", "REPLACE", ["20"], "student.arch", {"student.arch": "resnet20"}),
    ("intra", "Teacher architecture", "REPLACE", ["same as the student (self-distillation)"], "teacher.arch",
     {"teacher.arch": "resnet8"}),
    # k images per class of a stratified subset: k x 10 classes on digits (not epochs, not the cache size)
    ("intra", "Number of training images per class", "REPLACE", ["10", "50"], "subset", {"data.subset": 100}),
    ("intra", "Number of samples per class", "REPLACE", ["20"], "subset", {"data.subset": 200}),
    # typeset powers of ten; "not use"; "twice as many"
    ("intra", "λ (weight of L_Intra)", "REPLACE", ["5 × 10⁻³", "2·10⁻²"], "intra.lambda", {"objective.intra.lambda_": 0.005}),
    ("intra", "cache for negative of same class", "REPLACE", ["not use"], "intra.cache", {"objective.intra.cache.enabled": False}),
    ("intra", "Teacher epochs", "REPLACE", ["twice as many"], "teacher.epochs", {"teacher.epochs": 12}),
    # an optimiser's own settings in its value go with it
    ("intra", "Optimizer", "REPLACE", ["AdamW (lr 3e-4, weight decay 0.05)"], "optimizer",
     {"teacher.optim.optimizer": "adamw", "student.optim.optimizer": "adamw", "teacher.optim.lr": 3e-4,
      "student.optim.lr": 3e-4, "teacher.optim.weight_decay": 0.05, "student.optim.weight_decay": 0.05}),
    ("intra", "Optimizer", "REPLACE", ["SGD with Nesterov momentum"], "optimizer",
     {"teacher.optim.optimizer": "sgd", "student.optim.optimizer": "sgd", "teacher.optim.nesterov": True,
      "student.optim.nesterov": True}),
    # one stage's optimiser settings; both stages' when no stage is named
    ("intra", "Weight decay of the teacher", "REPLACE", ["1e-4"], "teacher.weight_decay", {"teacher.optim.weight_decay": 1e-4}),
    ("intra", "Student learning-rate schedule", "REPLACE", ["constant"], "student.schedule",
     {"student.optim.schedule": "constant"}),
    ("intra", "Momentum of the student's SGD", "REPLACE", ["0.5"], "student.momentum", {"student.optim.momentum": 0.5}),
    ("intra", "Warm-up epochs for the student", "REPLACE", ["2"], "student.warmup", {"student.optim.warmup_epochs": 2}),
    ("intra", "Weight decay", "REPLACE", ["1e-4"], "weight_decay",
     {"teacher.optim.weight_decay": 1e-4, "student.optim.weight_decay": 1e-4}),
    # an augmentation named in the part of an ADD goes to the contrastive views' augmentation
    ("intra", "Colour jitter for the contrastive views", "ADD", [], "view_augment",
     {"data.view_augment": ["crop", "color_jitter"]}),
    # ranges with a lead ("sweep over λ ∈ [a, b], …") and signed percentages of the base's value
    ("intra", "λ", "REPLACE", ["sweep over λ ∈ [0.001, 0.1], log-spaced, 3 points"], "intra.lambda",
     {"objective.intra.lambda_": 0.001}),
    ("intra", "λ", "REPLACE", ["+50%", "-50%"], "intra.lambda", {"objective.intra.lambda_": 0.03}),
    # a method swap whose part names the method it replaces
    ("intra", "Vanilla KD in the student", "REPLACE", ["CTKD"], "distill.methods", {"distill.methods": ["ctkd"]}),
    # an ADD whose value holds only the settings of the method the part names
    ("intra", "FitNet hint loss on the student", "ADD", ["hint layer 2, weight 50"], "distill.methods",
     {"distill.methods": ["kd", "fitnet"], "distill.fitnet.hint_layer": 2, "distill.fitnet.weight": 50.0}),
    # removing the contrastive term but keeping its two views: a CE teacher on both views
    ("intra", "Intra-class contrastive loss (the two augmented views are kept for CE)", "REMOVE", [], "objective.kind",
     {"objective.kind": "ce", "objective.views": 2}),
    # a method's own defaults said beside it are the plain swap
    ("intra", "Student distillation loss (KD → DKD)", "REPLACE", ["DKD (α=1, β=8, T=4)"], "distill.methods",
     {"distill.methods": ["dkd"]}),
    # numbers for an on/off part are the sizes of what it switches: 0 entries is no cache
    ("intra", "Per-class cache", "REPLACE", ["0", "128"], "intra.cache_size", {"objective.intra.cache.enabled": False}),
    ("intra", "Per-class cache", "REPLACE", ["128", "512"], "intra.cache_size", {"objective.intra.cache.size": 128}),
    ("intra", "Per-class cache", "REPLACE", ["on", "off"], "intra.cache", {"objective.intra.cache.enabled": True}),
    ("intra", "Margin filter and cache (both)", "REMOVE", [], "intra.margin",
     {"objective.intra.margin": False, "objective.intra.cache.enabled": False}),
    ("intra", "margin-based selection and caching of negatives", "REMOVE", [], "intra.margin",
     {"objective.intra.margin": False, "objective.intra.cache.enabled": False}),
    ("intra", "the intra-class contrastive loss and its margin filter", "REMOVE", [], "objective.kind",
     {"objective.kind": "ce"}),  # removing the loss removes its margin: one component, the outer one
    ("intra", "Teacher guidance", "REMOVE", [], "distill.methods", {"distill.methods": []}),
    ("intra", "α balancing hard and soft targets in the student's KD loss", "REPLACE", ["0.7"], "kd.alpha",
     {"distill.kd.weight": 0.7, "distill.ce_weight": 0.3}),  # Hinton's convention: CE takes 1 - α
    ("intra", "Margin threshold δ", "REPLACE", ["we try δ = 0.3 and δ = 0.7"], "intra.delta",
     {"objective.intra.delta": 0.3}),  # two labelled values, not the last one alone
    ("intra", "Intra-class loss weight λ", "REPLACE", ["0.01 (weak) vs λ = 0.1"], "intra.lambda",
     {"objective.intra.lambda_": 0.01}),
    ("intra", "Margin threshold δ", "REPLACE", ["0.7 instead of 0.5"], "intra.delta", {"objective.intra.delta": 0.7}),
    ("intra", "Margin threshold δ", "REPLACE", ["increase δ from 0.5 to 0.7"], "intra.delta",
     {"objective.intra.delta": 0.7}),  # starts at the base's 0.5: a change, not a range
    ("intra", "Ratio-based adaptive λ", "ADD", [], "intra.lambda_schedule",
     {"objective.intra.lambda_schedule": "ratio"}),  # the schedule the part names, not the knob's default ADD
    ("intra", "RKD loss (weight 2.0) added to KD", "ADD", [], "distill.methods",
     {"distill.methods": ["kd", "rkd"], "distill.rkd.weight": 2.0}),
    ("intra", "NCKD term in DKD", "REMOVE", [], "dkd.beta", {"distill.dkd.beta": 0.0}),  # on the DKD student's own base
    ("intra", "Temperature (τ) of the soft targets when distilling into the student", "REPLACE", ["τ=2", "τ=8"], "kd.T",
     {"distill.kd.T": 2.0}),
    ("intra", "KD temperature", "REPLACE", ["1/2 of the default"], "kd.T", {"distill.kd.T": 2.0}),  # base T = 4
    ("intra", "Distillation method", "REPLACE", ["DKD, CRD and RKD"], "distill.methods", {"distill.methods": ["dkd"]}),
    ("intra", "Batch size", "REPLACE", ["32/128"], "batch_size", {"data.batch_size": 32}),  # a list, not 0.25
    ("intra", "Loss weight Î»", "REPLACE", ["0.02 â†’ 0.05"], "intra.lambda", {"objective.intra.lambda_": 0.05}),
    ("intra", "Number of teacher and student epochs", "REPLACE", ["10"], "epochs",
     {"teacher.epochs": 10, "student.epochs": 10}),
    ("intra", "Margin filter and temperature scaling", "REMOVE", [], "intra.margin",
     {"objective.intra.margin": False}),  # with a warning that the temperature is not removed
    ("cocord", "Prediction loss direction", "REPLACE", ["student → teacher only"], "cocord.pred",
     {"distill.cocord.pred": "forward"}),  # an arrow between words that are no values is prose
]


@pytest.mark.parametrize("scope, part, action, reps, knob, first", PHRASINGS)
def test_other_phrasings_resolve(scope, part, action, reps, knob, first):
    rep = "\n".join(f"  - {r}" for r in reps)
    title = "Contrastive_Consistent_Representation_Distillation" if scope == "cocord" else \
        "Enriching_Knowledge_Distillation_with_Intra_Class_Contrastive_Learning"
    text = f"# lm-planner/m/{title}\n\n<h2>Ablation Plan</h2>\n\n### A\n- **Ablated Part**: {part}\n" \
           f"- **Action**: {action}\n" + (f"- **Replacement**: \n{rep}\n" if reps else "") + "- **Metrics**: accuracy\n"
    grid = resolve_plan(parse_plan_text(text, "phrasing.md"))
    assert grid.scope == scope
    a = grid.ablations[0]
    assert a.knob.name == knob
    assert a.variants[0].overrides == first


def test_table_and_heading_less_plan_by_an_outside_researcher():
    plan = parse_plan(PLANS / "outside_table.md")
    assert [a.name for a in plan.ablations] == ["Lambda sweep", "No margin", "Head BN",
                                                "Number of negatives in the cache", "Projection head variants"]
    assert plan.ablations[0].replacements == ("0.01", "0.1") and plan.ablations[1].replacements == ()
    assert plan.ablations[0].line == 9 and plan.ablations[3].line == 14
    grid = resolve_plan(plan)
    assert grid_of(grid) == [
        ("intra.lambda", "REPLACE", ["0.01", "0.1"]),
        ("intra.margin", "REMOVE", ["removed"]),
        ("head.bn", "REMOVE", ["removed"]),
        ("intra.cache_size", "REPLACE", ["16", "256", "1024"]),  # an inline list that is not one value is split
        ("head.kind", "REPLACE", ["linear", "mlp3", "none"]),
    ]
    assert overrides_of(grid)[4][2] == {"objective.head.kind": "none"}
    assert [m.keys for m in grid.ablations[4].metrics] == [("top1",), ("test_loss",)]


def test_table_row_without_part_is_an_error():
    text = "## Ablation Plan\n\n| Name | Ablated Part | Action |\n|---|---|---|\n| a |  | REMOVE |\n"
    with pytest.raises(PlanError, match=r"t.md:5: table row has no 'Ablated Part' cell"):
        parse_plan_text(text, "t.md")


def test_distiller_hyperparameters_extend_the_shipped_base(tmp_path):
    p = tmp_path / "dkd.jsonl"
    p.write_text("\n".join(json.dumps(o) for o in [
        {"name": "DKD beta", "ablated_part": "DKD β (weight of non-target class knowledge)", "action": "REPLACE",
         "replacement": [1, 16], "metrics": ["Top-1"]},
        {"name": "PKT", "ablated_part": "PKT loss weight", "action": "REPLACE", "replacement": "10000; 50000",
         "metrics": ["Top-1"]},
        {"name": "KD T", "ablated_part": "Temperature used in DKD", "action": "REPLACE", "replacement": [2], "metrics": []},
    ]) + "\n")
    grid = resolve_plan(parse_plan(p))
    # the plan's base is untouched; each of these ablations is compared with a student of its own method
    assert grid.base.distill.methods == ["kd"] and grid.overrides == []
    assert [a.base.distill.methods for a in grid.ablations] == [["dkd"], ["pkt"], ["dkd"]]
    assert all(v.config.distill.methods == a.base.distill.methods for a in grid.ablations for v in a.variants)
    assert "the dkd student" in grid.ablations[0].base_note
    assert overrides_of(grid) == [[{"distill.dkd.beta": 1.0}, {"distill.dkd.beta": 16.0}],
                                  [{"distill.pkt.weight": 10000.0}, {"distill.pkt.weight": 50000.0}],
                                  [{"distill.dkd.T": 2.0}]]
    # the DKD base is one config shared by both DKD ablations: plan base + dkd base + pkt base + 5 variants
    assert len(grid.configs()) == 1 + 2 + 5
    # an explicit distill.methods override is the user's choice: the knob's requirement is then an error naming the fix
    with pytest.raises(ResolveError) as err:
        resolve_plan(parse_plan(p), overrides=["distill.methods=[kd]"])
    assert "add the override distill.methods=[kd,dkd] after the plan" in str(err.value)
    # a plan that also ADDs DKD on top of the base keeps the plain base for that ablation
    p.write_text(p.read_text() + json.dumps({"name": "Ours+DKD", "ablated_part": "DKD on top of the student",
                                             "action": "ADD", "metrics": []}) + "\n")
    grid = resolve_plan(parse_plan(p))
    assert grid.ablations[3].base is None and overrides_of(grid)[3] == [{"distill.methods": ["kd", "dkd"]}]


def test_effective_base_values_replace_none_defaults(tmp_path):
    text = ("## Ablation Plan\n### a\n- Ablated Part: number of augmented views\n- Action: REPLACE\n- Replacement: 3\n"
            "### b\n- Ablated Part: KD loss weight\n- Action: REPLACE\n- Replacement: 0.5\n")
    grid = resolve_plan(parse_plan_text(text, "v.md"))
    assert [a.base_value for a in grid.ablations] == [2, 0.9]


def test_things_kdlab_cannot_vary_say_so(tmp_path):
    p = tmp_path / "clip.jsonl"
    p.write_text(json.dumps({"name": "Clipping", "ablated_part": "Gradient clipping", "action": "REMOVE",
                             "metrics": []}) + "\n")
    with pytest.raises(ResolveError) as err:
        resolve_plan(parse_plan(p))
    assert "cannot place the ablated part 'Gradient clipping' on a knob: kdlab does not clip gradients" in str(err.value)


def test_optimizer_replacement_takes_adams_learning_rate_unless_the_plan_sets_one(tmp_path):
    p = tmp_path / "opt.jsonl"
    p.write_text("\n".join(json.dumps(o) for o in [
        {"name": "Optimizer", "ablated_part": "Optimizer (SGD with momentum)", "action": "REPLACE",
         "replacement": ["Adam", "AdamW"], "metrics": []},
        {"name": "Student optimizer", "ablated_part": "optimizer of the student", "action": "REPLACE",
         "replacement": ["AdamW"], "metrics": []},
    ]) + "\n")
    grid = resolve_plan(parse_plan(p))
    both = {"teacher.optim.lr": 1e-3, "student.optim.lr": 1e-3}
    assert overrides_of(grid) == [
        [{"teacher.optim.optimizer": "adam", "student.optim.optimizer": "adam", **both},
         {"teacher.optim.optimizer": "adamw", "student.optim.optimizer": "adamw", **both}],
        [{"student.optim.optimizer": "adamw", "student.optim.lr": 1e-3}],
    ]
    assert grid.ablations[1].variants[0].config.teacher.optim.optimizer == "sgd"


def test_unknown_part_lists_closest_knobs_and_map_fixes_it():
    plan = parse_plan(PLANS / "unknown_part.md")
    with pytest.raises(ResolveError) as err:
        resolve_plan(plan, strict=True)
    msg = str(err.value)
    assert "--strict" in msg and "nothing was run" in msg
    assert "cannot place the ablated part 'Gradient clipping norm'" in msg
    assert "Closest knobs" in msg
    assert '--map "Clip the gradients=' in msg
    grid = resolve_plan(plan)  # without --strict the other ablation resolves and runs
    assert grid_of(grid) == [("intra.delta", "REPLACE", ["0.3"])]
    [u] = grid.unresolved
    assert (u.index, u.ablation.name) == (2, "Clip the gradients")
    assert u.problems[0].fix.startswith('--map "Clip the gradients=')
    grid = resolve_plan(plan, maps=["Clip the gradients=distill.kd.T"])
    assert grid_of(grid)[1] == ("kd.T", "REPLACE", ["1", "5"])
    assert "--map" in grid.ablations[1].how
    # a map to any config path works, even one no knob names
    grid = resolve_plan(plan, maps=["clip the gradients=data.crop_padding"])
    assert overrides_of(grid)[1] == [{"data.crop_padding": 1}, {"data.crop_padding": 5}]
    with pytest.raises(ResolveError, match="matches no ablation"):
        resolve_plan(plan, maps=["Clip the gradients=distill.kd.T", "Nope=distill.kd.T"])
    with pytest.raises(ResolveError, match="neither a knob name nor a config path"):
        resolve_plan(plan, maps=["Clip the gradients=distill.kd.temperature"])


def test_out_of_range_values_are_errors():
    with pytest.raises(ResolveError) as err:
        resolve_plan(parse_plan(PLANS / "out_of_range.md"))
    msg = str(err.value)
    assert "2 problems" in msg
    assert "objective.intra.delta: input should be less than or equal to 1 (got 1.5)" in msg
    assert "objective.intra.lambda_: input should be greater than or equal to 0 (got -0.1)" in msg


def test_ambiguous_part_is_an_error(tmp_path):
    p = tmp_path / "amb.jsonl"
    p.write_text(json.dumps({"name": "Momentum", "ablated_part": "CoCoRD momentum", "action": "REPLACE",
                             "replacement": ["0.5", "0.99"], "metrics": ["Top-1"]}) + "\n")
    with pytest.raises(ResolveError) as err:
        resolve_plan(parse_plan(p))
    assert "ambiguous between cocord.m_" in str(err.value) and "--map" in str(err.value)
    grid = resolve_plan(parse_plan(p), maps=["Momentum=cocord.m_r"])
    assert overrides_of(grid) == [[{"distill.cocord.m_r": 0.5}, {"distill.cocord.m_r": 0.99}]]


def test_knob_without_effect_on_the_base_is_an_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"name": "q", "ablated_part": "dictionary size N", "action": "REPLACE",
                             "replacement": ["1024"], "metrics": []}) + "\n")
    fix = r"(?s)has no effect on this base.*fix: add the override distill.methods=\[kd,cocord\]"
    with pytest.raises(ResolveError, match=fix):
        resolve_plan(parse_plan(p), base="ablation/intra_digits")


def test_base_override_seeds_and_explicit_base():
    plan = parse_plan(PLANS / "cocord_plan.jsonl")
    grid = resolve_plan(plan, overrides=["distill.cocord.queue_size=256"], seeds=[5, 7])
    assert grid.seeds == [5, 7] and grid.base.distill.cocord.queue_size == 256
    assert [v.same_as_base for v in grid.ablations[0].variants] == [False, False]
    with pytest.raises(ResolveError, match="base config"):
        resolve_plan(plan, overrides=["distill.cocord.queue_size=0"])


@pytest.mark.parametrize("knob, text, value", [
    ("intra.lambda", "λ = 0.05", 0.05),
    ("intra.lambda", "1e-3", 0.001),
    ("intra.lambda", "位=0.03 (paper default)", 0.03),
    ("intra.delta", "50%", 0.5),
    ("intra.delta", "δ -0.25", -0.25),
    ("intra.cache_size", "Q=256", 256),
    ("intra.cache_size", "256 negatives per class", 256),
    ("cocord.queue_size", "16K", 16384),
    ("cocord.queue_size", "10k", 10000),
    ("intra.margin", "off", False),
    ("intra.margin", "with margin", True),
    ("cocord.pred", "L̃pred only", "reverse"),
    ("cocord.pred", "non-symmetric", "forward"),
    ("objective.kind", "self-supervised contrastive learning", "simclr"),
    ("objective.kind", "inter-class contrastive learning", "supcon"),
    ("head.kind", "2-layer MLP", "mlp2"),
    ("view_augment", "RandomResizedCrop + ColorJitter", ["rrc", "color_jitter"]),
    ("view_augment", "random crop, horizontal flip and Gaussian blur", ["crop", "flip", "blur"]),
    ("view_augment", "no augmentation", []),
    ("distill.methods", "Ours+RKD", ["kd", "rkd"]),
    ("distill.methods", "CE only", []),
    ("student.arch", "ShuffleNetV2", "ShuffleV2"),
    ("student.arch", "ResNet32×4", "resnet32x4"),
    ("teacher.arch", "MobileNet-V2", "MobileNetV2"),
    ("arch.pair", "student resnet8 with teacher resnet56", ("resnet56", "resnet8")),
    ("fitnet.hint_layer", "last stage (-1)", -1),  # the words describe the number in parentheses
    ("intra.delta", "δ = 0 (no filtering of confident samples)", 0.0),
    ("dataset", "Tiny-ImageNet", "tiny-imagenet"),
    ("intra.lambda", "1/100", 0.01),
    ("intra.lambda", "0.2 (10x)", 0.2),  # the remark in parentheses describes the number
    ("intra.lambda", "1.5 x 10^-3", 0.0015),
    ("intra.delta", "either 0.3", 0.3),
    ("teacher.arch", "ResNet-110 -> ResNet-56", "resnet56"),  # no base given: the start is not checked
    ("arch.pair", "ResNet-110 -> ResNet-56", ("resnet110", "resnet56")),  # a pair's arrow is teacher -> student
])
def test_value_parsing(knob, text, value):
    from kdlab.ablation.knobs import knob_by_name

    assert parse_value(knob_by_name(knob), text) == value


@pytest.mark.parametrize("knob, text", [
    ("intra.delta", "ResNet-8"), ("intra.delta", "0.1 to 0.9"), ("intra.cache_size", "12.5"),
    ("intra.margin", "0.5"), ("objective.kind", "banana"), ("student.arch", "resnet9000"),
])
def test_values_that_do_not_parse(knob, text):
    from kdlab.ablation.knobs import knob_by_name

    with pytest.raises(ValueError):
        parse_value(knob_by_name(knob), text)


@pytest.mark.parametrize("name, keys, stage", [
    ("Top-1 accuracy (%)", ("top1",), None), ("accuracy", ("top1",), None), ("Top-5 accuracy", ("top5",), None),
    ("Convergence Speed", ("convergence_epoch",), None), ("Training Stability", ("loss_std", "loss_spikes"), None),
    ("GPU Memory Utilization", ("peak_mem_mb",), None), ("loss", ("loss",), None), ("test loss", ("test_loss",), None),
    ("training time", ("train_time_s",), None), ("time per iteration", ("step_time_ms",), None),
    ("best accuracy", ("top1_best",), None), ("teacher accuracy", ("top1",), "teacher"),
    ("intra/inter-class distance ratio", ("intra_inter_ratio",), None), ("BLEU", (), None),
    ("NLL", ("test_loss",), None), ("ECE", ("ece",), None), ("Teacher Top-1 Acc.", ("top1",), "teacher"),
])
def test_metric_names_map_to_kdlab_keys(name, keys, stage):
    m = map_metric(name)
    assert m.keys == keys and m.stage == stage


def test_registry_points_at_real_config_paths_and_values_validate():
    _, intra = load_base(None, "intra", [])
    _, cocord = load_base(None, "cocord", [])
    names = [k.name for k in KNOBS]
    assert len(names) == len(set(names))
    for k in KNOBS:
        for p in k.paths + tuple(x for x in (k.off_path, k.on_path) if x):
            field_info(p)  # KeyError if the path does not exist
        info = field_info(k.path)
        if k.kind not in ("pair",):
            assert info.kind == k.kind, k.name
        if k.kind == "choice":
            assert set(k.choices) == set(info.choices), k.name
        base = cocord if k.scope == "cocord" else intra
        for value, path in ((k.off_value, k.off_path), (k.on_value, k.on_path)):
            if value is not NOTHING:  # with the settings that must move with it (one view: the memory positive)
                build_config(base, list(_companions({path or k.path: value}, base).items()))
        assert k.aliases and k.description


def test_docs_knob_table_is_in_sync():
    doc = (ROOT / "docs" / "ABLATION.md").read_text()
    table = render_knob_table()
    assert table in doc, "docs/ABLATION.md is stale: paste kdlab.ablation.render_knob_table()"
    # and no rows of an earlier table are left around it (a paste that replaced only part of the old one)
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    assert len(rows) == len([line for line in table.splitlines() if line.startswith("| `")])


def test_shipped_bases_are_valid_and_cross_architecture_for_cocord():
    from kdlab.models import build_model, probe

    _, intra = load_base(None, "intra", [])
    _, cocord = load_base(None, "cocord", [])
    assert intra.objective.kind == "intra" and intra.data.name == "digits"
    assert cocord.objective.kind == "ce" and cocord.distill.methods == ["cocord"]
    t = probe(build_model(cocord.teacher.arch, 10, in_channels=1), (1, 8, 8)).pooled_dim
    s = probe(build_model(cocord.student.arch, 10, in_channels=1), (1, 8, 8)).pooled_dim
    assert t != s  # seed 004's m_c ablation is about a teacher/student pair with different feature sizes


# --------------------------------------------------------------------------------------------- seed plans
@shared
@needs_seeds
def test_seed_000_margin_threshold_and_lambda():
    grid = resolve_plan(parse_plan(seed_file("000")))
    assert grid.scope == "intra"
    assert grid_of(grid) == [
        ("intra.delta", "REPLACE", ["0", "0.1", "0.5", "0.9"]),
        ("intra.lambda", "REPLACE", ["0", "0.005", "0.01", "0.03", "0.05", "0.1"]),
    ]
    assert overrides_of(grid)[1][1] == {"objective.intra.lambda_": 0.005}
    assert [[m.keys for m in a.metrics] for a in grid.ablations] == [[("top1",)], [("top1",)]]


@shared
@needs_seeds
def test_seed_001_remove_margin_and_cache():
    grid = resolve_plan(parse_plan(seed_file("001")))
    assert grid_of(grid) == [("intra.margin", "REMOVE", ["removed"]), ("intra.cache", "REMOVE", ["removed"])]
    assert overrides_of(grid) == [[{"objective.intra.margin": False}], [{"objective.intra.cache.enabled": False}]]
    assert [[m.keys for m in a.metrics] for a in grid.ablations] == [
        [("top1",), ("convergence_epoch",), ("loss_std", "loss_spikes")],
        [("top1",), ("convergence_epoch",), ("peak_mem_mb",)],
    ]


@shared
@needs_seeds
def test_seed_002_margin_values_and_contrastive_method():
    grid = resolve_plan(parse_plan(seed_file("002")))
    assert grid_of(grid) == [("intra.delta", "REPLACE", ["0.1", "0.5", "1"]),
                             ("objective.kind", "REPLACE", ["supcon", "simclr"])]
    assert overrides_of(grid)[1] == [
        {"objective.kind": "supcon", "objective.supcon.lambda_": 0.02, "objective.supcon.tau": 0.1},
        {"objective.kind": "simclr", "objective.simclr.lambda_": 0.02, "objective.simclr.tau": 0.1},
    ]
    assert [[m.keys for m in a.metrics] for a in grid.ablations] == [[("top1",), ("loss",)]] * 2


@shared
@needs_seeds
def test_seed_003_is_not_a_plan():
    with pytest.raises(PlanError, match="no ablation plan found"):
        parse_plan(seed_file("003"))


@shared
@needs_seeds
def test_seed_004_cocord_symmetrisation_and_teacher_momentum():
    grid = resolve_plan(parse_plan(seed_file("004")))
    assert grid.scope == "cocord" and grid.base.teacher.arch == "resnet8x4" and grid.base.student.arch == "resnet8"
    assert grid_of(grid) == [("cocord.pred", "REPLACE", ["forward", "reverse"]),
                             ("cocord.m_c", "REPLACE", ["1", "0.999"])]
    assert overrides_of(grid) == [[{"distill.cocord.pred": "forward"}, {"distill.cocord.pred": "reverse"}],
                                  [{"distill.cocord.m_c": 1.0}, {"distill.cocord.m_c": 0.999}]]
    assert grid.ablations[1].variants[1].same_as_base


@shared
@needs_seeds
def test_seed_plans_dry_run(tmp_path, capsys):
    r = run_plan(seed_file("000"), dry_run=True, out=tmp_path / "o")
    out = capsys.readouterr().out
    assert "intra.delta" in out and "dry run" in out
    assert not (tmp_path / "o").exists() and r.execution is None


# --------------------------------------------------------------------------------------------- store
def test_keys_separate_what_matters():
    _, base = load_base(None, "intra", [])
    k = run_key(base)
    assert run_key(base.model_copy(update={"name": "other"})) == k
    assert run_key(build_config(base, ["runtime.threads=3", "runtime.progress=true"])) == k
    assert run_key(build_config(base, ["seed=1"])) != k
    assert run_key(build_config(base, ["objective.intra.delta=0.1"])) != k
    t = teacher_key(base)
    assert teacher_key(build_config(base, ["distill.kd.T=2", "student.arch=resnet20"])) == t
    assert teacher_key(build_config(base, ["objective.intra.delta=0.1"])) != t
    assert teacher_key(build_config(base, ["seed=1"])) != t
    assert teacher_key(build_config(base, ["runtime.deterministic=true"])) != t


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claims_busy_stale_and_foreign(tmp_path):
    store = Store(tmp_path)
    d = tmp_path / "runs" / "k1"
    c = store.try_claim(d)
    assert c is not None and store.claim_state(d) == "busy"
    assert store.try_claim(d) is None  # held by a live process (us)
    c.release()
    assert store.claim_state(d) == "free"
    # a claim left by a dead process is stale and taken over
    atomic_write_json(d / CLAIM, {"pid": _dead_pid(), "host": socket.gethostname(), "start": None})
    assert store.claim_state(d) == "stale"
    c = store.try_claim(d)
    assert c is not None
    c.release()
    # another host: stale only when its heartbeat is old
    atomic_write_json(d / CLAIM, {"pid": 1, "host": "elsewhere", "start": None})
    assert store.claim_state(d) == "busy"
    old = time.time() - 3600
    os.utime(d / CLAIM, (old, old))
    assert store.claim_state(d) == "stale"
    # a finished run cannot be claimed
    (d / CLAIM).unlink()
    store.write_record(d, {"status": "done", "metrics": {}})
    assert store.try_claim(d) is None
    assert json.loads((d / "record.json").read_text())["status"] == "done"
    assert not list(d.glob(".record.json.*"))  # no temp files left


# ---------------------------------------------------------------------------------- execution (fake stages)






# ------------------------------------------------------------------------------------- end to end (real)








def test_run_keys_ignore_later_added_runtime_keys_at_their_default():
    """Records made before runtime.sync_bn existed keep their keys; setting it makes a different run and teacher."""
    cfg = build_config()
    old = cfg.model_dump(mode="json")
    del old["runtime"]["sync_bn"]  # a config as written before the key was added
    assert run_key(cfg) == run_key(old) and teacher_key(cfg) == teacher_key(old)
    synced = build_config(overrides=["runtime.sync_bn=true"])
    assert run_key(synced) != run_key(cfg) and teacher_key(synced) != teacher_key(cfg)


@pytest.mark.parametrize("knob, text, value", [
    ("intra.lambda", "half of the default", 0.01),  # the shipped intra base has lambda 0.02
    ("intra.lambda", "double the default", 0.04),
    ("intra.lambda", "10 times smaller", 0.002),
    ("intra.cache_size", "4x larger", 256),  # and cache size 64
    ("intra.cache_size", "2x smaller", 32),
    ("views", "2 → 4", 4),
    ("student.arch", "ResNet8 → ResNet20", "resnet20"),
])
def test_values_relative_to_the_base(knob, text, value):
    from kdlab.ablation.knobs import knob_by_name

    _, base = load_base(None, "intra", [])
    assert (base.objective.intra.lambda_, base.objective.intra.cache.size, base.student.arch) == (0.02, 64, "resnet8")
    assert parse_value(knob_by_name(knob), text, base) == value


@pytest.mark.parametrize("knob, text, message", [
    ("teacher.arch", "ResNet56 -> ResNet20", "change from resnet56 to resnet20, but the base's teacher.arch is resnet14"),
    ("intra.delta", "λ=0.05, δ=0.3", "sets 2 things at once (delta, lambda)"),
    ("head.kind", "2-layer MLP without BN", "also switches batch norm off: ablate it with head.bn"),
    ("rkd.distance_weight", "1:4", "'1:4' is a ratio of two numbers"),  # distance : angle sets two knobs
    ("kd.alpha", "1 / 1", "expected one number, found 2"),  # "KD and CE weights: 1 / 1" is a pair, not α = 1
])
def test_values_that_say_more_than_one_change_are_refused_with_the_reason(knob, text, message):
    from kdlab.ablation.knobs import knob_by_name

    _, base = load_base(None, "intra", [])
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_value(knob_by_name(knob), text, base)


def _one(part: str, action: str, reps: tuple[str, ...] = ()):
    rep = "".join(f"\n  - {r}" for r in reps)
    text = ("# lm-planner/m/Enriching_Knowledge_Distillation_with_Intra_Class_Contrastive_Learning\n\n<h2>Ablation Plan</h2>"
            f"\n\n### A\n- **Ablated Part**: {part}\n- **Action**: {action}\n"
            + (f"- **Replacement**:{rep}\n" if reps else "") + "- **Metrics**: accuracy\n")
    return resolve_plan(parse_plan_text(text, "one.md")).ablations[0]


def test_an_ablation_inside_a_combination_runs_on_that_combination():
    # the angle term *of* RKD in Ours+RKD: that term off, on the KD + RKD student (not all of RKD, not RKD alone)
    a = _one("Angle-wise term of RKD in Ours+RKD", "REMOVE")
    assert a.knob.name == "rkd.angle_weight" and a.variants[0].overrides == {"distill.rkd.angle_weight": 0.0}
    assert a.base.distill.methods == ["kd", "rkd"] and "Ours+RKD" not in a.base_note and "rkd added" in a.base_note
    # the teacher's objective in Ours+RKD: the CE teacher's KD + RKD student against the intra teacher's
    a = _one("Teacher training objective in Ours+RKD", "REPLACE", ("standard CE teacher (KD+RKD)",))
    assert a.variants[0].overrides == {"objective.kind": "ce"} and a.base.distill.methods == ["kd", "rkd"]
    # without a combination, an RKD hyper-parameter gets the RKD student, as before
    a = _one("Weight of the RKD loss", "REPLACE", ("0.5", "2"))
    assert a.base.distill.methods == ["rkd"]
    # adding RKD itself is not done on a base that already has it
    a = _one("RKD on top of the KD student (Ours+RKD)", "ADD", ("RKD",))
    assert a.base is None and a.variants[0].overrides == {"distill.methods": ["kd", "rkd"]}  # the plan's base


def test_add_with_the_weights_of_the_added_methods_terms():
    a = _one("RKD loss added to the student objective", "ADD", ("RKD (distance weight 25, angle weight 100)",))
    assert a.variants[0].overrides == {"distill.methods": ["kd", "rkd"], "distill.rkd.distance_weight": 25.0,
                                       "distill.rkd.angle_weight": 100.0}  # the overall weight stays RKD's
    a = _one("RKD loss added to the student objective", "ADD", ("RKD (loss weight 2)",))
    assert a.variants[0].overrides == {"distill.methods": ["kd", "rkd"], "distill.rkd.weight": 2.0}
    assert "has no colour weight" in _reasons("RKD loss added to the student", "ADD", ("RKD (colour weight 3)",))
    assert "at has no setting 'beta'" in _reasons("Attention transfer", "ADD", ("β = 1000",))


@pytest.mark.parametrize("part, value, message", [
    ("Batch size", "64 (lr 0.025)", "also sets the lr (0.025)"),  # linear scaling: two knobs
    ("Projection head", "2-layer MLP, 256-d", "also sets a dimension (256-d)"),
    ("Training data", "50% of CIFAR-100", "also sets a fraction (50 %)"),
    ("Teacher depth", "21", "would be resnet21, which kdlab does not have (that family: resnet110, resnet14"),
    ("Training set size", "5000", "gives data.subset=5000, but digits has 1437 training images: every run would fail"),
    ("λ (intra-class weight)", "0.01–0.05", "range '0.01–0.05' gives no number of points"),
    ("Student distillation loss", "DKD (α=1, β=2)", "also sets alpha, beta"),  # β = 2 is not DKD's default
])
def test_a_value_that_sets_a_second_thing_is_refused(part, value, message):
    assert message in _reasons(part, "REPLACE", (value,))


def test_two_values_that_read_as_one_run_are_one_variant_with_a_warning():
    a = _one("Teacher epochs", "REPLACE", ("twice as many", "double", "3"))
    assert [v.raw for v in a.variants] == ["twice as many", "3"]
    assert "'double' reads as the same run as 'twice as many', so they are one variant" in " ".join(a.warnings)


def _reasons(part: str, action: str, reps: tuple[str, ...] = ()) -> str:
    rep = "".join(f"\n  - {r}" for r in reps)
    text = ("# lm-planner/m/Enriching_Knowledge_Distillation_with_Intra_Class_Contrastive_Learning\n\n<h2>Ablation Plan</h2>"
            f"\n\n### A\n- **Ablated Part**: {part}\n- **Action**: {action}\n"
            + (f"- **Replacement**:{rep}\n" if reps else "") + "- **Metrics**: accuracy\n")
    with pytest.raises(ResolveError) as err:
        resolve_plan(parse_plan_text(text, "refused.md"))
    return str(err.value)


@pytest.mark.parametrize("part, action, reps, message", [
    # every variant would be the base run: a table of identical runs under another name
    ("Label smoothing", "REMOVE", (), "every variant equals the base run (objective.label_smoothing=0)"),
    ("Intra-class contrastive loss applied to the student as well", "ADD", (), "'Intra-class contrastive loss applied"),
    # two knobs in one value are not split into values of one knob
    ("λ and δ jointly", "REPLACE", ("λ=0.05, δ=0.3", "λ=0.1, δ=0.7"), "sets 2 things at once"),
    ("Projection head", "REPLACE", ("2-layer MLP without BN",), "also switches batch norm off"),
    ("Similarity function (cosine similarity) in L_Intra", "REPLACE", ("dot product",), "no config key selects another"),
    ("Teacher model", "REPLACE", ("ResNet56 -> ResNet20",), "the base's teacher.arch is resnet14"),
    ("λ schedule", "REPLACE", ("ratio (target r = 0.5)",), "also sets r: an ablation varies one knob"),
    ("Cross-entropy loss of the teacher", "REMOVE", (), "the teacher is always trained with CE"),
    ("Cache and dropout", "REMOVE", (), "kdlab's networks have no dropout"),
    ("KD loss and CE loss", "REMOVE", (), "leaves the student no loss at all"),
    ("Range of the learnable temperature in CTKD", "REPLACE", ("[1, 10]", "[1, 40]"), "expected one number, found 2"),
])
def test_readings_that_would_mislead_are_refused_with_the_reason(part, action, reps, message):
    text = _reasons(part, action, reps)
    assert message in text and "nothing was run" in text


def test_view_augmentation_says_the_main_view_keeps_its_own_and_map_changes_every_view():
    text = ("# lm-planner/m/Enriching_Knowledge_Distillation_with_Intra_Class_Contrastive_Learning\n\n<h2>Ablation Plan</h2>"
            "\n\n### Aug\n- **Ablated Part**: Data augmentation\n- **Action**: REMOVE\n- **Metrics**: accuracy\n")
    grid = resolve_plan(parse_plan_text(text, "aug.md"))
    a = grid.ablations[0]
    assert (a.knob.name, a.variants[0].overrides) == ("view_augment", {"data.view_augment": []})
    assert any("main view of both stages keeps data.augment=[crop]" in w and '--map "Aug=augmentation"' in w
               for w in a.warnings)
    a = resolve_plan(parse_plan_text(text, "aug.md"), maps=["Aug=augmentation"]).ablations[0]
    assert a.variants[0].overrides == {"data.augment": [], "data.view_augment": []}
    assert a.variants[0].config.data.augment == [] and a.variants[0].config.data.view_augment == []
    cut = text.replace("REMOVE", "ADD").replace("Data augmentation", "Cutout")
    a = resolve_plan(parse_plan_text(cut, "aug.md"), maps=["Aug=augmentation"]).ablations[0]
    assert a.variants[0].overrides == {"data.augment": ["crop", "cutout"], "data.view_augment": ["crop", "cutout"]}


def test_removing_the_kd_weight_trains_the_student_without_kd_at_full_ce_weight():
    """kd.weight = 0 would keep KD's CE weight (0.1): a CE-only student at a tenth of its loss. REMOVE takes KD
    out of the methods instead, so the student is the one trained alone."""
    _, base = load_base(None, "intra", [])
    assert base.distill.methods == ["kd"] and base.distill.resolved_ce_weight() == pytest.approx(0.1)
    text = ("# lm-planner/m/Enriching_Knowledge_Distillation_with_Intra_Class_Contrastive_Learning\n\n<h2>Ablation Plan</h2>"
            "\n\n### No KD\n- **Ablated Part**: KL-divergence distillation loss\n- **Action**: REMOVE\n- **Metrics**: accuracy\n")
    v = resolve_plan(parse_plan_text(text, "kd.md")).ablations[0].variants[0]
    assert v.config.distill.methods == [] and v.config.distill.resolved_ce_weight() == 1.0


@pytest.mark.parametrize("text, values", [
    ("0.3 and 0.7", ["0.3", "0.7"]),
    ("T=2, T=8 and T=16", ["T=2", "T=8", "T=16"]),
    ("0.1 to 0.9, step 0.2", ["0.1", "0.3", "0.5", "0.7", "0.9"]),
    ("0.3 vs 0.5 and 0.7", ["0.3", "0.5", "0.7"]),
    ("from 0.3 to 0.7 in steps of 0.2", ["0.3", "0.5", "0.7"]),
])
def test_value_lists_written_as_prose(text, values):
    from kdlab.ablation.knobs import knob_by_name
    from kdlab.ablation.resolve import expand_values

    _, base = load_base(None, "intra", [])
    assert expand_values(knob_by_name("intra.delta"), [text], base) == values


def test_methods_joined_by_and_are_one_student_and_by_commas_several():
    from kdlab.ablation.knobs import knob_by_name
    from kdlab.ablation.resolve import expand_values

    methods = knob_by_name("distill.methods")
    assert expand_values(methods, ["KD and RKD"], None) == ["KD and RKD"]
    assert expand_values(methods, ["DKD, CRD or RKD"], None) == ["DKD", "CRD", "RKD"]


PLAN_LAYOUTS = {
    # a bold field this reader does not use ends the values above it
    "extra_fields.md": ("## Ablation Plan\n\n### Cache size\n- **Ablated Part**: Size Q of the per-class cache\n"
                        "- **Action**: REPLACE\n- **Replacement**: 16, 256\n- **Seeds**: 3\n- **Metrics**: Top-1\n\n"
                        "### KD temperature\n- **Ablated Part**: Temperature T of the KD loss\n- **Action**: REPLACE\n"
                        "- **Replacement**:\n  - 2\n  - 8\n- **Expected outcome**: 16\n- **Metrics**: Top-1\n",
                        [("Cache size", ("16", "256")), ("KD temperature", ("2", "8"))]),
    # a numbered title belongs to the ablation below it, not to the values of the one above
    "numbered.md": ("Ablation Plan\n\n1. Cache size\n   Ablated Part: size of the per-class cache\n   Action: REPLACE\n"
                    "   Metrics: top-1 accuracy\n   Replacement: 16, 256\n\n2. Teacher epochs (12)\n"
                    "   Ablated Part: number of teacher epochs\n   Action: REPLACE\n   Metrics: top-1\n   Replacement: 12\n",
                    [("Cache size", ("16", "256")), ("Teacher epochs (12)", ("12",))]),
    # Action before Ablated Part in blocks without headings
    "action_first.md": ("## Ablation Plan\n\n**Cache size**\n- **Action**: REPLACE\n- **Ablated Part**: size Q of the cache\n"
                        "- **Replacement**: 16, 256\n\n**Caching**\n- **Action**: REMOVE\n"
                        "- **Ablated Part**: caching scheme\n",
                        [("Cache size", ("16", "256")), ("Caching", ())]),
    # "**Ablation 2:** title" is a title, not an unused field
    "titled.md": ("## Ablation Plan\n\n**Ablation 1:** Cache size\n- **Ablated Part**: size Q of the cache\n"
                  "- **Action**: REPLACE\n- **Replacement**: 16, 256\n\n**Ablation 2:** Caching\n"
                  "- **Ablated Part**: caching scheme\n- **Action**: REMOVE\n",
                  [("Cache size", ("16", "256")), ("Caching", ())]),
    # an escaped pipe inside a table cell separates values, it does not end the cell
    "table.md": ("## Ablation Plan\n\n| Name | Ablated Part | Action | Replacement | Metrics |\n|---|---|---|---|---|\n"
                 "| ctr | CoCoRD contrastive weight | REPLACE | 0 \\| 0.5 \\| 2 | top-1 |\n",
                 [("ctr", ("0", "0.5", "2"))]),
}


@pytest.mark.parametrize("name", sorted(PLAN_LAYOUTS))
def test_plan_layouts_written_by_hand(name):
    text, want = PLAN_LAYOUTS[name]
    plan = parse_plan_text(text, name)
    assert [(a.name, a.replacements) for a in plan.ablations] == want


def test_a_knob_that_acts_under_a_setting_of_its_own_block_gets_a_base_with_it():
    """η acts only with the gradnorm λ schedule: on a constant-λ base the ablation gets a gradnorm base of its
    own (its base row is gradnorm at η = 0.1), as a distiller's hyper-parameter gets that distiller's student."""
    text = ("# lm-planner/m/Enriching_Knowledge_Distillation_with_Intra_Class_Contrastive_Learning\n\n<h2>Ablation Plan</h2>"
            "\n\n### Eta\n- **Ablated Part**: Gradient-norm ratio η of the adaptive λ\n- **Action**: REPLACE\n"
            "- **Replacement**: 0.05, 0.2\n\n### Delta\n- **Ablated Part**: margin threshold\n- **Action**: REPLACE\n"
            "- **Replacement**: 0.3\n")
    grid = resolve_plan(parse_plan_text(text, "eta.md"))
    eta, delta = grid.ablations
    assert grid.base.objective.intra.lambda_schedule == "constant"
    assert eta.base.objective.intra.lambda_schedule == "gradnorm" and eta.base.objective.intra.eta == 0.1
    assert "objective.intra.lambda_schedule=gradnorm" in eta.base_note
    assert [v.config.objective.intra.lambda_schedule for v in eta.variants] == ["gradnorm", "gradnorm"]
    assert [v.overrides for v in eta.variants] == [{"objective.intra.eta": 0.05}, {"objective.intra.eta": 0.2}]
    assert delta.base is None and delta.base_note == ""  # the plan's base
    schedules = sorted(c.objective.intra.lambda_schedule for c in grid.configs())
    assert schedules.count("gradnorm") == 3  # the own base and its two variants


def test_a_setting_the_plan_states_but_the_base_lacks_is_named():
    text = ("# Ablations\n\nAll runs use ResNet32x4 → ResNet8x4 on CIFAR-100 (240 epochs).\n\n## Ablation Plan\n\n"
            "### Pairs\n- **Ablated Part**: Teacher-student pair\n- **Action**: REPLACE\n"
            "- **Replacement**: ResNet56 → ResNet20\n- **Metrics**: accuracy\n\n"
            "### Margin\n- **Ablated Part**: Margin threshold δ\n- **Action**: REPLACE\n"
            "- **Replacement**: 0.3 (default), 0.7\n- **Metrics**: accuracy\n")
    grid = resolve_plan(parse_plan_text(text, "setting.md"))
    note = next(w for w in grid.warnings if "the plan's text names" in w)
    # the preamble's data set and pair, not the networks of the pair ablation's values
    assert "cifar100, resnet32x4, resnet8x4 (beside its values); this run uses digits with resnet14 -> resnet8" in note
    assert "resnet56" not in note and "data.name=cifar100 teacher.arch=resnet32x4 student.arch=resnet8x4" in note
    margin = grid.ablations[1]
    assert any("the plan calls '0.3 (default)' its default, but this base's intra.delta is 0.5" in w for w in margin.warnings)
    # a plan that names nothing of the kind gets no such note
    plain = text.replace("All runs use ResNet32x4 → ResNet8x4 on CIFAR-100 (240 epochs).", "")
    assert not any("the plan's text names" in w for w in resolve_plan(parse_plan_text(plain, "plain.md")).warnings)


def test_a_part_naming_one_stage_is_warned_when_the_setting_is_shared():
    a = _one("Student batch size", "REPLACE", ("32", "128"))
    assert a.knob.path == "data.batch_size"
    assert any("names the student, but data.batch_size is one setting of both stages" in w for w in a.warnings)
    assert not any("one setting of both stages" in w for w in _one("Batch size", "REPLACE", ("32", "128")).warnings)


def test_default_warnings_only_where_the_plan_and_the_base_disagree():
    # "(half of the default)" says how the value relates, not that it is the default
    a = _one("Contrastive temperature", "REPLACE", ("0.05 (half of the default) and 0.2 (double)",))
    assert not any("its default" in w for w in a.warnings)
    # the base's own value marked as the default is no disagreement, whatever key form it has (kd.weight None = 0.9)
    a = _one("Student KD weight", "REPLACE", ("0.5", "0.9 (default)"))
    assert not any("its default" in w for w in a.warnings)
    # a stage named for a knob with a per-stage twin chooses the twin
    assert _one("Teacher epochs only", "REPLACE", ("10", "20")).knob.name == "teacher.epochs"
