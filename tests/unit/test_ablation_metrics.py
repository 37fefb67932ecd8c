"""`kdlab ablate`: a plan's metrics -> the keys kdlab records (red team round 4, B and C).

Every expectation is written here from what kdlab records (engine/metrics.py, the per-stage records) and what
the plan's words mean, never taken from the code under test.
"""

from __future__ import annotations

import json

import pytest

from kdlab.ablation import parse_plan, resolve_plan
from kdlab.ablation.plan import parse_plan_text, split_metrics


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
