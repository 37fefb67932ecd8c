"""NST, VID, OFD and ReviewKD (issue 15).

Expected values are computed here independently of ``kdlab.distillers``: plain Python loops over small
float64 tensors (``math`` only) following the reductions and constants of the reference code
(RepDistiller ``distiller_zoo/NST.py``, ``VID.py`` + ``train_student.py``; mdistiller ``OFD.py``,
``ReviewKD.py`` + ``configs/cifar100``).
"""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.data.base import Batch
from kdlab.distillers import DistillContext, Distillation
from kdlab.experiment.schema import DistillConfig, build_config
from kdlab.models import build_model, probe

SHAPE = (1, 8, 8)
NUM_TRAIN = 64


# ------------------------------------------------------------------------------------ helpers
def lst(t: torch.Tensor) -> list:
    return t.detach().double().tolist()


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / max(n, 1e-12) for x in v]


def dot(u, v) -> float:
    return sum(a * b for a, b in zip(u, v))


def make_distillation(methods, s_arch="resnet8", t_arch="resnet8", shape=SHAPE, num_classes=10, **blocks):
    torch.manual_seed(0)
    student = build_model(s_arch, num_classes, in_channels=shape[0])
    teacher = build_model(t_arch, num_classes, in_channels=shape[0])
    cfg = DistillConfig(methods=methods, **blocks)
    ctx = DistillContext(student_probe=probe(student, shape), teacher_probe=probe(teacher, shape),
                         num_classes=num_classes, num_train=NUM_TRAIN, input_shape=shape, epochs=4)
    return Distillation(student, teacher, cfg, ctx)


def random_batch(b=8, shape=SHAPE, num_classes=10, seed=1, dtype=torch.float32) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, *shape, generator=g).to(dtype)
    return Batch(views=[x], labels=torch.randint(0, num_classes, (b,), generator=g), index=torch.arange(b))


def one_step(m: Distillation, shape=SHAPE) -> dict:
    m.train()
    t_before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    s_before = [p.detach().clone() for p in m.student.parameters()]
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.05, momentum=0.9)
    _, losses = m.forward_train(random_batch(shape=shape), 0.5)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    opt.zero_grad()
    sum(losses.values()).backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    opt.step()
    m.after_step()
    assert all(torch.equal(v, m.teacher.state_dict()[k]) for k, v in t_before.items())
    assert any(not torch.equal(a, b) for a, b in zip(s_before, m.student.parameters()))
    return losses


def pool_hand(x: list, h: int, w: int) -> list:
    """Adaptive average pooling (B, C, H, W) -> (B, C, h, w) for sizes that divide evenly."""
    H, W = len(x[0][0]), len(x[0][0][0])
    kh, kw = H // h, W // w
    return [[[[sum(c[i * kh + a][j * kw + b] for a in range(kh) for b in range(kw)) / (kh * kw)
               for j in range(w)] for i in range(h)] for c in n] for n in x]


# ---------------------------------------------------------------------------------------- NST
def _nst_hand(s: list, t: list) -> float:
    def maps(x):  # per sample: list of unit-normalised flattened channels
        return [[unit([v for row in c for v in row]) for c in n] for n in x]

    def k_mean(a, b):
        vals = [dot(ai, bj) ** 2 for an, bn in zip(a, b) for ai in an for bj in bn]
        return sum(vals) / len(vals)

    ms, mt = maps(s), maps(t)
    return k_mean(mt, mt) + k_mean(ms, ms) - 2 * k_mean(ms, mt)


def test_nst_loss_matches_hand_loop_float64():
    from kdlab.distillers.nst import nst_loss

    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    f_t = torch.randn(2, 4, 2, 2, generator=g, dtype=torch.float64)
    got = nst_loss(f_s, f_t)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_nst_hand(lst(f_s), lst(f_t)), abs=1e-12, rel=1e-12)
    # the larger map (student 4x4) is average-pooled to the teacher's 2x2
    big = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    got = nst_loss(big, f_t)
    assert got.item() == pytest.approx(_nst_hand(pool_hand(lst(big), 2, 2), lst(f_t)), abs=1e-12, rel=1e-12)


def test_nst_gradcheck_and_term():
    from kdlab.distillers.nst import nst_loss

    g = torch.Generator().manual_seed(1)
    f_s = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: nst_loss(x, f_t), (f_s,))
    # identical maps: zero loss
    assert nst_loss(f_t, f_t).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------- VID
