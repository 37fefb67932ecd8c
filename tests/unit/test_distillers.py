"""Distillation terms and the ``Distillation`` train method.

Expected values are computed here, independently of ``kdlab.distillers``: plain Python loops over
small tensors (``math`` only) or closed forms, following the reductions of the reference code
(RepDistiller for KD/FitNet/AT/SP/PKT/RKD/CRD, mdistiller for DKD, the CoCoRD release for CoCoRD).
"""

from __future__ import annotations

import math
import typing

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.config import ConfigError
from kdlab.experiment.schema import DistillConfig, DistillMethod
from kdlab.data.base import Batch
from kdlab.distillers import DistillContext, Distillation, StepContext, build_distill_loss, distiller_names
from kdlab.models import ModelOutput, build_model, probe
from kdlab.models.base import Probe

ALL_METHODS = list(typing.get_args(DistillMethod))
SHAPE = (1, 8, 8)  # digits-like
SMALL = dict(  # CPU-sized heads and memories
    crd=dict(feat_dim=16, nce_k=24),
    cocord=dict(proj_dim=32, proj_hidden=32, pred_hidden=16, queue_size=20),
)
NUM_TRAIN = 64


# ------------------------------------------------------------------------------------ helpers
def lst(t: torch.Tensor) -> list:
    return t.detach().double().tolist()


def softmax_row(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    z = sum(e)
    return [v / z for v in e]


def smooth_l1(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / max(n, 1e-12) for x in v]


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def output(pooled=None, stages=None, logits=None) -> ModelOutput:
    stages = stages or []
    return ModelOutput(logits=logits, pooled=pooled, stages=stages, preacts=stages)


def fake_probe(pooled_dim=4, stage_shapes=((2, 4, 4),), num_classes=3) -> Probe:
    return Probe(pooled_dim=pooled_dim, stage_shapes=list(stage_shapes), num_classes=num_classes)


def fake_ctx(student=None, s_probe=None, t_probe=None, num_train=NUM_TRAIN) -> DistillContext:
    return DistillContext(student_probe=s_probe or fake_probe(), teacher_probe=t_probe or fake_probe(),
                          num_classes=3, num_train=num_train, input_shape=SHAPE, epochs=10, student=student)


def step_ctx(progress=0.0, student=None, teacher=None) -> StepContext:
    return StepContext(student=student, teacher=teacher, progress=progress)


def batch_of(views: list[torch.Tensor], labels=None, index=None) -> Batch:
    b = views[0].shape[0]
    labels = torch.zeros(b, dtype=torch.long) if labels is None else labels
    index = torch.arange(b) if index is None else index
    return Batch(views=views, labels=labels, index=index)


def make_distillation(methods, s_arch="resnet8", t_arch="resnet8", shape=SHAPE, num_classes=10, **overrides):
    torch.manual_seed(0)
    student = build_model(s_arch, num_classes, in_channels=shape[0])
    teacher = build_model(t_arch, num_classes, in_channels=shape[0])
    tree = {k: dict(v) for k, v in SMALL.items()}
    for k, v in overrides.items():
        if isinstance(v, dict):
            tree.setdefault(k, {}).update(v)
        else:
            tree[k] = v
    cfg = DistillConfig(methods=methods, **tree)
    ctx = DistillContext(student_probe=probe(student, shape), teacher_probe=probe(teacher, shape),
                         num_classes=num_classes, num_train=NUM_TRAIN, input_shape=shape, epochs=4)
    return Distillation(student, teacher, cfg, ctx)


def random_batch(method: Distillation, b=8, shape=SHAPE, num_classes=10, seed=1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(b, *shape, generator=g) for _ in range(method.views)]
    labels = torch.randint(0, num_classes, (b,), generator=g)
    index = torch.randperm(NUM_TRAIN, generator=g)[:b]
    return Batch(views=views, labels=labels, index=index)


# ----------------------------------------------------------------------------------- registry
def test_registry_has_every_configurable_method():
    assert distiller_names() == sorted(ALL_METHODS)
    with pytest.raises(KeyError, match="available"):
        build_distill_loss("nope", DistillConfig().kd, fake_ctx())


# ----------------------------------------------------------------------------------------- KD
def test_kd_matches_hand_loop_with_T_squared():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5) * 3, torch.randn(3, 5) * 3
    for T in (1.0, 4.0):
        term = build_distill_loss("kd", DistillConfig().kd.model_copy(update={"T": T, "weight": 0.7}), fake_ctx())
        got = term(output(logits=s), output(logits=t), batch_of([s]), step_ctx())["kd"]
        total = 0.0
        for rs, rt in zip(lst(s), lst(t)):
            ps = softmax_row([v / T for v in rs])
            pt = softmax_row([v / T for v in rt])
            total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
        assert got.item() == pytest.approx(0.7 * total * T * T / 3, rel=1e-5)


def test_kd_alone_uses_repdistiller_weights():
    m = make_distillation(["kd"])
    assert m.ce_weight == pytest.approx(0.1) and m.terms["kd"].weight == pytest.approx(0.9)
    m2 = make_distillation(["kd", "rkd"])
    assert m2.ce_weight == 1.0 and m2.terms["kd"].weight == 1.0


# ---------------------------------------------------------------------------------------- RKD
def _rkd_hand(s: list[list[float]], t: list[list[float]]) -> tuple[float, float]:
    n = len(s)

    def dists(x):
        d = [[math.dist(x[i], x[j]) if i != j else 0.0 for j in range(n)] for i in range(n)]
        pos = [v for row in d for v in row if v > 0]
        mean = sum(pos) / len(pos)
        return [[v / mean for v in row] for row in d]

    def angles(x):
        out = []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u = unit([a - b for a, b in zip(x[j], x[i])])
                    v = unit([a - b for a, b in zip(x[k], x[i])])
                    out.append(dot(u, v))
        return out

    ds, dt = dists(s), dists(t)
    loss_d = sum(smooth_l1(a, b) for ra, rb in zip(ds, dt) for a, b in zip(ra, rb)) / (n * n)
    as_, at = angles(s), angles(t)
    loss_a = sum(smooth_l1(a, b) for a, b in zip(as_, at)) / len(as_)
    return loss_d, loss_a


