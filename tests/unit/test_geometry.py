"""Feature geometry and soft-label statistics against answers computed independently here, and the
``analyze`` report end to end on a one-epoch digits teacher."""

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.analysis.geometry import feature_geometry, soft_label_stats


# ------------------------------------------------------------------------------------------- helpers
def mean_chord(k: int, r: float) -> float:
    """Mean distance between distinct points of k points evenly spaced on a circle of radius r."""
    return sum(2 * r * math.sin(math.pi * j / k) for j in range(1, k)) / (k - 1)


def circle(centre: list[float], r: float, k: int, phase: float, plane=(0, 1)) -> torch.Tensor:
    pts = torch.tensor([centre] * k, dtype=torch.float64)
    for i in range(k):
        a = phase + 2 * math.pi * i / k
        pts[i, plane[0]] += r * math.cos(a)
        pts[i, plane[1]] += r * math.sin(a)
    return pts


def loop_pairs(x: torch.Tensor, y: torch.Tensor):
    """Plain Python: sums and counts of distances of within-class and between-class pairs (i < j)."""
    rows, labels = x.tolist(), y.tolist()
    intra, inter = {}, {}
    inter_all = [0.0, 0]
    for i, j in itertools.combinations(range(len(rows)), 2):
        d = math.dist(rows[i], rows[j])
        if labels[i] == labels[j]:
            s = intra.setdefault(labels[i], [0.0, 0])
            s[0] += d
            s[1] += 1
        else:
            inter_all[0] += d
            inter_all[1] += 1
            for c in (labels[i], labels[j]):
                s = inter.setdefault(c, [0.0, 0])
                s[0] += d
                s[1] += 1
    return intra, inter, inter_all


# --------------------------------------------------------------------------------- known geometry
CENTRES = [[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [0.0, 7.0, 3.0, -2.0]]
RADII = [1.0, 2.5, 0.5]
KS = [5, 6, 7]


def circles_dataset():
    xs, ys = [], []
    for c, (centre, r, k) in enumerate(zip(CENTRES, RADII, KS)):
        xs.append(circle(centre, r, k, phase=0.3 * c + 0.1))
        ys += [c] * k
    return torch.cat(xs), torch.tensor(ys)


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 1000])
def test_geometry_of_points_on_circles(chunk_size):
    x, y = circles_dataset()
    g = feature_geometry(x.float(), y, 3, chunk_size=chunk_size)
    pc = g["per_class"]
    chords = [mean_chord(k, r) for k, r in zip(KS, RADII)]
    assert pc["count"] == KS
    assert pc["intra"] == pytest.approx(chords, rel=1e-6)
    assert pc["radius"] == pytest.approx(RADII, rel=1e-6)
    # mean squared chord of k evenly spaced points: 2 r^2 k / (k - 1)
    assert pc["intra_rms"] == pytest.approx([math.sqrt(2 * r * r * k / (k - 1)) for r, k in zip(RADII, KS)], rel=1e-6)
    pooled = sum(k * (k - 1) * ch for k, ch in zip(KS, chords)) / sum(k * (k - 1) for k in KS)
    assert g["intra"] == pytest.approx(pooled, rel=1e-6)
    assert g["intra_macro"] == pytest.approx(sum(chords) / 3, rel=1e-6)

    cd = [[math.dist(a, b) for b in CENTRES] for a in CENTRES]
    pair_cd = [cd[0][1], cd[0][2], cd[1][2]]
    assert g["inter_centroid"] == pytest.approx(sum(pair_cd) / 3, rel=1e-6)
    to_others = [(sum(cd[c]) - cd[c][c]) / 2 for c in range(3)]
    assert pc["centroid_dist"] == pytest.approx(to_others, rel=1e-6)
    assert pc["nearest_centroid"] == pytest.approx([min(v for j, v in enumerate(cd[c]) if j != c) for c in range(3)],
                                                   rel=1e-6)
    assert pc["ratio"] == pytest.approx([chords[c] / to_others[c] for c in range(3)], rel=1e-6)
    assert g["ratio_centroid"] == pytest.approx(pooled / (sum(pair_cd) / 3), rel=1e-6)
    assert g["per_class_ratio_mean"] == pytest.approx(sum(chords[c] / to_others[c] for c in range(3)) / 3, rel=1e-6)

    _, inter, inter_all = loop_pairs(x, y)
    inter_pw = inter_all[0] / inter_all[1]
    assert g["inter_pairwise"] == pytest.approx(inter_pw, rel=1e-6)
    assert pc["inter_pairwise"] == pytest.approx([inter[c][0] / inter[c][1] for c in range(3)], rel=1e-6)
    assert g["ratio_pairwise"] == pytest.approx(pooled / inter_pw, rel=1e-6)
    assert pc["ratio_pairwise"] == pytest.approx([chords[c] / (inter[c][0] / inter[c][1]) for c in range(3)], rel=1e-6)
    assert (g["num_samples"], g["dim"], g["classes_present"], g["normalized"]) == (18, 4, 3, False)


