"""AB, CC, FSP, FT and KDSVD (issue 15): losses against independent hand computations, gradients,
one training step, composition with KD and config defaults.

Expected values follow RepDistiller's ``distiller_zoo`` reductions and are computed here with plain
Python loops over float64 values (``math`` only), never through ``kdlab.distillers``.
"""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.config import ConfigError
from kdlab.distillers.ab import ab_loss
from kdlab.distillers.cc import cc_loss
from kdlab.distillers.fsp import fsp_loss
from kdlab.distillers.ft import Paraphraser, Translator, ft_loss
from kdlab.distillers.kdsvd import kdsvd_loss

from tests.unit.test_distillers import make_distillation, random_batch

D = torch.float64


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def lst(t):
    return t.detach().double().tolist()


# ------------------------------------------------------------------------------------------- AB
def _ab_hand(g_s, g_t, m):
    k, bsz, total = len(g_s), len(lst(g_s[0])), 0.0
    for i, (s, t) in enumerate(zip(g_s, g_t)):
        flat_s, flat_t = s.flatten().tolist(), t.flatten().tolist()
        acc = 0.0
        for a, b in zip(flat_s, flat_t):
            if a > -m and b <= 0:
                acc += (a + m) ** 2
            if a <= m and b > 0:
                acc += (a - m) ** 2
        total += 2.0 ** (i - k + 1) * acc / bsz / 1000 * 3
    return total


@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ab_matches_hand_loop(margin):
    g_s = [rnd(3, 2, 4, 4, seed=1), rnd(3, 4, 2, 2, seed=2), rnd(3, 5, 1, 1, seed=3)]
    g_t = [rnd(3, 2, 4, 4, seed=4), rnd(3, 4, 2, 2, seed=5), rnd(3, 5, 1, 1, seed=6)]
    got = ab_loss(g_s, g_t, margin)
    assert got.dtype == D
    assert abs(got.item() - _ab_hand(g_s, g_t, margin)) < 1e-12


def test_ab_gradcheck():
    # keep inputs away from the kinks at ±margin (indicator switches are not differentiable)
    g_s = [(rnd(2, 2, 2, 2, seed=1) * 0.3 + 0.2).requires_grad_(), (rnd(2, 3, 1, 1, seed=2) * 0.3).requires_grad_()]
    g_t = [rnd(2, 2, 2, 2, seed=3), rnd(2, 3, 1, 1, seed=4)]
    assert torch.autograd.gradcheck(lambda a, b: ab_loss([a, b], g_t, 1.0), tuple(g_s))


# ------------------------------------------------------------------------------------------- CC
def test_cc_matches_hand_loop():
    f_s, f_t = rnd(5, 3, seed=1), rnd(5, 3, seed=2)
    s, t = lst(f_s), lst(f_t)
    want = sum(sum(abs(s[i][d] - t[i][d]) * abs(s[i + 1][d] - t[i + 1][d]) for d in range(3))
               for i in range(4)) / 4
    got = cc_loss(f_s, f_t)
    assert got.dtype == D and abs(got.item() - want) < 1e-12


def test_cc_gradcheck():
    f_s, f_t = rnd(4, 3, seed=1).requires_grad_(), rnd(4, 3, seed=2)
    assert torch.autograd.gradcheck(lambda a: cc_loss(a, f_t), (f_s,))


# ------------------------------------------------------------------------------------------ FSP
def _pool(x, h):
    """Adaptive average pool of a nested (C, H, H) list to (C, h, h) where h divides H."""
    r = len(x[0]) // h
    return [[[sum(ch[i * r + p][j * r + q] for p in range(r) for q in range(r)) / (r * r)
              for j in range(h)] for i in range(h)] for ch in x]


def _fsp_hand(g):
    """Per sample: for consecutive stages, G[c_top][c_bot] = mean over pixels of top·bot."""
    out = []
    for bot, top in zip(g[:-1], g[1:]):
        mats = []
        for b in range(len(bot)):
            xb, xt = bot[b], top[b]
            h = min(len(xb[0]), len(xt[0]))
            xb, xt = _pool(xb, h), _pool(xt, h)
            mats.append([[sum(xt[j][p][q] * xb[i][p][q] for p in range(h) for q in range(h)) / (h * h)
                          for i in range(len(xb))] for j in range(len(xt))])
        out.append(mats)
    return out


