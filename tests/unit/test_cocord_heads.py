"""CoCoRD's head shapes (depth, hidden width, BatchNorm, per side) and its in-batch negatives (no dictionary)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlab.distillers.cocord import mlp
from test_distillers import (_hand_cocord, _matvec, _views, batch_of, dot, lst, make_distillation, softmax_row,
                             step_ctx, unit)


def _shape(seq: nn.Sequential) -> list[str]:
    return [type(m).__name__ for m in seq]


@pytest.mark.parametrize("layers, bn, expected", [
    (1, True, ["Linear"]),
    (2, True, ["Linear", "BatchNorm1d", "ReLU", "Linear"]),  # the release's shape, the default
    (2, False, ["Linear", "ReLU", "Linear"]),
    (3, True, ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]),
])
def test_mlp_depth_and_batch_norm(layers, bn, expected):
    head = mlp(5, 7, 3, layers, bn)
    assert _shape(head) == expected
    widths = [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)]
    assert widths == ([(5, 3)] if layers == 1 else [(5, 7)] + [(7, 7)] * (layers - 2) + [(7, 3)])


def test_student_and_teacher_projectors_take_their_own_shapes():
    m = make_distillation(["cocord"], cocord=dict(proj_layers=3, pred_layers=1, pred_bn=False,
                                                  teacher_proj_layers=1))
    term = m.terms["cocord"]
    assert _shape(term.projector) == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert _shape(term.slow_projector) == _shape(term.projector)
    assert _shape(term.predictor) == ["Linear"]
    assert _shape(term.teacher_projector) == ["Linear"]
    # the heads differ: only layers of equal shapes follow the EMA (here 64 -> 32, as proj_hidden = proj_dim = 32)
    assert term.ema_layers == [0] and term.projector[0].weight.shape == term.teacher_projector[0].weight.shape


def test_teacher_projector_follows_the_student_side_by_default():
    m = make_distillation(["cocord"], cocord=dict(proj_layers=1))
    term = m.terms["cocord"]
    assert _shape(term.teacher_projector) == ["Linear"]
    for a, b in zip(term.projector.parameters(), term.teacher_projector.parameters()):
        assert torch.equal(a, b)


def test_in_batch_negatives_by_hand():
    """memory=batch: the negatives of image i are the teacher keys of the batch's other images."""
    tau = 0.5
    term, student, teacher = _hand_cocord(tau=tau, memory="batch")
    assert not any(name in dict(term.named_buffers()) for name in ("queue", "bank"))
    x0, x1, x2 = _views()
    out = term(student(x0), None, batch_of([x0, x1, x2]), step_ctx(student=student, teacher=teacher))
    wt = lst(teacher.w)
    queries = [unit(q) for q in lst(x0)]
    keys = [unit(_matvec(wt, xt)) for xt in lst(x2)]
    total = 0.0
    for i, q in enumerate(queries):
        logits = [dot(q, keys[i]) / tau] + [dot(q, k) / tau for j, k in enumerate(keys) if j != i]
        total += -math.log(softmax_row(logits)[0])
    assert out["cocord_ctr"].item() == pytest.approx(total / 2, rel=1e-5)
    assert set(term.stats()) == {"cocord_ctr_acc"}
