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


# ------------------------------------------------------------------------------ through training
METHODS = ["ab", "cc", "fsp"]


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


@pytest.mark.parametrize("method", ["ab", "fsp"])
def test_init_epochs_is_refused_not_faked(method):
    with pytest.raises(ConfigError, match="init_epochs"):
        make_distillation([method], **{method: dict(init_epochs=30)})


def test_fsp_unequal_channels_is_one_config_error():
    with pytest.raises(ConfigError, match="distill.fsp"):
        make_distillation(["fsp"], t_arch="wrn_16_2")


def test_ab_connectors_cross_arch():
    m = make_distillation(["ab"], t_arch="wrn_16_2")
    # resnet8 stages 16/32/64 vs wrn_16_2 32/64/128 after the stem: a ConvReg each
    assert [type(c).__name__ for c in m.terms["ab"].connectors] == ["ConvReg"] * 3
    m.train()
    _, losses = m.forward_train(random_batch(m), 0.0)
    losses["ab"].backward()