def test_fsp_matches_hand_loop_with_pooling():
    shapes = [(2, 4, 4), (3, 4, 4), (2, 2, 2)]
    g_s = [rnd(2, *sh, seed=i) for i, sh in enumerate(shapes)]
    g_t = [rnd(2, *sh, seed=10 + i) for i, sh in enumerate(shapes)]
    m_s, m_t = _fsp_hand([lst(x) for x in g_s]), _fsp_hand([lst(x) for x in g_t])
    want = 0.0
    for a, b in zip(m_s, m_t):
        diffs = [(a[n][j][i] - b[n][j][i]) ** 2 for n in range(len(a)) for j in range(len(a[n]))
                 for i in range(len(a[n][j]))]
        want += sum(diffs) / len(diffs)
    got = fsp_loss(g_s, g_t)
    assert got.dtype == D and abs(got.item() - want) < 1e-12


def test_fsp_gradcheck():
    g_s = [rnd(2, 2, 2, 2, seed=1).requires_grad_(), rnd(2, 3, 1, 1, seed=2).requires_grad_()]
    g_t = [rnd(2, 2, 2, 2, seed=3), rnd(2, 3, 1, 1, seed=4)]
    assert torch.autograd.gradcheck(lambda a, b: fsp_loss([a, b], g_t), tuple(g_s))


# ------------------------------------------------------------------------------------------- FT
def _factor_hand(x, p1):
    """Per sample: mean over channels of x^p1 at each pixel, flattened and L2-normalised."""
    out = []
    for sample in x:
        c, h = len(sample), len(sample[0])
        v = [sum(sample[ch][i][j] ** p1 for ch in range(c)) / c for i in range(h) for j in range(h)]
        n = max(math.sqrt(sum(a * a for a in v)), 1e-12)
        out.append([a / n for a in v])
    return out


@pytest.mark.parametrize("s_hw,t_hw,p2", [(4, 4, 1.0), (4, 2, 1.0), (2, 4, 2.0)])
def test_ft_matches_hand_loop(s_hw, t_hw, p2):
    f_s, f_t = rnd(2, 3, s_hw, s_hw, seed=1), rnd(2, 2, t_hw, t_hw, seed=2)
    h = min(s_hw, t_hw)
    a = _factor_hand([_pool(x, h) for x in lst(f_s)], 2.0)
    b = _factor_hand([_pool(x, h) for x in lst(f_t)], 2.0)
    diffs = [u - v for ra, rb in zip(a, b) for u, v in zip(ra, rb)]
    want = sum(abs(d) if p2 == 1 else d ** p2 for d in diffs) / len(diffs)
    got = ft_loss(f_s, f_t, 2.0, p2)
    assert got.dtype == D and abs(got.item() - want) < 1e-12


def test_ft_gradcheck():
    f_s, f_t = rnd(2, 3, 2, 2, seed=1).requires_grad_(), rnd(2, 2, 2, 2, seed=2)
    assert torch.autograd.gradcheck(lambda a: ft_loss(a, f_t), (f_s,))


def test_ft_modules_have_repdistillers_layout():
    p, t = Paraphraser(64, 0.5), Translator(16, 64, 0.5)
    convs = {k: tuple(v.shape) for k, v in p.state_dict().items() if k.endswith("weight")}
    assert convs == {"encoder.0.weight": (64, 64, 3, 3), "encoder.3.weight": (32, 64, 3, 3),
                     "encoder.6.weight": (32, 32, 3, 3), "decoder.0.weight": (32, 32, 3, 3),
                     "decoder.3.weight": (32, 64, 3, 3), "decoder.6.weight": (64, 64, 3, 3)}
    assert tuple(t.state_dict()["encoder.3.weight"].shape) == (32, 16, 3, 3)
    assert "encoder.1.running_mean" in t.state_dict() and "encoder.1.running_mean" not in p.state_dict()
    factor, rec = p(rnd(2, 64, 4, 4).float())
    assert factor.shape == (2, 32, 4, 4) and rec.shape == (2, 64, 4, 4)


def test_ft_paraphraser_is_frozen_and_translator_trains():
    m = make_distillation(["ft"], t_arch="wrn_16_2")
    m.train()
    term = m.terms["ft"]
    assert not term.paraphraser.training and term.translator.training
    assert all(not p.requires_grad for p in term.paraphraser.parameters())
    trainable = {id(p) for p in m.trainable_parameters()}
    assert all(id(p) in trainable for p in term.translator.parameters())
    _, losses = m.forward_train(random_batch(m), 0.0)
    losses["ft"].backward()
    assert all(p.grad is None for p in term.paraphraser.parameters())