def test_rkd_three_points_by_hand():
    s = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    t = torch.tensor([[1.0, 1.0], [2.0, 3.0], [-1.0, 0.5]])
    term = build_distill_loss("rkd", DistillConfig().rkd, fake_ctx())
    out = term(output(pooled=s), output(pooled=t), batch_of([s]), step_ctx())
    loss_d, loss_a = _rkd_hand(lst(s), lst(t))
    assert out["rkd_dist"].item() == pytest.approx(25 * loss_d, rel=1e-5)
    assert out["rkd_angle"].item() == pytest.approx(50 * loss_a, rel=1e-5)
    # the 3-4-5 triangle: student distances are (3, 4, 5) / mean(3, 4, 5) = (0.75, 1, 1.25)
    assert loss_d > 0


def test_rkd_is_invariant_to_feature_scale():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 7)
    term = build_distill_loss("rkd", DistillConfig().rkd, fake_ctx())
    base = term(output(pooled=s), output(pooled=t), batch_of([s]), step_ctx())
    scaled = term(output(pooled=s), output(pooled=7 * t), batch_of([s]), step_ctx())
    for k in ("rkd_dist", "rkd_angle"):
        assert scaled[k].item() == pytest.approx(base[k].item(), rel=1e-4, abs=1e-7)
    loss_d, loss_a = _rkd_hand(lst(s), lst(t))
    assert base["rkd_dist"].item() == pytest.approx(25 * loss_d, rel=1e-4)
    assert base["rkd_angle"].item() == pytest.approx(50 * loss_a, rel=1e-4)


# ---------------------------------------------------------------------------------------- DKD
def test_dkd_decouples_target_and_non_target_on_three_classes():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    t = torch.tensor([[3.0, -0.5, 0.0], [-1.0, 2.0, 0.5]])
    y = torch.tensor([0, 2])
    T, alpha, beta = 2.0, 1.5, 8.0
    cfg = DistillConfig().dkd.model_copy(update={"T": T, "alpha": alpha, "beta": beta, "warmup": 0})
    term = build_distill_loss("dkd", cfg, fake_ctx())
    got = term(output(logits=s), output(logits=t), batch_of([s], labels=y), step_ctx())["dkd"].item()
    tckd = nckd = 0.0
    for rs, rt, c in zip(lst(s), lst(t), y.tolist()):
        ps, pt = softmax_row([v / T for v in rs]), softmax_row([v / T for v in rt])
        bs, bt = [ps[c], 1 - ps[c]], [pt[c], 1 - pt[c]]
        tckd += sum(a * math.log(a / b) for a, b in zip(bt, bs))
        qs = softmax_row([v / T for i, v in enumerate(rs) if i != c])
        qt = softmax_row([v / T for i, v in enumerate(rt) if i != c])
        nckd += sum(a * math.log(a / b) for a, b in zip(qt, qs))
    expected = (alpha * tckd + beta * nckd) * T * T / 2
    assert got == pytest.approx(expected, rel=1e-5)


def test_dkd_warmup_is_mdistillers_epoch_ramp():
    s, t = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([[3.0, -0.5, 0.0]])
    b = batch_of([s], labels=torch.tensor([1]))
    full = build_distill_loss("dkd", DistillConfig().dkd.model_copy(update={"warmup": 0}), fake_ctx())
    ramp = build_distill_loss("dkd", DistillConfig().dkd, fake_ctx())  # warmup 20
    ref = full(output(logits=s), output(logits=t), b, step_ctx())["dkd"].item()
    for progress, factor in ((0.0, 1 / 20), (0.99, 1 / 20), (4.5, 5 / 20), (19.2, 1.0), (100.0, 1.0)):
        got = ramp(output(logits=s), output(logits=t), b, step_ctx(progress))["dkd"].item()
        assert got == pytest.approx(factor * ref, rel=1e-6)


