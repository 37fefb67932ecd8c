"""Teacher objectives against values computed independently here (plain loops over the formulas)."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.data.base import Batch
from kdlab.experiment.schema import ObjectiveConfig
from kdlab.objectives import HeadConfig
from kdlab.objectives.contrastive import class_margin, intra_class_loss, supcon_loss
from kdlab.objectives.intra import CacheConfig, ClassCache, class_distance_sums, gradnorm_lambda, ratio_update
from kdlab.objectives.teacher import TeacherObjective, build_head


def tuplet_by_hand(anchor, positive, negatives, tau):
    """log(1 + sum_n exp((a.n - a.p)/tau)) written out with Python floats."""
    sp = sum(a * p for a, p in zip(anchor, positive)) / tau
    total = sum(math.exp(sum(a * n for a, n in zip(anchor, neg)) / tau - sp) for neg in negatives)
    return math.log(1 + total)


def unit(*v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_margin_is_true_class_minus_best_other():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    p = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits.tolist()]
    expected = [p[0][0] - p[0][1], p[1][2] - p[1][1]]
    got = class_margin(logits, torch.tensor([0, 2]))
    assert got.tolist() == pytest.approx(expected, abs=1e-6)


def test_intra_loss_hand_case_with_cache():
    tau = 0.5
    # rows: image 0 (class 0) views 0/1, image 1 (class 0) views 0/1, image 2 (class 1) views 0/1
    rows = [unit(1, 0.2), unit(0.9, 0.3), unit(0.1, 1), unit(0.2, 0.8), unit(-1, 0.1), unit(-0.9, -0.2)]
    emb = torch.tensor(rows)
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    positives = emb[[1, 0, 3, 2, 5, 4]]
    anchors = torch.tensor([True, False, True, True, True, False])
    cache = torch.zeros(2, 3, 2)
    cache[0, 0] = torch.tensor(unit(0.5, 0.5))
    cache[0, 1] = torch.tensor(unit(1, -1))
    valid = torch.tensor([[True, True, False], [False, False, False]])

    loss, n_neg = intra_class_loss(emb, positives, labels, ids, anchors, tau, cache, valid)

    cached0 = [unit(0.5, 0.5), unit(1, -1)]
    expected = [
        tuplet_by_hand(rows[0], rows[1], [rows[2], rows[3], *cached0], tau),  # anchor row 0
        tuplet_by_hand(rows[2], rows[3], [rows[0], rows[1], *cached0], tau),  # anchor row 2
        tuplet_by_hand(rows[3], rows[2], [rows[0], rows[1], *cached0], tau),  # anchor row 3
        0.0,  # anchor row 4: class 1 has no other image and an empty cache -> log(1) = 0
    ]
    assert float(loss) == pytest.approx(sum(expected) / 4, rel=1e-5)
    assert n_neg.tolist() == [4, 4, 4, 0]


def test_intra_loss_no_anchor_or_no_negative_is_zero_without_nan():
    emb = F.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    labels, ids = torch.tensor([0, 1, 2, 3]), torch.arange(4)
    for anchors in (torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)):
        loss, _ = intra_class_loss(emb, emb.roll(1, 0), labels, ids, anchors, 0.1)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.isfinite(emb.grad).all()
        emb.grad = None


def test_gradient_reaches_batch_not_cache():
    emb = F.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    cache = torch.randn(1, 5, 8, requires_grad=True)  # would receive a gradient if not treated as constant
    loss, _ = intra_class_loss(emb, emb.roll(2, 0), torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 0, 1]),
                               torch.ones(4, dtype=torch.bool), 0.2, cache.detach(), torch.ones(1, 5, dtype=torch.bool))
    loss.backward()
    assert emb.grad.abs().sum() > 0
    assert cache.grad is None


def test_cache_fifo_order_and_wraparound():
    cache = ClassCache(num_classes=2, dim=1, cfg=CacheConfig(size=3))
    push = lambda vals, cls: cache.push(torch.tensor(vals, dtype=torch.float)[:, None], torch.tensor(cls),
                                        torch.tensor(vals))
    push([1, 2], [0, 0])
    assert cache.fill.tolist() == [2, 0] and cache.ptr.tolist() == [2, 0]
    push([3, 4, 10], [0, 0, 1])  # class 0 wraps: slot 2 <- 3, slot 0 <- 4
    assert cache.bank[0, :, 0].tolist() == [4, 2, 3]
    assert cache.fill.tolist() == [3, 1] and cache.ptr.tolist() == [1, 1]
    push([5, 6, 7, 8, 9], [0, 0, 0, 0, 0])  # more than Q at once: only the newest 3 (7, 8, 9) survive
    assert sorted(cache.bank[0, :, 0].tolist()) == [7, 8, 9]
    assert sorted(cache.ids[0].tolist()) == [7, 8, 9]  # each entry remembers its image
    assert cache.bank[0, (cache.ptr[0] - 1) % 3, 0] == 9  # newest just before the pointer
    assert cache.valid().tolist() == [[True] * 3, [True, False, False]]


def test_cache_flush_mode_uses_full_buffers_once():
    cache = ClassCache(num_classes=1, dim=1, cfg=CacheConfig(size=2, mode="flush"))
    one = torch.tensor([0])
    cache.push(torch.ones(1, 1), one, one)
    assert not cache.valid().any()  # half full: not used yet
    cache.push(torch.ones(1, 1), one, one + 1)
    assert cache.valid().all()  # full: used as negatives this step
    cache.push(torch.full((1, 1), 5.0), one, one + 2)  # after use: cleared, then refilled
    assert cache.fill.tolist() == [1] and not cache.valid().any()


class TinyNet(torch.nn.Module):
    def __init__(self, d=6, c=3):
        super().__init__()
        self.body = torch.nn.Linear(4, d)
        self.fc = torch.nn.Linear(d, c)

    def forward(self, x):
        from kdlab.models.base import ModelOutput

        h = torch.relu(self.body(x.flatten(1)))
        return ModelOutput(self.fc(h), h, [h], [h])


def _objective(kind="intra", **intra):
    cfg = ObjectiveConfig(kind=kind, intra=dict(lambda_=1.0, **intra), head=HeadConfig(kind="linear", dim=4))
    torch.manual_seed(0)
    return TeacherObjective(TinyNet(), cfg, views=2, num_classes=3, feature_dim=6, num_train=16)


def _batch(n=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 2, 2, generator=g)
    return Batch([x, x + 0.05 * torch.randn(x.shape, generator=g)], torch.arange(n) % 3, torch.arange(n))


def test_margin_off_makes_every_sample_an_anchor_and_delta_filters():
    obj = _objective(margin=False)
    obj.forward_train(_batch(), 0.0)
    assert obj.epoch_stats()["margin_pass_frac"] == 1.0
    obj = _objective(delta=1.0)  # rho can never exceed 1: no anchor, L_Intra = 0
    _, losses = obj.forward_train(_batch(), 0.0)
    assert obj.epoch_stats()["margin_pass_frac"] == 0.0
    assert losses["intra"].item() == 0.0


def test_cache_off_has_no_buffer_and_cache_on_fills_from_anchors():
    off = _objective(margin=False, cache=dict(enabled=False))
    assert off.term.cache is None
    on = _objective(margin=False, cache=dict(size=4))
    on.forward_train(_batch(8), 0.0)
    # 8 anchors of view 0 over 3 classes (3, 3, 2 images) are pushed
    assert on.term.cache.fill.tolist() == [3, 3, 2]


def test_teacher_objective_total_matches_ce_plus_lambda_intra():
    obj = _objective(margin=False, cache=dict(enabled=False))
    batch = _batch()
    _, losses = obj.forward_train(batch, 0.0)
    with torch.no_grad():
        x = torch.cat(batch.views)
        out = obj.net(x)
        ce = F.cross_entropy(out.logits, batch.labels.repeat(2))
        emb = F.normalize(obj.head(out.pooled), dim=1).tolist()
    labels, n = (batch.labels.repeat(2)).tolist(), len(batch.labels)
    ids = list(range(n)) * 2
    per = []
    for a in range(2 * n):
        pos = emb[(a + n) % (2 * n)]
        negs = [emb[j] for j in range(2 * n) if labels[j] == labels[a] and ids[j] != ids[a]]
        per.append(tuplet_by_hand(emb[a], pos, negs, 0.1))
    assert losses["ce"].item() == pytest.approx(float(ce), rel=1e-5)
    assert losses["intra"].item() == pytest.approx(sum(per) / len(per), rel=1e-4)


def supcon_by_hand(emb, labels, tau, base_tau=0.07):
    m = len(emb)
    dot = lambda u, v: sum(a * b for a, b in zip(u, v))
    total = 0.0
    for i in range(m):
        denom = sum(math.exp(dot(emb[i], emb[k]) / tau) for k in range(m) if k != i)
        pos = [j for j in range(m) if j != i and labels[j] == labels[i]]
        if pos:
            total += -(tau / base_tau) * sum(dot(emb[i], emb[j]) / tau - math.log(denom) for j in pos) / len(pos)
    return total / m


def test_supcon_and_simclr_against_loops():
    torch.manual_seed(3)
    emb = F.normalize(torch.randn(6, 5), dim=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    assert float(supcon_loss(emb, labels, 0.2)) == pytest.approx(supcon_by_hand(emb.tolist(), labels.tolist(), 0.2), rel=1e-5)
    ids = torch.tensor([0, 1, 2, 0, 1, 2])  # SimCLR: positives are the other view only
    assert float(supcon_loss(emb, ids, 0.5)) == pytest.approx(supcon_by_hand(emb.tolist(), ids.tolist(), 0.5), rel=1e-5)


def test_supcon_anchor_without_positive_gives_no_nan():
    emb = F.normalize(torch.randn(3, 4), dim=1).requires_grad_(True)
    loss = supcon_loss(emb, torch.tensor([0, 1, 2]), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("kind,depth", [("none", 0), ("linear", 1), ("mlp2", 2), ("mlp3", 3)])
def test_head_depths(kind, depth):
    head = build_head(HeadConfig(kind=kind, dim=7, hidden=9), in_dim=5)
    assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == depth
    assert head(torch.randn(4, 5)).shape == ((4, 5) if kind == "none" else (4, 7))


def test_memory_positive_uses_previous_visit():
    cfg = ObjectiveConfig(kind="intra", intra=dict(positive="memory", margin=False), head=HeadConfig(kind="linear", dim=4))
    obj = TeacherObjective(TinyNet(), cfg, views=1, num_classes=3, feature_dim=6, num_train=16)
    b = _batch()
    batch = Batch(b.views[:1], b.labels, b.index)
    obj.forward_train(batch, 0.0)
    assert obj.epoch_stats()["margin_pass_frac"] == 0.0  # first visit: no stored positive yet
    assert obj.term.sample_seen[:8].all() and not obj.term.sample_seen[8:].any()
    obj.forward_train(batch, 0.0)
    assert obj.epoch_stats()["margin_pass_frac"] == 1.0


def test_an_anchor_never_meets_its_own_image_in_the_cache():
    tau = 0.5
    emb = torch.tensor([unit(1, 0.3), unit(0.2, 1)])  # image 7 and image 8, both class 0
    cache = torch.tensor([[unit(1, 0.3), unit(-1, 0.5)]])  # slot 0 holds image 7's earlier embedding
    cache_ids = torch.tensor([[7, 3]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    labels, ids = torch.tensor([0, 0]), torch.tensor([7, 8])
    positives = emb.clone()
    loss, n_neg = intra_class_loss(emb, positives, labels, ids, torch.tensor([True, False]), tau, cache, valid,
                                   cache_ids)
    # anchor image 7: negatives are image 8 in the batch and cache slot 1 (image 3), not slot 0 (itself)
    assert n_neg.tolist() == [2]
    expected = tuplet_by_hand(unit(1, 0.3), unit(1, 0.3), [unit(0.2, 1), unit(-1, 0.5)], tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------- λ schedules
def test_gradnorm_lambda_is_eta_times_the_ratio_of_feature_gradient_norms():
    h = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)  # grad of ce wrt h: norm 5
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # grad of intra wrt h: norm sqrt(2)
    ce, intra = (a * h).sum(), (b * h).sum()
    lam = gradnorm_lambda(ce, intra, h, eta=0.1)
    assert lam.dtype == torch.float64 and not lam.requires_grad
    assert lam.item() == pytest.approx(0.1 * 5.0 / math.sqrt(2.0), rel=1e-12)
    assert gradnorm_lambda(ce, (0.0 * h).sum(), h, eta=0.1).item() == 0.0  # no anchor: λ = 0, never inf


def test_class_distance_sums_hand_case():
    f = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    got = class_distance_sums(f, torch.tensor([0, 0, 1]))
    assert got.tolist() == [1.0, 1.0, 3.0 + 2.0, 2.0]  # same: |0-1|; different: |0-3|, |1-3|


def test_ratio_update_moves_lambda_toward_the_target_and_stays_in_bounds():
    assert ratio_update(0.02, 0.5, 0.7, 2.0) == pytest.approx(0.02 * math.exp(2.0 * 0.2 / 0.7))  # too tight: up
    assert ratio_update(0.02, 0.9, 0.7, 2.0) < 0.02  # too spread: down
    assert ratio_update(0.02, 0.7, 0.7, 2.0) == pytest.approx(0.02)
    assert ratio_update(5.0, 0.0, 0.7, 2.0) == 10.0 and ratio_update(2e-4, 50.0, 0.7, 2.0) == 1e-4


def test_warmup_schedule_scales_lambda_with_the_epoch_and_logs_it():
    obj = _objective(lambda_schedule="warmup", warmup_epochs=4.0, margin=False)
    obj.forward_train(_batch(), 1.0)
    obj.forward_train(_batch(), 3.0)
    assert obj.epoch_stats()["intra_lambda"] == pytest.approx((0.25 + 0.75) / 2)
    _, losses = obj.forward_train(_batch(), 0.0)
    assert losses["intra"].item() == 0.0


def test_ratio_schedule_sets_next_epochs_lambda_from_the_measured_ratio_and_checkpoints_it():
    obj = _objective(lambda_schedule="ratio", target_ratio=0.7, ratio_gain=2.0, margin=False)
    batch = _batch()
    with torch.no_grad():
        h = obj.net(torch.cat(batch.views[:1])).pooled
    same_sum, same_n, diff_sum, diff_n = class_distance_sums(h, batch.labels).tolist()
    measured = (same_sum / same_n) / (diff_sum / diff_n)
    _, losses = obj.forward_train(batch, 0.0)
    stats = obj.epoch_stats()
    assert stats["intra_lambda"] == pytest.approx(1.0)  # the first epoch runs at lambda_
    assert stats["train_intra_inter_ratio"] == pytest.approx(measured, rel=1e-5)
    expected = 1.0 * math.exp(2.0 * (0.7 - measured) / 0.7)
    assert obj.term.ratio_lambda.item() == pytest.approx(expected, rel=1e-5)
    assert "term.ratio_lambda" in obj.state_dict()


def test_constant_schedule_reports_its_lambda():
    obj = _objective(margin=False)
    obj.forward_train(_batch(), 0.0)
    assert obj.epoch_stats()["intra_lambda"] == 1.0
