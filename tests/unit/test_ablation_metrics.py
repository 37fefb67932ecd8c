"""`kdlab ablate`: a plan's metrics -> the keys kdlab records (red team round 4, B and C).

Every expectation is written here from what kdlab records (engine/metrics.py, the per-stage records) and what
the plan's words mean, never taken from the code under test.
"""

from __future__ import annotations

import json

import pytest

from kdlab.ablation import parse_plan, resolve_plan
from kdlab.ablation.plan import parse_plan_text, split_metrics
from kdlab.ablation.resolve import fit_metric, load_base, map_metric
from kdlab.engine.metrics import summarize
from kdlab.sweep.report import _columns


@pytest.fixture(scope="module")
def intra():
    return load_base(None, "intra", [])[1]


# ------------------------------------------------------------------------------------------ stages
@pytest.mark.parametrize("name, keys", [
    ("Student and teacher top-1 accuracy", ("top1",)),
    ("top-1 of teacher and student", ("top1",)),
    ("teacher and student accuracy", ("top1",)),
    ("soft-label entropy of the teacher and of the student", ("soft_label_entropy",)),
])
def test_a_metric_naming_both_stages_shows_both(name, keys):
    m = map_metric(name)
    assert (m.keys, m.stage) == (keys, "both")
    assert "(student and teacher)" in m.describe()


@pytest.mark.parametrize("name", ["Teacher-student accuracy gap", "student-teacher top-1 difference",
                                  "accuracy gap between teacher and student", "Teacher–student top-1 gap"])
def test_a_teacher_student_gap_shows_both_top1_columns_and_says_so(name):
    m = map_metric(name)
    assert (m.keys, m.stage) == (("top1",), "both")
    assert "gap" in m.note and "difference" in m.note


def test_both_stages_become_two_report_columns():
    ab = {"metrics": [{"name": "Student and teacher top-1 accuracy", "keys": ["top1"], "stage": "both"}],
          "teacher_varies": False}
    cols, _, _ = _columns(ab)
    assert [c for c, _ in cols] == ["student.top1", "teacher.top1"]


def test_a_measurement_between_teacher_and_student_goes_to_the_stage_that_logs_it(intra):
    # the KL divergence between the two networks is the student's KD term (train_kd)
    for name in ("KL divergence between teacher and student outputs",
                 "KL divergence between teacher and student predictions on the test set"):
        m = fit_metric(map_metric(name), [intra])
        assert (m.keys, m.stage) == (("kd_loss",), "student"), name
    # a term only the student logs, asked of both stages: the student's
    m = fit_metric(map_metric("KD loss of the teacher and the student"), [intra])
    assert (m.keys, m.stage) == (("kd_loss",), "student")