# --------------------------------------------------------------------------- FitNet, AT, SP, PKT
def _avg_pool_2x2(x: torch.Tensor) -> list:
    """(B, C, 2H, 2W) -> nested lists (B, C, H, W) of 2×2 block means, by loops."""
    b, c, h, w = x.shape
    v = lst(x)

    def block(i, j, p, q):
        m = v[i][j]
        return (m[2 * p][2 * q] + m[2 * p + 1][2 * q] + m[2 * p][2 * q + 1] + m[2 * p + 1][2 * q + 1]) / 4

    return [[[[block(i, j, p, q) for q in range(w // 2)] for p in range(h // 2)] for j in range(c)] for i in range(b)]


@pytest.mark.parametrize("s_hw,t_hw", [(4, 4), (4, 2), (2, 4)])
def test_fitnet_regressor_and_pooling_by_hand(s_hw, t_hw):
    torch.manual_seed(0)
    fs, ft = torch.randn(3, 2, s_hw, s_hw), torch.randn(3, 3, t_hw, t_hw)
    ctx = fake_ctx(s_probe=fake_probe(stage_shapes=[(1, 8, 8), (2, s_hw, s_hw)]),
                   t_probe=fake_probe(stage_shapes=[(1, 8, 8), (3, t_hw, t_hw)]))
    term = build_distill_loss("fitnet", DistillConfig().fitnet.model_copy(update={"hint_layer": -1}), ctx)
    w = torch.tensor([[1.0, -2.0], [0.5, 0.5], [0.0, 3.0]])
    bias = torch.tensor([0.1, -0.2, 0.3])
    with torch.no_grad():
        term.regressor.conv.weight.copy_(w[:, :, None, None])
        term.regressor.conv.bias.copy_(bias)
    term.train()
    got = term(output(stages=[None, fs]), output(stages=[None, ft]), batch_of([fs]), step_ctx())["fitnet"].item()

    src = _avg_pool_2x2(fs) if s_hw > t_hw else lst(fs)
    tgt = _avg_pool_2x2(ft) if t_hw > s_hw else lst(ft)
    hw = min(s_hw, t_hw)
    # 1×1 conv, then BatchNorm with batch statistics (biased variance, eps 1e-5, γ=1, β=0), then ReLU
    conv = [[[[sum(w[o][i].item() * src[n][i][p][q] for i in range(2)) + bias[o].item() for q in range(hw)]
              for p in range(hw)] for o in range(3)] for n in range(3)]
    sq_err, count = 0.0, 0
    for o in range(3):
        vals = [conv[n][o][p][q] for n in range(3) for p in range(hw) for q in range(hw)]
        mu = sum(vals) / len(vals)
        var = sum((v - mu) ** 2 for v in vals) / len(vals)
        for n in range(3):
            for p in range(hw):
                for q in range(hw):
                    y = max(0.0, (conv[n][o][p][q] - mu) / math.sqrt(var + 1e-5))
                    sq_err += (y - tgt[n][o][p][q]) ** 2
                    count += 1
    assert got == pytest.approx(100 * sq_err / count, rel=1e-4)


def _attention(x: list) -> list[list[float]]:
    """x nested (B, C, H, W) -> per sample l2-normalised mean over channels of x², flattened."""
    out = []
    for sample in x:
        c = len(sample)
        h, w = len(sample[0]), len(sample[0][0])
        flat = [sum(sample[ch][p][q] ** 2 for ch in range(c)) / c for p in range(h) for q in range(w)]
        out.append(unit(flat))
    return out


def test_at_by_hand_with_unequal_sizes_and_stage_counts():
    torch.manual_seed(0)
    # student: stem + 2 stages; teacher: stem + 3 stages -> pairs are the last two of each
    s_st = [torch.randn(2, 3, 8, 8), torch.randn(2, 2, 4, 4), torch.randn(2, 4, 2, 2)]
    t_st = [torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8, 8), torch.randn(2, 6, 4, 4), torch.randn(2, 3, 2, 2)]
    ctx = fake_ctx(s_probe=fake_probe(stage_shapes=[tuple(x.shape[1:]) for x in s_st]),
                   t_probe=fake_probe(stage_shapes=[tuple(x.shape[1:]) for x in t_st]))
    term = build_distill_loss("at", DistillConfig().at, ctx)
    got = term(output(stages=s_st), output(stages=t_st), batch_of([s_st[0]]), step_ctx())["at"].item()
    expected = 0.0
    for fs, ft in ((s_st[1], t_st[2]), (s_st[2], t_st[3])):
        a_s = _attention(lst(fs))
        a_t = _attention(_avg_pool_2x2(ft) if ft.shape[-1] > fs.shape[-1] else lst(ft))
        diffs = [(u - v) ** 2 for rs, rt in zip(a_s, a_t) for u, v in zip(rs, rt)]
        expected += sum(diffs) / len(diffs)
    assert got == pytest.approx(1000 * expected, rel=1e-5)


def test_sp_by_hand():
    torch.manual_seed(0)
    fs, ft = torch.randn(3, 2, 2, 2), torch.randn(3, 5, 1, 1)
    term = build_distill_loss("sp", DistillConfig().sp, fake_ctx())
    got = term(output(stages=[fs]), output(stages=[ft]), batch_of([fs]), step_ctx())["sp"].item()

    def gram(x):
        rows = lst(x.flatten(1))
        g = [[dot(a, b) for b in rows] for a in rows]
        return [unit(r) for r in g]

    gs, gt = gram(fs), gram(ft)
    expected = sum((b - a) ** 2 for ra, rb in zip(gs, gt) for a, b in zip(ra, rb)) / 9
    assert got == pytest.approx(3000 * expected, rel=1e-5)


def test_pkt_by_hand():
    torch.manual_seed(0)
    fs, ft = torch.randn(4, 3), torch.randn(4, 6)
    term = build_distill_loss("pkt", DistillConfig().pkt, fake_ctx())
    got = term(output(pooled=fs), output(pooled=ft), batch_of([fs]), step_ctx())["pkt"].item()
    eps = 1e-7

    def cond(x):
        rows = []
        for r in lst(x):
            n = math.sqrt(sum(v * v for v in r))
            rows.append([v / (n + eps) for v in r])
        k = [[(dot(a, b) + 1) / 2 for b in rows] for a in rows]
        return [[v / sum(r) for v in r] for r in k]

    ps, pt = cond(fs), cond(ft)
    expected = sum(b * math.log((b + eps) / (a + eps)) for ra, rb in zip(ps, pt) for a, b in zip(ra, rb)) / 16
    assert got == pytest.approx(30000 * expected, rel=1e-5)


# ---------------------------------------------------------------------------------------- CRD
def test_crd_nce_on_a_tiny_bank_by_hand():
    torch.manual_seed(0)
    n, d, k, T, m = 6, 3, 2, 0.5, 0.25
    cfg = DistillConfig().crd.model_copy(update={"feat_dim": d, "nce_k": k, "nce_t": T, "nce_m": m, "weight": 0.8})
    ctx = fake_ctx(s_probe=fake_probe(pooled_dim=d), t_probe=fake_probe(pooled_dim=d), num_train=n)
    term = build_distill_loss("crd", cfg, ctx)
    with torch.no_grad():  # identity embeddings: v = normalize(f)
        for e in (term.embed_s, term.embed_t):
            e.linear.weight.copy_(torch.eye(d))
            e.linear.bias.zero_()
    negatives = torch.tensor([[1, 4], [0, 5]])
    term.negative_sampler = lambda b, device: negatives.to(device)
    fs, ft = torch.randn(2, d), torch.randn(2, d)
    index = torch.tensor([2, 3])
    mem_s, mem_t = lst(term.memory_s), lst(term.memory_t)
    got = term(output(pooled=fs), output(pooled=ft), batch_of([fs], index=index), step_ctx())["crd"].item()

    vs, vt = [unit(r) for r in lst(fs)], [unit(r) for r in lst(ft)]
    rows = [[index[b].item()] + negatives[b].tolist() for b in range(2)]
    out_s = [[math.exp(dot(mem_t[j], vs[b]) / T) for j in rows[b]] for b in range(2)]  # student anchor, teacher bank
    out_t = [[math.exp(dot(mem_s[j], vt[b]) / T) for j in rows[b]] for b in range(2)]  # teacher anchor, student bank
    z_s = sum(sum(r) for r in out_s) / 6 * n
    z_t = sum(sum(r) for r in out_t) / 6 * n

    def nce(out, z):
        noise, total = k / n, 0.0
        for r in out:
            p = [v / z for v in r]
            total += math.log(p[0] / (p[0] + noise + 1e-7))
            total += sum(math.log(noise / (q + noise + 1e-7)) for q in p[1:])
        return -total / len(out)

    assert got == pytest.approx(0.8 * (nce(out_s, z_s) + nce(out_t, z_t)), rel=1e-5)
    assert term.nce_z.tolist() == pytest.approx([z_s, z_t], rel=1e-5)
    # momentum update of the positive rows, renormalised
    for b, i in enumerate(index.tolist()):
        for bank, old, v in ((term.memory_s, mem_s, vs), (term.memory_t, mem_t, vt)):
            row = unit([m * a + (1 - m) * c for a, c in zip(old[i], v[b])])
            assert lst(bank[i]) == pytest.approx(row, rel=1e-5)
    untouched = [i for i in range(n) if i not in index.tolist()]
    assert torch.equal(term.memory_s[untouched], torch.tensor(mem_s, dtype=torch.float32)[untouched])
    # Z is fixed once: a second batch does not change it
    z_before = term.nce_z.clone()
    term(output(pooled=fs * 3), output(pooled=ft), batch_of([fs], index=index), step_ctx())
    assert torch.equal(term.nce_z, z_before)


@pytest.mark.parametrize("n", [6, 400])
def test_crd_bank_scoring_paths_match_hand_dot_products(n):
    # N <= B·(1+K) scores the whole bank then gathers; larger banks gather rows first
    from kdlab.distillers.crd import _bank_scores

    torch.manual_seed(0)
    memory, v = torch.randn(n, 4), torch.randn(2, 4)
    idx = torch.tensor([[2, 1, 4, 5], [3, 0, 5, 5]])
    got = _bank_scores(memory, v, idx)
    mem, vv = lst(memory), lst(v)
    expected = [[dot(mem[j], vv[b]) for j in idx[b].tolist()] for b in range(2)]
    assert lst(got) == [pytest.approx(r, rel=1e-5) for r in expected]


# ------------------------------------------------------------------------------------- CoCoRD
class LinearNet(nn.Module):
    """pooled = flatten(x) @ Wᵀ; enough of the ModelOutput contract for CoCoRD's hand checks."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        pooled = x.flatten(1) @ self.w.t()
        return output(pooled=pooled, stages=[x], logits=pooled)


def _hand_cocord(pred="both", tau=0.5, queue=None, memory="queue"):
    """A CoCoRD term whose heads are identities, with student W=I, slow student W=A, teacher W=Bt."""
    d = 3
    student = LinearNet(torch.eye(d))
    cfg = DistillConfig().cocord.model_copy(update={
        "pred": pred, "tau": tau, "queue_size": 3, "proj_dim": d, "memory": memory,
        "ctr_weight": 1.0, "pred_weight": 1.0,
    })
    term = build_distill_loss("cocord", cfg, fake_ctx(student=student, s_probe=fake_probe(pooled_dim=d),
                                                      t_probe=fake_probe(pooled_dim=d), num_train=5))
    term.projector = term.predictor = term.slow_projector = term.teacher_projector = nn.Identity()
    term.ema_layers = []
    with torch.no_grad():
        term.slow_student.w.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, -1.0]]))
        if queue is not None:
            term.queue.copy_(queue)
    teacher = LinearNet(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 1.0]]))
    return term, student, teacher


def _views():
    x0 = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 1.0]])
    x1 = torch.tensor([[0.0, 1.0, 1.0], [2.0, 0.5, -0.5]])
    x2 = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    return x0, x1, x2


def _d(u, v):
    return 2 - 2 * dot(unit(u), unit(v))


def _matvec(w, x):
    return [dot(r, x) for r in w]


@pytest.mark.parametrize("pred", ["both", "forward", "reverse"])
def test_cocord_prediction_loss_directions_by_hand(pred):
    term, student, teacher = _hand_cocord(pred)
    x0, x1, x2 = _views()
    s = student(x0)
    out = term(s, None, batch_of([x0, x1, x2]), step_ctx(student=student, teacher=teacher))
    a = lst(term.slow_student.w)
    fwd = [_d(u, _matvec(a, v)) for u, v in zip(lst(x0), lst(x1))]  # student(view 0) predicts slow(view 1)
    rev = [_d(u, _matvec(a, v)) for u, v in zip(lst(x1), lst(x0))]  # student(view 1) predicts slow(view 0)
    per_row = {"both": [f + r for f, r in zip(fwd, rev)], "forward": fwd, "reverse": rev}[pred]
    assert out["cocord_pred"].item() == pytest.approx(sum(per_row) / 2, rel=1e-5)
    assert fwd != pytest.approx(rev)  # the directions are distinguishable in this example


def test_cocord_info_nce_on_a_tiny_queue_by_hand():
    queue = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, -1.0, 0.5]]), dim=1)
    tau = 0.5
    term, student, teacher = _hand_cocord(queue=queue, tau=tau)
    x0, x1, x2 = _views()
    out = term(student(x0), None, batch_of([x0, x1, x2]), step_ctx(student=student, teacher=teacher))
    wt = lst(teacher.w)
    total = 0.0
    keys = []
    for q_raw, xt in zip(lst(x0), lst(x2)):
        q, key = unit(q_raw), unit(_matvec(wt, xt))
        keys.append(key)
        logits = [dot(q, key) / tau] + [dot(q, n) / tau for n in lst(queue)]
        total += -math.log(softmax_row(logits)[0])
    assert out["cocord_ctr"].item() == pytest.approx(total / 2, rel=1e-5)
    # this batch's keys were enqueued at the pointer (0, 1); the pointer moved to 2
    assert lst(term.queue[:2]) == [pytest.approx(k, rel=1e-5) for k in keys]
    assert torch.equal(term.queue[2], queue[2])
    assert int(term.queue_ptr) == 2 and int(term.queue_fill) == 2


def test_cocord_queue_wraps_and_handles_oversized_batches():
    term, _, _ = _hand_cocord()
    keys = [F.normalize(torch.randn(2, 3), dim=1) for _ in range(3)]
    for kb in keys:
        term._push(kb, torch.arange(2))
    # 6 keys into K=3: slots 0,1 <- batch0, 2,0 <- batch1, 1,2 <- batch2 -> queue = [b1[1], b2[0], b2[1]]
    assert torch.equal(term.queue, torch.stack([keys[1][1], keys[2][0], keys[2][1]]))
    assert int(term.queue_ptr) == 0 and int(term.queue_fill) == 3
    big = F.normalize(torch.randn(5, 3), dim=1)  # B > K: the newest K survive, pointer advances by B
    term._push(big, torch.arange(5))
    assert int(term.queue_ptr) == 2
    # slots for keys 2,3,4 start at ptr + (5 - 3) = 2 -> slots 2,0,1
    assert torch.equal(term.queue, torch.stack([big[3], big[4], big[2]]))


def test_cocord_bank_writes_teacher_keys_by_index():
    term, student, teacher = _hand_cocord(memory="bank")
    x0, x1, x2 = _views()
    index = torch.tensor([4, 1])
    term(student(x0), None, batch_of([x0, x1, x2], index=index), step_ctx(student=student, teacher=teacher))
    key = F.normalize(x2 @ teacher.w.t(), dim=1)
    assert torch.allclose(term.bank[index], key)
    assert term.bank_seen.tolist() == [False, True, False, False, True]


def test_cocord_bank_mask_drops_the_anchors_own_entry():
    term, *_ = _hand_cocord(memory="bank")
    index = torch.tensor([4, 1])
    torch.manual_seed(3)
    expected_idx = torch.randint(0, 5, (3,))
    torch.manual_seed(3)
    negatives, mask = term._negatives(index, None)
    assert torch.equal(negatives, term.bank[expected_idx])
    assert torch.equal(mask, expected_idx[None, :] == index[:, None])


def _ema_pairs(m: Distillation):
    term = m.terms["cocord"]
    return term, [
        (list(term.slow_student.parameters()), list(m.student.parameters()), term.cfg.m_r),
        (list(term.slow_projector.parameters()), list(term.projector.parameters()), term.cfg.m_r),
    ]


@pytest.mark.parametrize("t_arch,m_c", [("resnet8", 0.99), ("wrn_16_2", 0.9), ("wrn_16_2", 1.0)])
def test_cocord_ema_moves_by_one_minus_m_times_delta(t_arch, m_c):
    m = make_distillation(["cocord"], t_arch=t_arch, cocord=dict(m_c=m_c, m_r=0.7))
    m.train()
    term, pairs = _ema_pairs(m)
    cross = term.teacher_projector[0].in_features != term.projector[0].in_features
    assert cross == (t_arch != "resnet8")
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.5)
    logits, losses = m.forward_train(random_batch(m), 0.0)
    sum(losses.values()).backward()
    opt.step()
    before = [[p.detach().clone() for p in ema] for ema, _, _ in pairs]
    online = [[p.detach().clone() for p in src] for _, src, _ in pairs]
    head_before = [p.detach().clone() for p in term.teacher_projector.parameters()]
    proj_now = [p.detach().clone() for p in term.projector.parameters()]
    m.after_step()
    moved = 0
    for (ema, _, mom), b, o in zip(pairs, before, online):
        for p, pb, po in zip(ema, b, o):
            assert torch.allclose(p - pb, (1 - mom) * (po - pb), atol=1e-6)
            moved += int(not torch.equal(p, pb))
    assert moved > 0
    head_after = list(term.teacher_projector.parameters())
    for i, (pa, pb) in enumerate(zip(head_after, head_before)):
        layer_is_input = i < 2  # weight and bias of the first Linear
        if m_c == 1.0 or (cross and layer_is_input):
            assert torch.equal(pa, pb)  # frozen: never moves
        else:
            assert torch.allclose(pa - pb, (1 - m_c) * (proj_now[i] - pb), atol=1e-6)
    assert all(not p.requires_grad for p in term.teacher_projector.parameters())
    assert all(not p.requires_grad for p in term.slow_student.parameters())


def test_cocord_same_arch_teacher_head_starts_as_student_projector_copy():
    m = make_distillation(["cocord"])
    term = m.terms["cocord"]
    heads = zip(term.projector.parameters(), term.teacher_projector.parameters(), term.slow_projector.parameters())
    for a, b, c in heads:
        assert torch.equal(a, b) and torch.equal(a, c)
    for a, b in zip(m.student.parameters(), term.slow_student.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- one training step
PAIRS = [("resnet8", "resnet8"), ("resnet8", "MobileNetV2")]  # same arch; 64 vs 1280 pooled, 4 vs 5 stages
#: methods whose reference needs equal stage channels in both networks (one ConfigError otherwise)
SAME_WIDTH_ONLY = {"fsp", "kdsvd"}


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("s_arch,t_arch", PAIRS)
def test_one_training_step(method, s_arch, t_arch):
    if method in SAME_WIDTH_ONLY and s_arch != t_arch:
        with pytest.raises(ConfigError, match=f"distill.{method}"):
            make_distillation([method], s_arch=s_arch, t_arch=t_arch)
        return
    m = make_distillation([method], s_arch=s_arch, t_arch=t_arch, dkd=dict(warmup=0))
    m.train()
    teacher = m.teacher
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = [p.detach().clone() for p in m.student.parameters()]
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1, momentum=0.9)
    batch = random_batch(m)
    logits, losses = m.forward_train(batch, 0.5)
    assert logits.shape == (8, 10)
    assert "ce" in losses and len(losses) >= 2
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    opt.zero_grad()
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    m.after_step()
    m.epoch_stats()
    assert not teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_before.items())  # incl. BN statistics
    assert any(not torch.equal(a, b) for a, b in zip(s_before, m.student.parameters()))
    assert not any(k.startswith("_teacher") or k.startswith("teacher.") for k in m.state_dict())


def test_one_step_on_32x32_rgb_cross_arch():
    shape = (3, 32, 32)
    m = make_distillation(["kd", "at", "fitnet", "crd"], s_arch="resnet8", t_arch="resnet8x4", shape=shape)
    m.train()
    batch = random_batch(m, shape=shape)
    _, losses = m.forward_train(batch, 0.0)
    assert set(losses) == {"ce", "kd", "at", "fitnet", "crd"}
    sum(losses.values()).backward()


@pytest.mark.parametrize("methods,keys", [
    (["kd", "rkd"], {"ce", "kd", "rkd_dist", "rkd_angle"}),
    (["crd", "kd"], {"ce", "crd", "kd"}),
    (["cocord", "kd"], {"ce", "cocord_ctr", "cocord_pred", "kd"}),
])
def test_combined_methods_produce_all_terms(methods, keys):
    m = make_distillation(methods, t_arch="wrn_16_2")
    m.train()
    _, losses = m.forward_train(random_batch(m), 0.0)
    assert set(losses) == keys


@pytest.mark.parametrize("method", ALL_METHODS)
def test_ablation_metrics_know_each_methods_loss_terms(method):
    """A plan's "KD loss", "contrastive loss", ... find the terms a student really logs (train_<term>)."""
    from kdlab.experiment.terms import run_terms
    from kdlab.experiment.schema import build_config

    m = make_distillation([method], t_arch="resnet8" if method in SAME_WIDTH_ONLY else "wrn_16_2")
    m.train()
    _, losses = m.forward_train(random_batch(m), 0.0)
    assert set(losses) == set(run_terms(build_config(overrides=[f"distill.methods=[{method}]"]), "student"))


# ------------------------------------------------------------------------ teacher, device, state
def test_teacher_is_frozen_unregistered_and_moved_with_the_module():
    m = make_distillation(["kd"])
    assert m.model is m.student
    assert all(not p.requires_grad for p in m.teacher.parameters())
    ids = {id(p) for p in m.parameters()}
    assert not any(id(p) in ids for p in m.teacher.parameters())
    assert not any("teacher" in k for k in m.state_dict())
    m.train()
    assert m.student.training and not m.teacher.training
    m.to(torch.float64)
    assert next(m.teacher.parameters()).dtype == torch.float64
    assert next(m.student.parameters()).dtype == torch.float64
    m.teacher.train()  # a stray train() on the teacher is undone at the next step
    m.to(torch.float32).forward_train(random_batch(m), 0.0)
    assert not m.teacher.training


def test_views_follow_the_terms():
    assert make_distillation(["kd"]).views == 1
    m = make_distillation(["kd", "cocord"])
    assert m.views == 3
    with pytest.raises(ValueError, match="3 views"):
        m.forward_train(Batch([torch.randn(4, *SHAPE)], torch.zeros(4, dtype=torch.long), torch.arange(4)), 0.0)


def test_cocord_alone_skips_the_teacher_view0_forward():
    m = make_distillation(["cocord"])
    calls = []
    m.teacher.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].data_ptr()))
    batch = random_batch(m)
    m.train()
    m.forward_train(batch, 0.0)
    assert calls == [batch.views[2].data_ptr()]


def test_extra_state_bytes_counts_banks_and_ema_copies():
    m = make_distillation(["crd"])
    bank = 2 * NUM_TRAIN * 16 * 4
    assert bank <= m.extra_state_bytes() < bank + 64
    c = make_distillation(["cocord"])
    term = c.terms["cocord"]
    slow = sum(p.numel() * 4 for p in term.slow_student.parameters())
    assert c.extra_state_bytes() >= slow + term.queue.numel() * 4


@pytest.mark.parametrize("methods,cocord", [
    (["crd"], {}),
    (["cocord"], {"memory": "queue"}),
    (["cocord"], {"memory": "bank"}),
])
def test_state_dict_round_trip_restores_memories_exactly(methods, cocord):
    m = make_distillation(methods, t_arch="wrn_16_2", cocord=cocord)
    m.train()
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1)
    for seed in range(3):  # 3 × 8 keys into a queue of 20: the pointer wraps
        _, losses = m.forward_train(random_batch(m, seed=seed), float(seed))
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        m.after_step()
    state = m.state_dict()
    torch.manual_seed(123)  # a fresh module with different random banks/queues/heads
    fresh = make_distillation(methods, t_arch="wrn_16_2", cocord=cocord)
    fresh.load_state_dict(state)
    for k, v in m.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    if methods == ["crd"]:
        assert (fresh.terms["crd"].nce_z > 0).all()
    elif cocord["memory"] == "queue":
        assert int(fresh.terms["cocord"].queue_ptr) == 24 % 20
    # the restored module continues identically
    batch = random_batch(m, seed=9)
    for mod in (m, fresh):
        mod.eval()
    torch.manual_seed(5)
    _, a = m.forward_train(batch, 3.0)
    torch.manual_seed(5)
    _, b = fresh.forward_train(batch, 3.0)
    assert {k: v.item() for k, v in a.items()} == pytest.approx({k: v.item() for k, v in b.items()}, rel=1e-6)