def test_geometry_against_double_loop_on_a_tiny_random_case():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(13, 5, generator=gen) * 3 + 1
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 0, 2, 1])
    g = feature_geometry(x, y, 5, chunk_size=3)
    intra, inter, inter_all = loop_pairs(x.double(), y)
    for c in range(4):
        assert g["per_class"]["intra"][c] == pytest.approx(intra[c][0] / intra[c][1], rel=1e-9)
        assert g["per_class"]["inter_pairwise"][c] == pytest.approx(inter[c][0] / inter[c][1], rel=1e-9)
    assert g["intra"] == pytest.approx(sum(s for s, _ in intra.values()) / sum(n for _, n in intra.values()), rel=1e-9)
    assert g["inter_pairwise"] == pytest.approx(inter_all[0] / inter_all[1], rel=1e-9)
    # class 4 is absent: undefined entries are None, the overall figures use the present classes only
    assert g["per_class"]["count"][4] == 0 and g["classes_present"] == 4
    assert all(g["per_class"][k][4] is None for k in ("intra", "radius", "centroid_dist", "ratio", "inter_pairwise"))
    mu = [x[y == c].double().mean(0) for c in range(4)]
    pair_d = [float((mu[a] - mu[b]).norm()) for a, b in itertools.combinations(range(4), 2)]
    assert g["inter_centroid"] == pytest.approx(sum(pair_d) / len(pair_d), rel=1e-9)
    json.dumps(g, allow_nan=False)  # JSON-ready: no NaN/inf anywhere


def test_normalize_measures_the_unit_sphere():
    k = 8
    scales = torch.linspace(0.5, 4.0, k, dtype=torch.float64)
    ring = circle([0.0] * 5, 1.0, k, phase=0.2) * scales[:, None]  # evenly spaced directions, varied norms
    spike = torch.zeros(5, 5, dtype=torch.float64)
    spike[:, 4] = torch.tensor([0.3, 1.0, 2.0, 5.0, 9.0])  # one direction, varied norms
    x = torch.cat([ring, spike])
    y = torch.tensor([0] * k + [1] * 5)
    g = feature_geometry(x, y, 2, normalize=True)
    # on the sphere: class 0 is k evenly spaced points on a unit circle (centroid 0), class 1 the single
    # point e_4 (intra 0, centroid e_4); every cross pair is orthogonal unit vectors, sqrt(2) apart
    assert g["normalized"] is True
    assert g["per_class"]["intra"] == pytest.approx([mean_chord(k, 1.0), 0.0], abs=1e-9)
    assert g["inter_centroid"] == pytest.approx(1.0, rel=1e-9)
    assert g["inter_pairwise"] == pytest.approx(math.sqrt(2), rel=1e-9)
    assert g["per_class"]["ratio"] == pytest.approx([mean_chord(k, 1.0), 0.0], abs=1e-9)
    same = feature_geometry(F.normalize(x, dim=1), y, 2)
    for key, v in g.items():
        if key == "per_class":
            for name, vals in v.items():
                assert same["per_class"][name] == pytest.approx(vals, abs=1e-12), name
        elif key != "normalized":
            assert same[key] == pytest.approx(v, abs=1e-12), key
    raw = feature_geometry(x, y, 2)
    assert raw["per_class"]["intra"][1] > 1.0  # the raw spike class is spread along its direction