# ------------------------------------------------------------------------------------------ names
RECORDED = {  # names -> the keys kdlab records for them (engine/metrics.py ``summarize``)
    "Acc@5": ("top5",), "Acc@1": ("top1",),
    "number of negatives per anchor": ("negatives_per_anchor",), "negatives per anchor": ("negatives_per_anchor",),
    "Time per epoch (s)": ("epoch_time_s",), "epoch time": ("epoch_time_s",),
    "training time per epoch": ("epoch_time_s",),
    "best top-5": ("top5_best",), "best top-5 accuracy": ("top5_best",),
    "Train/test loss": ("loss", "test_loss"), "training and test loss": ("loss", "test_loss"),
    # the plain readings stay
    "training time": ("train_time_s",), "total training time": ("train_time_s",), "efficiency": ("train_time_s",),
    "time per iteration": ("step_time_ms",), "throughput (images/s)": ("step_time_ms",), "performance": ("top1",), "Top-1 accuracy (%)": ("top1",),
    "calibration (ECE, 15 bins)": ("ece",), "Top-1 accuracy (mean ± std, 3 seeds)": ("top1",),
    "loss variance": ("loss_std", "loss_spikes"),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_names_of_recorded_measurements_map_to_their_keys(name):
    assert map_metric(name).keys == RECORDED[name]


def test_every_mapped_key_is_one_a_run_summary_has():
    hist = [{"epoch": e, "test_top1": 50.0 + e, "test_top5": 90.0, "train_loss": 1.0, "test_loss": 1.0,
             "loss_steps": 2, "loss_sum": 2.0, "loss_sqsum": 2.0, "loss_spikes": 0, "epoch_time_s": 1.0,
             "step_time_ms": 1.0, "negatives_per_anchor": 3.0, "test_ece": 2.0} for e in (1, 2)]
    summary = summarize(hist)
    for name, keys in RECORDED.items():
        assert set(keys) <= set(summary), name


@pytest.mark.parametrize("name, keys, note", [
    ("improvement over baseline", ("top1",), "Δ"),
    ("gain over baseline", ("top1",), "Δ"),
    ("Top-1 error", ("top1",), "100 - accuracy"),
    ("Student Top-1 error (%)", ("top1",), "100 - accuracy"),
    ("Top-5 error", ("top5",), "100 - accuracy"),
])
def test_names_read_as_a_recorded_key_carry_a_note(name, keys, note):
    m = map_metric(name)
    assert m.keys == keys and note in m.note


NOT_MEASURED = [  # (name, a word of the note that says why)
    ("sample efficiency", "costs"), ("parameter efficiency", "costs"), ("data efficiency", "costs"),
    ("knowledge transfer efficiency", "costs"),
    ("inference time", "inference"), ("inference latency", "inference"), ("inference latency (ms)", "inference"),
    ("inference throughput (images/s)", "inference"),
    ("variance across seeds", "std across seeds"), ("logit variance", "logits"),
    ("gradient conflict between CE and L_Intra", "gradients"),
    ("prediction agreement between student and slow-moving student", "compare"),
    ("consistency between student and slow-moving student representations", "compare"),
    ("teacher-student agreement", "compare"),
    ("teacher-student prediction agreement", "compare"),
    ("Per-class accuracy", "per class"), ("worst-class accuracy", "per class"), ("balanced accuracy", "per class"),
    ("Linear probe accuracy on frozen student features", "different evaluation"),
    ("kNN accuracy", "different evaluation"), ("transfer accuracy on STL-10", "different evaluation"),
    ("few-shot accuracy (5-way 5-shot)", "different evaluation"),
    ("Robustness to corruption (CIFAR-100-C accuracy)", "different evaluation"),
    ("accuracy under 20% label noise", "different evaluation"),
    ("value of λ over training", "intra_lambda"), ("adaptive λ", "intra_lambda"), ("effective λ", "intra_lambda"),
    ("epochs to reach 60% accuracy", "95 %"),
]


@pytest.mark.parametrize("name, why", NOT_MEASURED)
def test_other_measurements_are_not_measured_with_the_reason(name, why, intra):
    m = fit_metric(map_metric(name), [intra])
    assert m.keys == () and why in m.note


def test_intra_lambda_is_not_in_a_run_summary():
    # the reason "value of λ over training" is not measured: summaries keep no intra_lambda
    hist = [{"epoch": 1, "test_top1": 50.0, "test_top5": 90.0, "train_loss": 1.0, "test_loss": 1.0, "loss_steps": 2,
             "loss_sum": 2.0, "loss_sqsum": 2.0, "loss_spikes": 0, "epoch_time_s": 1.0, "step_time_ms": 1.0,
             "intra_lambda": 0.05}]
    assert "intra_lambda" not in summarize(hist)


def test_top5_named_as_acc_at_5_is_kept_on_ten_classes(intra):
    m = fit_metric(map_metric("Acc@5"), [intra])
    assert m.keys == ("top5",) and "kept" in m.note
    m = fit_metric(map_metric("Top-5 error"), [intra])  # both notes
    assert m.keys == ("top5",) and "100 - accuracy" in m.note and "kept" in m.note


# ------------------------------------------------------------------------------------------ splitting
@pytest.mark.parametrize("text, items", [
    ("calibration (ECE, 15 bins)", ["calibration (ECE, 15 bins)"]),
    ("Top-1 accuracy (mean ± std, 3 seeds), calibration (ECE, 15 bins), top-1 and top-5 accuracy",
     ["Top-1 accuracy (mean ± std, 3 seeds)", "calibration (ECE, 15 bins)", "top-1", "top-5 accuracy"]),
    ("KL divergence between teacher and student outputs", ["KL divergence between teacher and student outputs"]),
    ("soft-label entropy of the teacher and of the student", ["soft-label entropy of the teacher and of the student"]),
    ("Student and teacher top-1 accuracy", ["Student and teacher top-1 accuracy"]),
    ("top-1 of teacher and student; ECE", ["top-1 of teacher and student", "ECE"]),
    ("training and test loss", ["training and test loss"]),
    ("gradient conflict between CE and L_Intra, top-1", ["gradient conflict between CE and L_Intra", "top-1"]),
    ("Student accuracy and teacher accuracy", ["Student accuracy", "teacher accuracy"]),
    ("Top-1 Accuracy, Convergence Speed and Training Stability",
     ["Top-1 Accuracy", "Convergence Speed", "Training Stability"]),
    ("Top-1, per-class accuracy, and ECE", ["Top-1", "per-class accuracy", "ECE"]),
])
def test_split_metrics_keeps_phrases_whole(text, items):
    assert split_metrics(text) == items


def test_m06_metrics_are_read_whole():
    text = """## Ablation Plan

### Cache removal
- **Ablated Part**: Per-class cache of negatives
- **Action**: REMOVE
- **Metrics**: Student accuracy and teacher accuracy; KL divergence between teacher and student predictions on the test set; soft-label entropy of the teacher and of the student
"""
    grid = resolve_plan(parse_plan_text(text, "m06.md"))
    got = [(m.name, m.keys, m.stage) for m in grid.ablations[0].metrics]
    assert got == [
        ("Student accuracy", ("top1",), "student"),
        ("teacher accuracy", ("top1",), "teacher"),
        ("KL divergence between teacher and student predictions on the test set", ("kd_loss",), "student"),
        ("soft-label entropy of the teacher and of the student", ("soft_label_entropy",), "both"),
    ]


# ------------------------------------------------------------------------------------------ same as above
PLAN_SAME = """## Ablation Plan

### Margin threshold
- **Ablated Part**: Margin threshold δ
- **Action**: REPLACE
- **Replacement**: 0.3, 0.7
- **Metrics**: {first}

### Intra-class weight
- **Ablated Part**: Weight λ of the intra-class loss
- **Action**: REPLACE
- **Replacement**: 0.01, 0.05
- **Metrics**: {second}
"""


@pytest.mark.parametrize("same", ["same as above", "Same as above.", "same as before", "as above",
                                  "the same metrics as the previous ablation"])
def test_same_as_above_takes_the_metrics_of_the_ablation_before(same):
    plan = parse_plan_text(PLAN_SAME.format(first="Top-1 accuracy, ECE", second=same), "p.md")
    assert plan.ablations[1].metrics == ("Top-1 accuracy", "ECE")
    grid = resolve_plan(plan)
    assert [m.keys for m in grid.ablations[1].metrics] == [("top1",), ("ece",)]


def test_same_as_above_first_falls_back_to_top1_and_jsonl_inherits_too(tmp_path):
    grid = resolve_plan(parse_plan_text(PLAN_SAME.format(first="same as above", second="as above"), "p.md"))
    assert [[m.keys for m in a.metrics] for a in grid.ablations] == [[("top1",)], [("top1",)]]
    p = tmp_path / "plan.jsonl"
    rows = [{"name": "a", "ablated_part": "Margin threshold δ", "action": "REPLACE", "replacement": [0.3],
             "metrics": ["NLL", "ECE"]},
            {"name": "b", "ablated_part": "Weight λ of the intra-class loss", "action": "REPLACE",
             "replacement": [0.01], "metrics": "same as above, convergence speed"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert parse_plan(p).ablations[1].metrics == ("NLL", "ECE", "convergence speed")