def test_epoch_stats_report_memory_state():
    m = make_distillation(["crd", "cocord"])
    m.train()
    m.forward_train(random_batch(m), 0.0)
    stats = m.epoch_stats()
    assert stats["cocord_queue_ptr"] == 8 and stats["cocord_queue_fill"] == pytest.approx(8 / 20)
    assert 0 <= stats["cocord_ctr_acc"] <= 1 and stats["crd_z_s"] > 0 and stats["crd_z_t"] > 0
    assert "cocord_ctr_acc" not in m.epoch_stats()  # reset after reading


# ------------------------------------------------------------------------------ mixed precision
def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_step_under_bf16_autocast_keeps_losses_and_memories_float32(device):
    m = make_distillation(["kd", "crd", "cocord", "dkd"], t_arch="wrn_16_2").to(device)
    m.train()
    assert next(m.teacher.parameters()).device.type == device
    batch = random_batch(m)
    batch = Batch([v.to(device) for v in batch.views], batch.labels.to(device), batch.index.to(device))
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        _, losses = m.forward_train(batch, 0.0)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for k, v in losses.items() if k != "ce")
    sum(losses.values()).backward()
    m.after_step()
    crd, cocord = m.terms["crd"], m.terms["cocord"]
    assert crd.memory_s.dtype == cocord.queue.dtype == torch.float32
    assert torch.allclose(cocord.queue[:8].norm(dim=1), torch.ones(8, device=device), atol=1e-5)