# ---------------------------------------------------------------------------------------- KDSVD
def _right_singular_vectors(feat, n):
    """Singular values and right singular vectors of each sample's (HW, C) matrix via numpy's SVD. Only the
    sign of each vector is implementation-defined; it is taken from torch's SVD (what RepDistiller uses)."""
    import numpy as np

    out = []
    for x in feat:
        c, h, w = x.shape
        m = x.reshape(c, h * w).T.numpy()
        _, sv, vh = np.linalg.svd(m, full_matrices=False)
        _, _, vh_torch = torch.linalg.svd(torch.from_numpy(m), full_matrices=False)
        vecs = []
        for j in range(min(n, len(sv))):
            v = vh[j].tolist()
            if sum(a * b for a, b in zip(v, vh_torch[j].tolist())) < 0:
                v = [-a for a in v]
            vecs.append(v)  # unit vectors already
        sv = sv[:n].tolist()
        norm = math.sqrt(sum(a * a for a in sv))
        out.append(([a / norm for a in sv], vecs))  # vecs[j][c]
    return out


def _kdsvd_hand(g_s, g_t, k=1):
    bsz, total, prev = g_s[0].shape[0], 0.0, None
    for f_s, f_t in zip(g_s, g_t):
        t_svd, s_svd = _right_singular_vectors(f_t, k), _right_singular_vectors(f_s, k + 3)
        cur = []
        for (s_t, v_t), (_, v_s) in zip(t_svd, s_svd):
            aligned = []
            for j in range(k):
                cos = [sum(a * b for a, b in zip(v_s[q], v_t[j])) for q in range(len(v_s))]
                q = max(range(len(cos)), key=lambda r: abs(cos[r]))
                sign = 1.0 if cos[q] > 0 else -1.0
                aligned.append([sign * a * s_t[j] for a in v_s[q]])
            cur.append(([[a * s_t[j] for a in v_t[j]] for j in range(k)], aligned))
        if prev is not None:
            for (vt, vs), (pvt, pvs) in zip(cur, prev):
                for j in range(k):
                    for c in range(len(vt[j])):
                        for c0 in range(len(pvt[j])):
                            rs = math.exp(-(vs[j][c] - pvs[j][c0]) ** 2 / 8)
                            rt = math.exp(-(vt[j][c] - pvt[j][c0]) ** 2 / 8)
                            total += (rs - rt) ** 2
        prev = cur
    return total / bsz


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_matches_hand_loop(k):
    shapes = [(3, 4, 4), (5, 4, 4), (6, 2, 2)]
    g_s = [rnd(2, *sh, seed=i) for i, sh in enumerate(shapes)]
    g_t = [rnd(2, *sh, seed=10 + i) for i, sh in enumerate(shapes)]
    got = kdsvd_loss(g_s, g_t, k)
    assert got.dtype == D
    assert abs(got.item() - _kdsvd_hand(g_s, g_t, k)) < 1e-12


def test_kdsvd_gradcheck():
    g_s = [rnd(2, 3, 3, 3, seed=1).requires_grad_(), rnd(2, 4, 2, 2, seed=2).requires_grad_()]
    g_t = [rnd(2, 3, 3, 3, seed=3), rnd(2, 4, 2, 2, seed=4)]
    assert torch.autograd.gradcheck(lambda a, b: kdsvd_loss([a, b], g_t), tuple(g_s))


# ------------------------------------------------------------------------------ through training
METHODS = ["ab", "cc", "fsp", "ft", "kdsvd"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("with_kd", [False, True])
def test_one_training_step_resnet8_alone_and_with_kd(method, with_kd):
    methods = [method, "kd"] if with_kd else [method]
    m = make_distillation(methods)
    m.train()
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in m.student.parameters()]
    _, losses = m.forward_train(random_batch(m), 0.5)
    assert set(losses) == {"ce", method} | ({"kd"} if with_kd else set())
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert losses[method].item() > 0
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.student.parameters()))


@pytest.mark.parametrize("method", METHODS)
def test_defaults_validate(method):
    from kdlab.experiment.schema import build_config

    cfg = build_config(overrides=[f"distill.methods=[{method}]"])
    assert cfg.distill.methods == [method]


def test_repdistiller_defaults():
    from kdlab.experiment.schema import DistillConfig

    c = DistillConfig(methods=["ab"])
    assert (c.ab.weight, c.ab.margin, c.cc.weight, c.cc.feat_dim, c.fsp.weight) == (1.0, 1.0, 0.02, 128, 50.0)
    assert (c.ft.weight, c.ft.rate, c.ft.p1, c.ft.p2, c.kdsvd.k) == (200.0, 0.5, 2.0, 1.0, 1)


@pytest.mark.parametrize("method", ["ab", "fsp", "ft"])
def test_init_epochs_declares_a_phase_with_a_done_flag_in_the_state(method):
    m = make_distillation([method], **{method: {"init_epochs": 3}})
    term = m.terms[method]
    assert term.init_epochs == 3 and term.init_done.dtype == torch.bool and not bool(term.init_done)
    assert f"terms.{method}.init_done" in m.state_dict()
    plain = make_distillation([method])
    assert plain.terms[method].init_epochs == 0
    assert not any(k.endswith("init_done") for k in plain.state_dict())  # old checkpoints keep loading