def _vid_hand(mu: list, t: list, alpha: list, eps: float) -> float:
    total, n = 0.0, 0
    for mn, tn in zip(mu, t):
        for c, (mc, tc) in enumerate(zip(mn, tn)):
            var = math.log(1.0 + math.exp(alpha[c])) + eps
            for mr, tr in zip(mc, tc):
                for a, b in zip(mr, tr):
                    total += 0.5 * ((a - b) ** 2 / var + math.log(var))
                    n += 1
    return total / n


def test_vid_loss_matches_hand_loop_float64():
    from kdlab.distillers.vid import initial_log_scale, vid_loss, vid_variance

    g = torch.Generator().manual_seed(2)
    mu = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64)
    alpha = torch.randn(3, generator=g, dtype=torch.float64)
    got = vid_loss(mu, t, alpha, 1e-5)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_vid_hand(lst(mu), lst(t), lst(alpha), 1e-5), abs=1e-12, rel=1e-12)
    # RepDistiller's initial variance: log(exp(5 - eps) - 1) through softplus + eps gives 5
    a0 = torch.tensor([initial_log_scale(5.0, 1e-5)], dtype=torch.float64)
    assert vid_variance(a0, 1e-5).item() == pytest.approx(5.0, abs=1e-12)


def test_vid_gradcheck_on_mean_and_variance():
    from kdlab.distillers.vid import vid_loss

    g = torch.Generator().manual_seed(3)
    mu = torch.randn(2, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 2, 2, 2, generator=g, dtype=torch.float64)
    alpha = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, a: vid_loss(m, t, a, 1e-5), (mu, alpha))


def test_vid_term_has_repdistiller_heads():
    m = make_distillation(["vid"], t_arch="wrn_16_2")
    term = m.terms["vid"]
    s_ch = [c for c, *_ in probe(m.student, SHAPE).stage_shapes[1:]]
    t_ch = [c for c, *_ in probe(m.teacher, SHAPE).stage_shapes[1:]]
    for pair, cs, ct in zip(term.pairs, s_ch, t_ch):
        convs = [l for l in pair.regressor if isinstance(l, torch.nn.Conv2d)]
        assert [(c.in_channels, c.out_channels) for c in convs] == [(cs, ct), (ct, ct), (ct, ct)]
        assert all(c.bias is None and c.kernel_size == (1, 1) for c in convs)
        assert pair.log_scale.shape == (ct,)
    # the variance parameters are trained with the student
    ids = {id(p) for p in m.trainable_parameters()}
    assert all(id(p.log_scale) in ids for p in term.pairs)


# ---------------------------------------------------------------------------------------- OFD
def _margin_hand(gamma: list, beta: list) -> list:
    from statistics import NormalDist

    nd = NormalDist()
    out = []
    for g, b in zip(gamma, beta):
        s, m = abs(g), b
        p = nd.cdf(-m / s)
        out.append(m - s * nd.pdf(m / s) / p if p > 0.001 else -3 * s)
    return out


def _ofd_stage_hand(src: list, tgt: list, margin: list) -> float:
    total = 0.0
    for sn, tn in zip(src, tgt):
        for sc, tc, m in zip(sn, tn, margin):
            for sr, tr in zip(sc, tc):
                for a, b in zip(sr, tr):
                    if b > 0:
                        total += (a - b) ** 2
                    elif b > m:
                        total += (a - b) ** 2 if a > b else 0.0
                    else:
                        total += (a - m) ** 2 if a > m else 0.0
    return total / len(src)


def test_ofd_margin_matches_gaussian_closed_form():
    from kdlab.distillers.ofd import ofd_margin

    gamma = torch.tensor([1.0, -0.5, 2.0, 0.3, 0.1], dtype=torch.float64)
    beta = torch.tensor([0.0, 0.4, -1.0, 1.5, 5.0], dtype=torch.float64)  # the last: Φ(-50) < 0.001 -> -3σ
    got = ofd_margin(gamma, beta)
    assert got.dtype == torch.float64
    want = _margin_hand(lst(gamma), lst(beta))
    assert want[-1] == pytest.approx(-0.3)
    assert lst(got) == pytest.approx(want, abs=1e-12, rel=1e-12)