# ------------------------------------------------------------------------ logit standardization
def _zscore(row: list[float]) -> list[float]:
    """(z - mean) / (1e-7 + unbiased std): the reference's normalize()."""
    n = len(row)
    mu = sum(row) / n
    sd = math.sqrt(sum((v - mu) ** 2 for v in row) / (n - 1))
    return [(v - mu) / (1e-7 + sd) for v in row]


def test_kd_logit_standardization_by_hand_with_the_references_T_and_weight():
    s = torch.tensor([[2.0, 0.5, -1.0, 4.0], [0.1, 0.2, 0.3, 0.0]], dtype=torch.float64)
    t = 5 * torch.tensor([[3.0, -0.5, 0.0, 1.0], [-1.0, 2.0, 0.5, 0.2]], dtype=torch.float64) + 7
    m = make_distillation(["kd"], kd={"logit_std": True})
    term = m.terms["kd"]
    assert (term.T, term.weight, m.ce_weight) == (2.0, 9.0, pytest.approx(0.1))  # --base-temp 2, KD_WEIGHT 9
    got = term(output(logits=s), output(logits=t), batch_of([s]), step_ctx())["kd"]
    total = 0.0
    for rs, rt in zip(lst(s), lst(t)):
        ps = softmax_row([v / 2 for v in _zscore(rs)])
        pt = softmax_row([v / 2 for v in _zscore(rt)])
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(9 * total * 4 / 2, rel=1e-12)
    # the teacher's scale and shift do not matter after standardization (up to the 1e-7 in the divisor)
    again = term(output(logits=s), output(logits=(t - 7) / 5), batch_of([s]), step_ctx())["kd"]
    assert again.item() == pytest.approx(got.item(), rel=1e-6)
    # an explicit weight wins; off, nothing changes
    assert make_distillation(["kd"], kd={"logit_std": True, "weight": 0.5}).terms["kd"].weight == 0.5
    off = make_distillation(["kd"]).terms["kd"]
    assert (off.T, off.weight, off.standardize) == (4.0, 0.9, False)


