"""``kdlab.losses``: every loss in float64 keeps float64, equals an independent float64 value to 1e-12
(plain ``math`` loops over small tensors, following the reference reductions written out in
tests/unit/test_distillers.py), passes ``torch.autograd.gradcheck``; float32 stays float32 and bf16 is
computed in float32."""

from __future__ import annotations

import math

import pytest
import torch

import kdlab.losses as L

D = torch.float64
TOL = dict(rel=1e-12, abs=1e-12)


def rnd(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D) * scale


def lst(t):
    return t.detach().tolist()


def softmax_row(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def unit(v, eps=1e-12):
    n = math.sqrt(sum(x * x for x in v))
    return [x / max(n, eps) for x in v]


def zscore(row):
    n = len(row)
    mu = sum(row) / n
    sd = math.sqrt(sum((v - mu) ** 2 for v in row) / (n - 1))  # unbiased
    return [(v - mu) / (1e-7 + sd) for v in row]


def smooth_l1(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


# -------------------------------------------------------------------------------- hand references
def ref_kd(s, t, T=4.0, standardize=False):
    total = 0.0
    for rs, rt in zip(lst(s), lst(t)):
        if standardize:
            rs, rt = zscore(rs), zscore(rt)
        total += kl(softmax_row([v / T for v in rt]), softmax_row([v / T for v in rs]))
    return total * T * T / len(lst(s))


def ref_ctkd_instance(s, t, theta):
    """CTKD README's instance-wise KD: T_i = 1 + 20·sigmoid(θ_i); Σ_c q (log q − log p) with q = softmax(t/T_i) + 1e-7."""
    total = 0.0
    for rs, rt, th in zip(lst(s), lst(t), lst(theta)):
        T = 1 + 20 / (1 + math.exp(-th))
        p = softmax_row([v / T for v in rs])
        q = [v + 1e-7 for v in softmax_row([v / T for v in rt])]
        total += T * T * sum(a * (math.log(a) - math.log(b)) for a, b in zip(q, p))
    return total / len(lst(s))


def ref_dkd(s, t, y, alpha=1.0, beta=8.0, T=4.0, standardize=False):
    tckd = nckd = 0.0
    for rs, rt, c in zip(lst(s), lst(t), y.tolist()):
        if standardize:
            rs, rt = zscore(rs), zscore(rt)
        ps, pt = softmax_row([v / T for v in rs]), softmax_row([v / T for v in rt])
        tckd += kl([pt[c], 1 - pt[c]], [ps[c], 1 - ps[c]])
        nckd += kl(softmax_row([v / T for i, v in enumerate(rt) if i != c]),
                   softmax_row([v / T for i, v in enumerate(rs) if i != c]))
    b = len(y)
    return (alpha * tckd + beta * nckd) * T * T / b


def ref_rkd(s, t, wd=25.0, wa=50.0):
    def dists(x):
        n = len(x)
        d = [[math.dist(x[i], x[j]) if i != j else 0.0 for j in range(n)] for i in range(n)]
        pos = [v for row in d for v in row if v > 0]
        mean = sum(pos) / len(pos)
        return [v / mean for row in d for v in row]

    def angles(x):
        n = len(x)
        return [dot(unit([a - b for a, b in zip(x[j], x[i])]), unit([a - b for a, b in zip(x[k], x[i])]))
                for i in range(n) for j in range(n) for k in range(n)]

    s, t = lst(s), lst(t)
    ld = sum(smooth_l1(a, b) for a, b in zip(dists(s), dists(t))) / len(s) ** 2
    la = sum(smooth_l1(a, b) for a, b in zip(angles(s), angles(t))) / len(s) ** 3
    return wd * ld + wa * la


def ref_at(fs, ft):  # equal spatial sizes, p = 2
    def att(x):
        return [unit([sum(ch[p][q] ** 2 for ch in sample) / len(sample)
                      for p in range(len(sample[0])) for q in range(len(sample[0][0]))]) for sample in x]

    a, b = att(lst(fs)), att(lst(ft))
    diffs = [(u - v) ** 2 for ra, rb in zip(a, b) for u, v in zip(ra, rb)]
    return sum(diffs) / len(diffs)


def ref_sp(fs, ft):
    def gram(x):
        rows = lst(x.flatten(1))
        return [unit([dot(a, b) for b in rows]) for a in rows]

    gs, gt = gram(fs), gram(ft)
    b = fs.shape[0]
    return sum((v - u) ** 2 for ra, rb in zip(gs, gt) for u, v in zip(ra, rb)) / (b * b)


def ref_pkt(fs, ft, eps=1e-7):
    def cond(x):
        rows = [[v / (math.sqrt(sum(w * w for w in r)) + eps) for v in r] for r in lst(x)]
        k = [[(dot(a, b) + 1) / 2 for b in rows] for a in rows]
        return [[v / sum(r) for v in r] for r in k]

    ps, pt = cond(fs), cond(ft)
    vals = [b * math.log((b + eps) / (a + eps)) for ra, rb in zip(ps, pt) for a, b in zip(ra, rb)]
    return sum(vals) / len(vals)


def ref_mse(a, b):
    x, y = a.flatten().tolist(), b.flatten().tolist()
    return sum((u - v) ** 2 for u, v in zip(x, y)) / len(x)


def ref_crd(vs, vt, mem_s, mem_t, idx, T):
    n, k = len(mem_s), idx.shape[1] - 1
    vs, vt, ms, mt = lst(vs), lst(vt), lst(mem_s), lst(mem_t)
    rows = idx.tolist()
    out_s = [[math.exp(dot(mt[j], vs[b]) / T) for j in rows[b]] for b in range(len(rows))]
    out_t = [[math.exp(dot(ms[j], vt[b]) / T) for j in rows[b]] for b in range(len(rows))]

    def nce(out):
        z = sum(sum(r) for r in out) / (len(out) * (k + 1)) * n
        noise, total = k / n, 0.0
        for r in out:
            p = [v / z for v in r]
            total += math.log(p[0] / (p[0] + noise + 1e-7)) + sum(math.log(noise / (q + noise + 1e-7)) for q in p[1:])
        return -total / len(out)

    return nce(out_s) + nce(out_t)


def ref_info_nce(q, pos, neg, tau):
    total = 0.0
    for rq, rp in zip(lst(q), lst(pos)):
        logits = [dot(rq, rp) / tau] + [dot(rq, n) / tau for n in lst(neg)]
        total += -math.log(softmax_row(logits)[0])
    return total / q.shape[0]


def ref_intra(emb, pos, labels, ids, anchors, tau):
    e, p = lst(emb), lst(pos)
    losses = []
    for a in [i for i, m in enumerate(anchors.tolist()) if m]:
        sp_ = dot(e[a], p[a]) / tau
        s = sum(math.exp(dot(e[a], e[n]) / tau - sp_) for n in range(len(e))
                if labels[n] == labels[a] and ids[n] != ids[a])
        losses.append(math.log(1 + s))
    return sum(losses) / len(losses)


def ref_supcon(emb, labels, tau, base_tau=0.07):
    e, y = lst(emb), labels.tolist()
    m, total = len(e), 0.0
    for i in range(m):
        others = [j for j in range(m) if j != i]
        lse = math.log(sum(math.exp(dot(e[i], e[j]) / tau) for j in others))
        pos = [j for j in others if y[j] == y[i]]
        if pos:
            total += sum(dot(e[i], e[j]) / tau - lse for j in pos) / len(pos)
    return -(tau / base_tau) * total / m


# ------------------------------------------------------------------------------------- the cases
def _bank(n=6, d=3, seed=5):
    return torch.nn.functional.normalize(rnd(n, d, seed=seed), dim=1)


IDX = torch.tensor([[2, 1, 4], [3, 0, 5]])
_CRD_Z = L.crd_nce_loss(rnd(2, 3, seed=15), rnd(2, 3, seed=16), _bank(), _bank(seed=6), IDX, 0.5)[1]
Y = torch.tensor([0, 2, 1])
IDS = torch.tensor([0, 1, 2, 0, 1, 2])
Y6 = torch.tensor([0, 0, 1, 0, 0, 1])
ANCH = torch.tensor([True, True, False, True, False, True])

#: name -> (function of the differentiable inputs, the inputs, the hand reference)
CASES = {
    "kd_loss": (lambda s, t: L.kd_loss(s, t), (rnd(3, 5, seed=1, scale=3), rnd(3, 5, seed=2, scale=3)), ref_kd),
    "kd_loss_T2": (lambda s, t: L.kd_loss(s, t, 2.0), (rnd(3, 5, seed=1), rnd(3, 5, seed=2)),
                   lambda s, t: ref_kd(s, t, 2.0)),
    "kd_loss_std": (lambda s, t: L.kd_loss(s, t, 2.0, standardize=True), (rnd(3, 5, seed=1, scale=3), rnd(3, 5, seed=2)),
                    lambda s, t: ref_kd(s, t, 2.0, standardize=True)),
    "dkd_loss": (lambda s, t: L.dkd_loss(s, t, Y), (rnd(3, 4, seed=3), rnd(3, 4, seed=4)),
                 lambda s, t: ref_dkd(s, t, Y)),
    "dkd_loss_std": (lambda s, t: L.dkd_loss(s, t, Y, 9.0, 72.0, 2.0, standardize=True),
                     (rnd(3, 4, seed=3, scale=2), rnd(3, 4, seed=4)),
                     lambda s, t: ref_dkd(s, t, Y, 9.0, 72.0, 2.0, standardize=True)),
    "rkd_loss": (lambda s, t: L.rkd_loss(s, t), (rnd(4, 3, seed=5), rnd(4, 5, seed=6)), ref_rkd),
    "at_loss": (lambda s, t: L.at_loss(s, t), (rnd(2, 3, 2, 2, seed=7), rnd(2, 4, 2, 2, seed=8)), ref_at),
    "at_loss_seq": (lambda s, t: L.at_loss([s, s * 2], [t, t + 1]), (rnd(2, 3, 2, 2, seed=7), rnd(2, 4, 2, 2, seed=8)),
                    lambda s, t: ref_at(s, t) + ref_at(s * 2, t + 1)),
    "sp_loss": (lambda s, t: L.sp_loss(s, t), (rnd(3, 2, 2, 2, seed=9), rnd(3, 5, 1, 1, seed=10)), ref_sp),
    "pkt_loss": (lambda s, t: L.pkt_loss(s, t), (rnd(4, 3, seed=11), rnd(4, 6, seed=12)), ref_pkt),
    "fitnet_loss": (lambda s, t: L.fitnet_loss(s, t), (rnd(2, 3, 2, 2, seed=13), rnd(2, 3, 2, 2, seed=14)), ref_mse),
    # Z is a constant of the loss (set from the first batch under no_grad), so it is fixed here for gradcheck
    "crd_nce_loss": (lambda vs, vt: L.crd_nce_loss(vs, vt, _bank(), _bank(seed=6), IDX, 0.5, z=_CRD_Z)[0],
                     (rnd(2, 3, seed=15), rnd(2, 3, seed=16)),
                     lambda vs, vt: ref_crd(vs, vt, _bank(), _bank(seed=6), IDX, 0.5)),
    "info_nce": (lambda q, k: L.info_nce(q, k, _bank(4, 3, seed=17), 0.2)[0], (rnd(2, 3, seed=18), rnd(2, 3, seed=19)),
                 lambda q, k: ref_info_nce(q, k, _bank(4, 3, seed=17), 0.2)),
    "prediction_distance": (lambda u, v: L.prediction_distance(u, v).mean(), (rnd(3, 4, seed=20), rnd(3, 4, seed=21)),
                            lambda u, v: sum(2 - 2 * dot(unit(a), unit(b)) for a, b in zip(lst(u), lst(v))) / 3),
    "intra_class_loss": (lambda e, p: L.intra_class_loss(e, p, Y6, IDS, ANCH, 0.5)[0],
                         (rnd(6, 3, seed=22), rnd(6, 3, seed=23)),
                         lambda e, p: ref_intra(e, p, Y6.tolist(), IDS.tolist(), ANCH, 0.5)),
    "ctkd_loss": (lambda s, t: L.ctkd_loss(s, t, torch.tensor([0.3], dtype=D), 0.5),
                  (rnd(3, 5, seed=25, scale=3), rnd(3, 5, seed=26, scale=3)),
                  lambda s, t: ref_kd(s, t, 1 + 20 / (1 + math.exp(-0.3)))),
    "supcon_loss": (lambda e: L.supcon_loss(e, Y6, 0.5), (rnd(6, 3, seed=24),), lambda e: ref_supcon(e, Y6, 0.5)),
    # one temperature per sample (θ = -1, 0.3, 2 → T ≈ 6.38, 12.49, 18.62)
    "ctkd_instance_loss": (lambda s, t: L.ctkd_instance_loss(s, t, torch.tensor([-1.0, 0.3, 2.0], dtype=D), 0.5),
                           (rnd(3, 5, seed=27, scale=3), rnd(3, 5, seed=28, scale=3)),
                           lambda s, t: ref_ctkd_instance(s, t, torch.tensor([-1.0, 0.3, 2.0], dtype=D))),
}

#: losses that detach the teacher's input inside (RKD: the teacher relations are computed under no_grad)
TEACHER_DETACHED = {"rkd_loss"}

#: every exported loss has at least one case (standardize_logits has its own test)
COVERS = {"kd_loss", "dkd_loss", "rkd_loss", "at_loss", "sp_loss", "pkt_loss", "fitnet_loss", "crd_nce_loss",
          "info_nce", "prediction_distance", "intra_class_loss", "supcon_loss", "ctkd_loss", "ctkd_instance_loss"}


def test_every_exported_name_imports_and_every_loss_has_a_case():
    for name in L.__all__:
        assert callable(getattr(L, name)), name
    assert COVERS <= set(L.__all__)
    assert COVERS == {k.split("_T2")[0].split("_std")[0].split("_seq")[0] for k in CASES}


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_in_float64_out_and_equal_to_the_hand_value(name):
    fn, inputs, ref = CASES[name]
    got = fn(*inputs)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert got.item() == pytest.approx(ref(*inputs), **TOL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradcheck_in_float64(name):
    fn, inputs, _ = CASES[name]
    if name in TEACHER_DETACHED:  # the loss detaches its second input itself: check the student side only
        rest = inputs[1:]
        fn, inputs = (lambda x: CASES[name][0](x, *rest)), inputs[:1]
    args = tuple(x.clone().requires_grad_(True) for x in inputs)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_stays_float32_and_bf16_is_promoted(name):
    fn, inputs, _ = CASES[name]
    if name in ("crd_nce_loss", "info_nce"):  # their banks/negatives are float64 here; cast with the inputs
        pytest.skip("bank dtype follows the test's float64 bank")
    assert fn(*(x.float() for x in inputs)).dtype == torch.float32
    if name in ("intra_class_loss", "supcon_loss", "prediction_distance"):
        return  # teacher-side/contrastive losses take the embeddings' dtype as they come
    assert fn(*(x.bfloat16() for x in inputs)).dtype == torch.float32


def test_standardize_logits_is_the_unbiased_z_score_with_eps_on_the_std():
    z = torch.tensor([[1.0, 2.0, 4.0], [0.0, 0.0, 3.0]], dtype=D)
    # row 0: mean 7/3, unbiased var ((4/3)² + (1/3)² + (5/3)²) / 2 = 7/3
    sd = math.sqrt(7 / 3)
    expected = [(v - 7 / 3) / (1e-7 + sd) for v in (1.0, 2.0, 4.0)]
    got = L.standardize_logits(z)
    assert got.dtype == D
    assert lst(got[0]) == pytest.approx(expected, **TOL)
    assert lst(got[1]) == pytest.approx(zscore([0.0, 0.0, 3.0]), **TOL)
    # invariant to shift and positive scale of each row (up to eps)
    assert torch.allclose(L.standardize_logits(3 * z + 5), got, atol=1e-7)


@pytest.mark.parametrize("name,module", [
    ("ab_loss", "ab"), ("cc_loss", "cc"), ("fsp_loss", "fsp"), ("ft_loss", "ft"), ("kdsvd_loss", "kdsvd"),
    ("nst_loss", "nst"), ("vid_loss", "vid"), ("ofd_loss", "ofd"), ("ofd_margin", "ofd"), ("hcl_loss", "reviewkd"),
])
def test_the_library_exports_the_functions_the_plugins_train_with(name, module):
    """These losses have their hand-computed values and float64 gradchecks in test_distillers_d15a/b.py; here:
    the library's name is the very function the plugin's training module calls."""
    import importlib

    assert getattr(L, name) is getattr(importlib.import_module(f"kdlab.distillers.{module}"), name)