@pytest.mark.parametrize("method", ["cc", "kdsvd", "kd"])
def test_methods_without_a_phase_do_nothing_before_training(method):
    m = make_distillation([method])
    assert m.terms[method].init_epochs == 0
    assert m.pre_train(None) is False  # never touches the phase's loader or settings


@pytest.mark.parametrize("method", ["ab", "fsp"])
def test_zero_weight_adds_nothing_during_distillation(method):
    m = make_distillation([method], **{method: {"weight": 0.0, "init_epochs": 1}})
    m.train()
    _, losses = m.forward_train(random_batch(m), 0.0)
    assert losses[method].item() == 0.0 and not losses[method].requires_grad
    # AB's connectors are then not trained by the main optimiser (RepDistiller: not in its trainable list)
    head_params = [n for n, p in m.named_parameters() if p.requires_grad and not n.startswith("student.")]
    assert head_params == []


@pytest.mark.parametrize(("arch", "lr"), [("resnet8", 0.01), ("wrn_16_2", 0.01), ("resnet32x4", 0.01),
                                          ("vgg8", 0.05), ("ShuffleV2", 0.05), ("", 0.05)])
def test_ft_paraphraser_lr_follows_repdistillers_rule(arch, lr):
    from types import SimpleNamespace

    m = make_distillation(["ft"], ft={"init_epochs": 1})
    m.terms["ft"].student_arch = arch
    assert m.terms["ft"].init_lr(SimpleNamespace(lr=0.05)) == lr
    ab = make_distillation(["ab"], ab={"init_epochs": 1})
    assert ab.terms["ab"].init_lr(SimpleNamespace(lr=0.05)) == 0.05  # AB and FSP: the student's base rate


def test_init_losses_are_the_unweighted_method_losses():
    torch.manual_seed(3)
    x = torch.randn(4, 1, 8, 8)
    for method, weight in (("ab", 7.0), ("fsp", 50.0)):
        m = make_distillation([method], **{method: {"weight": weight, "init_epochs": 1}})
        m.train()
        s, t = m.student(x), m.teacher(x)
        batch = random_batch(m)
        full = m.terms[method](s, t, batch, None)[method]
        assert full.item() == pytest.approx(weight * m.terms[method].init_loss(s, t, batch).item(), rel=1e-6)
    m = make_distillation(["ft"], ft={"init_epochs": 1})
    t = m.teacher(x)
    f_t = t.stages[-1]
    _, rec = m.terms["ft"].paraphraser(f_t)
    want = sum((a - b) ** 2 for a, b in zip(rec.flatten().tolist(), f_t.flatten().tolist())) / f_t.numel()
    assert m.terms["ft"].init_loss(None, t, None).item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("method", ["fsp", "kdsvd"])
def test_unequal_channels_is_one_config_error(method):
    with pytest.raises(ConfigError, match=f"distill.{method}"):
        make_distillation([method], t_arch="wrn_16_2")


def test_ab_connectors_cross_arch():
    m = make_distillation(["ab"], t_arch="wrn_16_2")
    # resnet8 stages 16/32/64 vs wrn_16_2 32/64/128 after the stem: a ConvReg each
    assert [type(c).__name__ for c in m.terms["ab"].connectors] == ["ConvReg"] * 3
    m.train()
    _, losses = m.forward_train(random_batch(m), 0.0)
    losses["ab"].backward()


def test_step_under_bf16_autocast_gives_float32_losses():
    m = make_distillation(METHODS + ["kd"])
    m.train()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        _, losses = m.forward_train(random_batch(m), 0.0)
    assert all(losses[k].dtype == torch.float32 and torch.isfinite(losses[k]) for k in METHODS)
    sum(losses.values()).backward()


@pytest.mark.parametrize("method", METHODS)
def test_float32_in_float32_out(method):
    fn = {"ab": lambda a, b: ab_loss([a], [b]), "cc": lambda a, b: cc_loss(a.flatten(1), b.flatten(1)),
          "fsp": lambda a, b: fsp_loss([a, a * 2], [b, b * 3]), "ft": ft_loss,
          "kdsvd": lambda a, b: kdsvd_loss([a, a.flip(1)], [b, b.flip(1)])}[method]
    assert fn(rnd(2, 3, 2, 2, seed=1).float(), rnd(2, 3, 2, 2, seed=2).float()).dtype == torch.float32