def test_dkd_logit_standardization_by_hand_scales_alpha_beta_and_uses_base_T():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    t = torch.tensor([[3.0, -0.5, 0.0], [-1.0, 2.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    cfg = DistillConfig().dkd.model_copy(update={"logit_std": True, "warmup": 0})
    term = build_distill_loss("dkd", cfg, fake_ctx())
    assert (term.T, term.alpha, term.beta) == (2.0, 9.0, 72.0)
    got = term(output(logits=s), output(logits=t), batch_of([s], labels=y), step_ctx())["dkd"].item()
    T, tckd, nckd = 2.0, 0.0, 0.0
    for rs, rt, c in zip(lst(s), lst(t), y.tolist()):
        rs, rt = _zscore(rs), _zscore(rt)
        ps, pt = softmax_row([v / T for v in rs]), softmax_row([v / T for v in rt])
        tckd += sum(a * math.log(a / b) for a, b in zip([pt[c], 1 - pt[c]], [ps[c], 1 - ps[c]]))
        qs = softmax_row([v / T for i, v in enumerate(rs) if i != c])
        qt = softmax_row([v / T for i, v in enumerate(rt) if i != c])
        nckd += sum(a * math.log(a / b) for a, b in zip(qt, qs))
    assert got == pytest.approx((9 * tckd + 72 * nckd) * T * T / 2, rel=1e-12)


# --------------------------------------------------------------------------------------- CTKD
def test_ctkd_gradient_reversal_flips_and_scales_the_gradient():
    from kdlab.distillers.ctkd import grad_reverse

    x = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, 2.0, -4.0], dtype=torch.float64)
    y = grad_reverse(x, 0.3)
    assert torch.equal(y, x)  # identity forward
    (g,) = torch.autograd.grad((w * y ** 2).sum(), x)
    assert g.tolist() == pytest.approx((-0.3 * 2 * w * x).tolist(), rel=1e-15)
    (g0,) = torch.autograd.grad(grad_reverse(x, 0.0).sum(), x)
    assert g0.abs().sum().item() == 0.0


def test_ctkd_curriculum_is_the_cosine_closed_form_per_1_based_epoch():
    from kdlab.distillers.ctkd import ctkd_lambda

    # λ(e) = λ_max (1 − cos(π min(e, 10) / 10)) / 2, e = ⌊progress⌋ + 1
    assert ctkd_lambda(0.0) == pytest.approx((1 - math.cos(math.pi / 10)) / 2, rel=1e-15)  # epoch 1: 0.02447…
    assert ctkd_lambda(0.99) == ctkd_lambda(0.0)
    assert ctkd_lambda(4.0) == pytest.approx(0.5, rel=1e-15)  # epoch 5: cos(π/2) = 0
    assert ctkd_lambda(2.5, lambda_max=2.0) == pytest.approx(1 - math.cos(3 * math.pi / 10), rel=1e-15)
    assert ctkd_lambda(9.0) == pytest.approx(1.0, rel=1e-15) and ctkd_lambda(239.0) == pytest.approx(1.0)
    assert ctkd_lambda(3.0, lambda_max=0.7, epochs=0) == 0.7
    # the reference's CosineDecay(max=0, min=-1, loops=10).get_value(epoch) is -λ(epoch)
    for epoch in (1, 3, 7, 10, 12):
        ref = (math.cos(min(epoch, 10) * math.pi / 10) + 1) * 0.5 * (0 - (-1)) + (-1)
        assert -ctkd_lambda(epoch - 1.0) == pytest.approx(ref, abs=1e-15)


def test_ctkd_loss_is_kd_at_the_current_temperature_and_theta_gets_the_reversed_gradient():
    s = (torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * 3).double().requires_grad_(True)
    t = (torch.randn(4, 6, generator=torch.Generator().manual_seed(1)) * 3).double()
    m = make_distillation(["ctkd"])
    term = m.terms["ctkd"]
    assert term.weight == 0.9 and m.ce_weight == pytest.approx(0.1)
    assert any(p is term.theta for p in m.trainable_parameters())  # trained by the student's optimizer
    term.double()
    T = 1 + 20 / (1 + math.exp(-1.0))  # θ = 1 at init: T ≈ 15.62
    assert float(term.temperature()) == pytest.approx(T, rel=1e-12)
    progress = 4.2  # epoch 5: λ = 0.5
    got = term(output(logits=s), output(logits=t), batch_of([s]), step_ctx(progress))["ctkd"]
    total = 0.0
    for rs, rt in zip(lst(s), lst(t)):
        ps, pt = softmax_row([v / T for v in rs]), softmax_row([v / T for v in rt])
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(0.9 * total * T * T / 4, rel=1e-12)
    got.backward()
    # the student's gradient is KD's at fixed T; θ's is −λ times KD's derivative in θ
    from kdlab.losses import kd_loss

    s2 = s.detach().clone().requires_grad_(True)
    theta = term.theta.detach().clone().requires_grad_(True)
    ref = 0.9 * kd_loss(s2, t, (1 + 20 * torch.sigmoid(theta)).reshape(()))
    ref.backward()
    assert torch.allclose(s.grad, s2.grad, rtol=1e-12, atol=1e-15)
    assert term.theta.grad.item() == pytest.approx(-0.5 * theta.grad.item(), rel=1e-12)
    assert term.stats() == {"ctkd_T": pytest.approx(T, rel=1e-12), "ctkd_lambda": pytest.approx(0.5)}


def test_ctkd_instance_mode_starts_at_the_global_temperature_and_trains_its_mlp_through_the_reversal():
    from kdlab.distillers.ctkd import ctkd_temperature

    s = (torch.randn(4, 10, generator=torch.Generator().manual_seed(2)) * 3).double().requires_grad_(True)
    t = (torch.randn(4, 10, generator=torch.Generator().manual_seed(3)) * 3).double()
    m = make_distillation(["ctkd"], ctkd={"temperature": "instance", "instance_hidden": 8})
    term = m.terms["ctkd"].double()
    assert not hasattr(term, "theta") and any(p is term.instance.out.weight for p in m.trainable_parameters())
    T0 = 1 + 20 / (1 + math.exp(-1.0))
    assert float(term.temperature()) == pytest.approx(T0, rel=1e-12)  # zero output weight: θ_i = init for all
    got = term(output(logits=s), output(logits=t), batch_of([s]), step_ctx(4.2))["ctkd"]  # λ = 0.5
    total = 0.0
    for rs, rt in zip(lst(s), lst(t)):  # the README's per-sample loss, all at T0 here
        ps = softmax_row([v / T0 for v in rs])
        qs = [v + 1e-7 for v in softmax_row([v / T0 for v in rt])]
        total += T0 * T0 * sum(a * (math.log(a) - math.log(b)) for a, b in zip(qs, ps))
    assert got.item() == pytest.approx(0.9 * total / 4, rel=1e-12)
    got.backward()
    # the MLP's output layer gets the reversed gradient of the loss in θ_i, times its hidden activations
    h = torch.relu(term.instance.hidden(torch.cat([s, t], 1).detach()))
    theta = torch.full((4,), 1.0, dtype=torch.float64, requires_grad=True)
    from kdlab.distillers.ctkd import ctkd_instance_kl

    ref = 0.9 * ctkd_instance_kl(s.detach(), t, ctkd_temperature(theta))
    ref.backward()
    want = -0.5 * (theta.grad[:, None] * h.detach()).sum(0)
    assert torch.allclose(term.instance.out.weight.grad.reshape(-1), want, rtol=1e-10, atol=1e-14)
    assert term.instance.out.bias.grad.item() == pytest.approx(-0.5 * theta.grad.sum().item(), rel=1e-10)
    stats = term.stats()
    assert stats["ctkd_lambda"] == pytest.approx(0.5) and stats["ctkd_T"] == pytest.approx(T0, rel=1e-12)
    assert stats["ctkd_T_std"] == pytest.approx(0.0, abs=1e-12)
    # the student's logits get the loss's gradient only (not through the temperature MLP's inputs)
    s2 = s.detach().clone().requires_grad_(True)
    (0.9 * ctkd_instance_kl(s2, t, torch.full((4,), T0, dtype=torch.float64))).backward()
    assert torch.allclose(s.grad, s2.grad, rtol=1e-12, atol=1e-15)


def test_ctkd_temperature_choice_validates():
    from kdlab.config import ConfigError
    from kdlab.experiment.schema import build_config

    cfg = build_config(overrides=["distill.methods=[ctkd]", "distill.ctkd.temperature=instance"])
    assert cfg.distill.ctkd.temperature == "instance" and cfg.distill.ctkd.instance_hidden == 256
    with pytest.raises(ConfigError, match="distill.ctkd.temperature"):
        build_config(overrides=["distill.methods=[ctkd]", "distill.ctkd.temperature=local"])