def test_ofd_loss_matches_hand_loop_with_stage_weights_and_pooling():
    from kdlab.distillers.ofd import ofd_feat_loss, ofd_loss

    g = torch.Generator().manual_seed(4)
    s1 = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    t1 = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)  # pooled to 2x2
    s2 = torch.randn(2, 2, 1, 1, generator=g, dtype=torch.float64)
    t2 = torch.randn(2, 2, 1, 1, generator=g, dtype=torch.float64)
    m1 = torch.tensor([-0.3, -1.0, 0.0], dtype=torch.float64)
    m2 = torch.tensor([-0.5, -0.2], dtype=torch.float64)
    one = ofd_feat_loss(s1, torch.nn.functional.adaptive_avg_pool2d(t1, 2), m1)
    assert one.item() == pytest.approx(_ofd_stage_hand(lst(s1), pool_hand(lst(t1), 2, 2), lst(m1)), abs=1e-12, rel=1e-12)
    got = ofd_loss([s1, s2], [t1, t2], [m1, m2])
    assert got.dtype == torch.float64
    want = (_ofd_stage_hand(lst(s1), pool_hand(lst(t1), 2, 2), lst(m1)) / 2
            + _ofd_stage_hand(lst(s2), lst(t2), lst(m2)))
    assert got.item() == pytest.approx(want, abs=1e-12, rel=1e-12)


def test_ofd_gradcheck():
    from kdlab.distillers.ofd import ofd_loss

    g = torch.Generator().manual_seed(5)
    s1 = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    t1 = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    m1 = torch.tensor([-0.3, -1.0, -0.1], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: ofd_loss([x], [t1], [m1]), (s1,))


def test_ofd_term_uses_teacher_bn_margins_and_connectors():
    from kdlab.distillers.ofd import ofd_margin

    m = make_distillation(["ofd"], t_arch="wrn_16_2")
    term, teacher = m.terms["ofd"], m.teacher
    bns = [teacher.block2.layer[0].bn1, teacher.block3.layer[0].bn1, teacher.bn1]  # mdistiller's rule for WRN
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    term = type(term)(DistillConfig().ofd, DistillContext(
        student_probe=probe(m.student, SHAPE), teacher_probe=probe(teacher, SHAPE), num_classes=10,
        num_train=NUM_TRAIN, input_shape=SHAPE, epochs=4, teacher=teacher))
    for got, bn in zip(term.margins, bns):
        assert torch.equal(got, ofd_margin(bn.weight, bn.bias))
        assert lst(got) == pytest.approx(_margin_hand(lst(bn.weight), lst(bn.bias)), rel=1e-6)
    convs = [c[0] for c in term.connectors]
    assert [(c.in_channels, c.out_channels, c.bias) for c in convs] == [(16, 32, None), (32, 64, None), (64, 128, None)]
    assert not any(k.startswith("margin") for k in term.state_dict())
    assert term.weight == pytest.approx(1e-3)


def test_ofd_shufflenet_teacher_is_one_clear_error():
    from kdlab.config import ConfigError

    with pytest.raises(ConfigError, match="ShuffleNet"):
        make_distillation(["ofd"], s_arch="resnet8", t_arch="ShuffleV2")


# ----------------------------------------------------------------------------------- ReviewKD
def _mse(a: list, b: list) -> float:
    fa = [v for n in a for c in n for r in c for v in r]
    fb = [v for n in b for c in n for r in c for v in r]
    return sum((x - y) ** 2 for x, y in zip(fa, fb)) / len(fa)


def _hcl_hand(fs: list, ft: list) -> float:
    total = 0.0
    for s, t in zip(fs, ft):
        h = len(s[0][0])
        loss, weights, w = _mse(s, t), 1.0, 1.0
        for level in (4, 2, 1):
            if level < h:
                w /= 2
                loss += w * _mse(pool_hand(s, level, level), pool_hand(t, level, level))
                weights += w
        total += loss / weights
    return total


def test_hcl_matches_hand_loop_float64():
    from kdlab.distillers.reviewkd import hcl_loss

    g = torch.Generator().manual_seed(6)
    sizes = [(2, 8), (3, 2), (2, 1)]  # h = 8: all three pooled terms; h = 2: only 1x1; h = 1: none
    fs = [torch.randn(2, c, h, h, generator=g, dtype=torch.float64) for c, h in sizes]
    ft = [torch.randn(2, c, h, h, generator=g, dtype=torch.float64) for c, h in sizes]
    got = hcl_loss(fs, ft)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_hcl_hand([lst(x) for x in fs], [lst(x) for x in ft]), abs=1e-12, rel=1e-12)
    fs0 = fs[0].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: hcl_loss([x, fs[1]], ft[:2]), (fs0,))