def test_chunked_matches_unchunked_and_full_matrix():
    gen = torch.Generator().manual_seed(0)
    n, c = 3000, 7
    y = torch.multinomial(torch.tensor([1.0, 2, 3, 4, 5, 6, 0.5]), n, replacement=True, generator=gen)
    x = torch.randn(n, 32, generator=gen) + 0.7 * torch.randn(c, 32, generator=gen)[y] + 50.0  # far from 0
    full = feature_geometry(x, y, c, chunk_size=n)
    for chunk in (97, 1000, None):
        part = feature_geometry(x, y, c, chunk_size=chunk)
        for key in ("intra", "inter_pairwise", "ratio_pairwise", "inter_centroid", "intra_macro"):
            assert part[key] == pytest.approx(full[key], rel=1e-10), (chunk, key)
        for key in ("intra", "inter_pairwise", "intra_rms", "ratio"):
            assert part["per_class"][key] == pytest.approx(full["per_class"][key], rel=1e-10), (chunk, key)
    # independently: the whole N x N distance matrix with torch.cdist (direct differences, float64)
    xd = x.double()
    d = torch.cdist(xd[None], xd[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
    same = y[:, None] == y[None, :]
    off_diag = ~torch.eye(n, dtype=torch.bool)
    assert full["intra"] == pytest.approx(float(d[same & off_diag].mean()), rel=1e-9)
    assert full["inter_pairwise"] == pytest.approx(float(d[~same].mean()), rel=1e-9)
    for k in range(c):
        m = (y == k)
        block = d[m][:, m]
        nk = int(m.sum())
        assert full["per_class"]["intra"][k] == pytest.approx(float(block.sum()) / (nk * (nk - 1)), rel=1e-9)
        assert full["per_class"]["intra_rms"][k] == pytest.approx(
            math.sqrt(float((block ** 2).sum()) / (nk * (nk - 1))), rel=1e-9)
        assert full["per_class"]["intra_rms"][k] >= full["per_class"]["intra"][k]  # RMS >= mean


def test_geometry_rejects_bad_inputs():
    with pytest.raises(ValueError, match="labels must lie"):
        feature_geometry(torch.randn(4, 2), torch.tensor([0, 1, 2, 3]), 3)
    with pytest.raises(ValueError, match="labels must be"):
        feature_geometry(torch.randn(4, 2), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        feature_geometry(torch.randn(4), torch.tensor([0, 1, 0, 1]), 2)
    one = feature_geometry(torch.randn(3, 2), torch.tensor([0, 0, 1]), 2)  # class 1 has a single sample
    assert one["per_class"]["intra"][1] is None and one["per_class"]["radius"][1] == pytest.approx(0.0)


# ----------------------------------------------------------------------------------- soft labels
def test_soft_labels_of_uniform_logits():
    c = 10
    labels = torch.tensor([0, 3, 3, 7])
    s = soft_label_stats(torch.zeros(4, c), labels, T=4.0)
    assert s["entropy"] == pytest.approx(math.log(c))
    assert s["entropy_T1"] == pytest.approx(math.log(c))
    assert s["entropy_max"] == pytest.approx(math.log(c))
    assert s["off_true_mass"] == pytest.approx((c - 1) / c)
    assert s["confidence"] == pytest.approx(1 / c)
    assert s["margin"]["mean"] == pytest.approx(0.0) and s["margin"]["std"] == pytest.approx(0.0)
    assert s["accuracy"] == pytest.approx(0.25)  # ties: argmax picks class 0


def test_soft_labels_of_one_hot_ish_logits_by_hand():
    c, big, T = 5, 6.0, 2.0
    logits = torch.zeros(2, c)
    logits[:, 0] = big
    labels = torch.tensor([0, 1])  # right, then wrong

    def probs(t):
        a = math.exp(big / t) / (math.exp(big / t) + c - 1)
        return a, (1 - a) / (c - 1)

    a_t, b_t = probs(T)
    a_1, b_1 = probs(1.0)
    s = soft_label_stats(logits, labels, T=T)
    assert s["entropy"] == pytest.approx(-(a_t * math.log(a_t) + (c - 1) * b_t * math.log(b_t)), rel=1e-9)
    assert s["entropy_T1"] == pytest.approx(-(a_1 * math.log(a_1) + (c - 1) * b_1 * math.log(b_1)), rel=1e-9)
    assert s["off_true_mass"] == pytest.approx(((1 - a_t) + (1 - b_t)) / 2, rel=1e-9)
    assert s["off_true_mass_T1"] == pytest.approx(((1 - a_1) + (1 - b_1)) / 2, rel=1e-9)
    assert s["confidence"] == pytest.approx(a_1, rel=1e-9)
    assert s["margin"]["mean"] == pytest.approx(((a_1 - b_1) + (b_1 - a_1)) / 2, abs=1e-12)
    assert s["margin"]["max"] == pytest.approx(a_1 - b_1, rel=1e-9)
    assert s["margin"]["min"] == pytest.approx(b_1 - a_1, rel=1e-9)
    assert s["accuracy"] == pytest.approx(0.5)


def test_margin_and_off_true_mass_of_given_probabilities():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.25, 0.55]], dtype=torch.float64)
    labels = torch.tensor([0, 2, 2, 2])
    s = soft_label_stats(p.log(), labels, T=2.0, bins=8)
    rho = [0.5 - 0.3, 0.2 - 0.5, 0.3 - 0.6, 0.55 - 0.25]  # p_y - max_{k != y} p_k
    m = s["margin"]
    assert m["mean"] == pytest.approx(sum(rho) / 4)
    assert m["quantiles"]["0.5"] == pytest.approx(sorted(rho)[1] + 0.5 * (sorted(rho)[2] - sorted(rho)[1]))
    assert m["frac_positive"] == pytest.approx(0.5)
    assert sum(m["hist_counts"]) == 4 and len(m["hist_edges"]) == 9 and len(m["hist_counts"]) == 8
    bin_of = [int((r + 1) / 0.25) for r in rho]  # 8 bins of width 0.25 on [-1, 1]; no value on an edge
    assert [i for i, n in enumerate(m["hist_counts"]) for _ in range(n)] == sorted(bin_of)
    # at T = 2, softmax(log p / 2) is proportional to sqrt(p)
    q = p.sqrt() / p.sqrt().sum(1, keepdim=True)
    off = [1 - float(q[i, labels[i]]) for i in range(4)]
    assert s["off_true_mass"] == pytest.approx(sum(off) / 4, rel=1e-9)
    assert s["off_true_mass_T1"] == pytest.approx(sum(1 - float(p[i, labels[i]]) for i in range(4)) / 4, rel=1e-9)
    assert s["confidence"] == pytest.approx((0.5 + 0.5 + 0.6 + 0.55) / 4)
    assert s["accuracy"] == pytest.approx(0.5)
    h = [-sum(float(v) * math.log(float(v)) for v in row) for row in q]
    assert s["entropy"] == pytest.approx(sum(h) / 4, rel=1e-9)


# ----------------------------------------------------------------------------------------- end to end