def _bn_hand(v: float, bn, c: int) -> float:
    return ((v - bn.running_mean[c].item()) / math.sqrt(bn.running_var[c].item() + bn.eps)
            * bn.weight[c].item() + bn.bias[c].item())


def _conv_hand(x: list, weight: torch.Tensor, bias=None) -> list:
    """Stride-1 convolution with 'same' zero padding on one sample (C, H, W) in plain loops."""
    w = weight.tolist()
    k = len(w[0][0])
    pad = (k - 1) // 2
    H, W = len(x[0]), len(x[0][0])
    out = []
    for o in range(len(w)):
        plane = []
        for i in range(H):
            row = []
            for j in range(W):
                acc = bias[o].item() if bias is not None else 0.0
                for c in range(len(x)):
                    for a in range(k):
                        for b in range(k):
                            ii, jj = i + a - pad, j + b - pad
                            if 0 <= ii < H and 0 <= jj < W:
                                acc += w[o][c][a][b] * x[c][ii][jj]
                row.append(acc)
            plane.append(row)
        out.append(plane)
    return out


def _nearest(x: list, h: int, w: int) -> list:
    H, W = len(x[0]), len(x[0][0])
    return [[[c[i * H // h][j * W // w] for j in range(w)] for i in range(h)] for c in x]


def _abf_hand(abf, x: list, residual, out_hw) -> tuple[list, list]:
    y = _conv_hand(x, abf.conv1[0].weight)
    y = [[[_bn_hand(v, abf.conv1[1], c) for v in r] for r in p] for c, p in enumerate(y)]
    H, W = len(y[0]), len(y[0][0])
    if abf.att_conv is not None:
        res = _nearest(residual, H, W)
        z = _conv_hand(y + res, abf.att_conv[0].weight, abf.att_conv[0].bias)
        z = [[[1 / (1 + math.exp(-v)) for v in r] for r in p] for p in z]
        y = [[[y[c][i][j] * z[0][i][j] + res[c][i][j] * z[1][i][j] for j in range(W)] for i in range(H)]
             for c in range(len(y))]
    if (H, W) != tuple(out_hw):
        y = _nearest(y, *out_hw)
    out = _conv_hand(y, abf.conv2[0].weight)
    out = [[[_bn_hand(v, abf.conv2[1], c) for v in r] for r in p] for c, p in enumerate(out)]
    return out, y


def test_abf_fusion_matches_hand_loops():
    """Two levels: a 2x2 student stage fused with the pooled feature and upsampled to a 4x4 teacher map."""
    from kdlab.distillers.reviewkd import ABF, review_fuse

    torch.manual_seed(7)
    abfs = [ABF(2, 3, 2, True), ABF(4, 3, 5, False)]
    for abf in abfs:
        for bn in (abf.conv1[1], abf.conv2[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
            torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
            torch.nn.init.uniform_(bn.bias, -0.5, 0.5)
        abf.double().eval()
    g = torch.Generator().manual_seed(8)
    x0 = torch.randn(2, 2, 2, 2, generator=g, dtype=torch.float64)
    pooled = torch.randn(2, 4, 1, 1, generator=g, dtype=torch.float64)
    out0, out1 = review_fuse(abfs, [x0, pooled], [(4, 4), (1, 1)])
    assert out0.shape == (2, 2, 4, 4) and out1.shape == (2, 5, 1, 1) and out0.dtype == torch.float64
    for n in range(2):
        want1, res = _abf_hand(abfs[1], lst(pooled[n]), None, (1, 1))
        want0, _ = _abf_hand(abfs[0], lst(x0[n]), res, (4, 4))
        flat = lambda v: [a for c in v for r in c for a in r]  # noqa: E731
        assert flat(lst(out1[n])) == pytest.approx(flat(want1), abs=1e-12, rel=1e-12)
        assert flat(lst(out0[n])) == pytest.approx(flat(want0), abs=1e-12, rel=1e-12)
    from kdlab.distillers.reviewkd import hcl_loss

    targets = [torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64),
               torch.randn(2, 5, 1, 1, generator=g, dtype=torch.float64)]
    a = x0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: hcl_loss(review_fuse(abfs, [v, pooled], [(4, 4), (1, 1)]), targets), (a,))


def test_reviewkd_literature_shapes_and_warmup():
    """mdistiller's CIFAR config (resnet32x4 -> resnet8x4) and the ReviewKD release's resnet32x4 -> ShuffleV2 and
    wrn_40_2 -> wrn_16_2 channel/size lists, read from the probes."""
    def lists(m):
        abfs = m.terms["reviewkd"].abfs
        return ([a.conv1[0].in_channels for a in abfs], [a.conv2[0].out_channels for a in abfs],
                [a.conv1[0].out_channels for a in abfs], [h for h, _ in m.terms["reviewkd"].out_sizes],
                [a.att_conv is not None for a in abfs])

    shape = (3, 32, 32)
    m = make_distillation(["reviewkd"], s_arch="resnet8x4", t_arch="resnet32x4", shape=shape, num_classes=100)
    assert lists(m) == ([64, 128, 256, 256], [64, 128, 256, 256], [256] * 4, [32, 16, 8, 1], [True, True, True, False])
    m = make_distillation(["reviewkd"], s_arch="ShuffleV2", t_arch="resnet32x4", shape=shape, num_classes=100)
    assert lists(m)[:4] == ([116, 232, 464, 1024], [64, 128, 256, 256], [512] * 4, [32, 16, 8, 1])
    m = make_distillation(["reviewkd"], s_arch="wrn_16_2", t_arch="wrn_40_2", shape=shape, num_classes=100)
    assert lists(m)[:4] == ([32, 64, 128, 128], [32, 64, 128, 128], [128] * 4, [32, 16, 8, 1])
    # warm-up: min(epoch / 20, 1) with the 1-based epoch, and the CIFAR weight 5
    from kdlab.distillers.base import StepContext

    m = make_distillation(["reviewkd"])
    m.eval()
    x = random_batch().views[0]
    s, t = m.student(x), m.teacher(x)
    vals = [m.terms["reviewkd"](s, t, None, StepContext(m.student, m.teacher, p))["reviewkd"].item()
            for p in (0.0, 0.99, 1.0, 19.0, 30.0)]
    base = vals[-1] / 5.0
    assert vals == pytest.approx([5 * base / 20, 5 * base / 20, 5 * base * 2 / 20, 5 * base, 5 * base], rel=1e-6)


# ------------------------------------------------------------------------------ all four methods
METHODS = ["nst", "vid", "ofd", "reviewkd"]
CROSS = {"nst": ("resnet8", "wrn_16_2"), "vid": ("resnet8", "wrn_16_2"), "ofd": ("ShuffleV2", "resnet8x4"),
         "reviewkd": ("ShuffleV2", "resnet8x4")}


@pytest.mark.parametrize("method", METHODS)
def test_one_training_step_same_and_cross_arch(method):
    losses = one_step(make_distillation([method]))
    assert set(losses) >= {"ce"} and len(losses) >= 2
    s_arch, t_arch = CROSS[method]
    one_step(make_distillation([method], s_arch=s_arch, t_arch=t_arch))


@pytest.mark.parametrize("method", METHODS)
def test_composes_with_kd(method):
    m = make_distillation([method, "kd"])
    losses = one_step(m)
    assert "kd" in losses and "ce" in losses and len(losses) >= 3


@pytest.mark.parametrize("method", METHODS)
def test_config_with_defaults_validates(method):
    cfg = build_config(overrides=[f"distill.methods=[{method}]"])
    assert cfg.distill.methods == [method]
    assert getattr(cfg.distill, method) is not None


@pytest.mark.parametrize("method", METHODS)
def test_term_keeps_float64(method):
    m = make_distillation([method]).to(torch.float64)
    m.train()
    _, losses = m.forward_train(random_batch(dtype=torch.float64), 0.0)
    assert all(v.dtype == torch.float64 for v in losses.values())


def test_ofd_literature_cross_pairs_shapes():
    """mdistiller's OFD for resnet32x4 -> ShuffleV2 and wrn_40_2 -> wrn_16_2: one connector per stage in [1:]."""
    m = make_distillation(["ofd"], s_arch="ShuffleV2", t_arch="resnet32x4", shape=(3, 32, 32), num_classes=100)
    convs = [c[0] for c in m.terms["ofd"].connectors]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(116, 64), (232, 128), (464, 256)]
    m = make_distillation(["ofd"], s_arch="wrn_16_2", t_arch="wrn_40_2", shape=(3, 32, 32), num_classes=100)
    convs = [c[0] for c in m.terms["ofd"].connectors]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(32, 32), (64, 64), (128, 128)]
