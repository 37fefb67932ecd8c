"""Data layer: sources, batched augmentation, device loader, safe file handling.

Every expectation is computed independently in the test (F.pad + slicing, torch.flip, the luma formula,
colorsys, a 2-D convolution, the arrays written to disk...). Fast tier: no network, no ../shared.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import io
import math
import os
import pickle
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdlab.data.sources as sources
from kdlab.data import (
    POLICY_NAMES,
    ArrayDataset,
    Augment,
    Batch,
    DataError,
    DeviceLoader,
    augment_for,
    build_augment,
    channel_stats,
    color_jitter,
    crop_with_offsets,
    cutout,
    cutout_at,
    default_policy,
    download_url,
    flip_where,
    gaussian_blur,
    grayscale,
    hflip,
    load_dataset,
    normalize,
    random_crop,
    random_resized_crop,
    resized_crop,
    restricted_load,
    safe_extract,
)
from kdlab.data.augment import _hsv_to_rgb, _rgb_to_hsv, rrc_params
from kdlab.data.files import check_md5, iter_archive
from fakedata import write_fake_cifar  # tests/fakedata.py

Image = pytest.importorskip("PIL.Image")

SHARED_CIFAR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_u8(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=gen(seed), dtype=torch.uint8)


# ------------------------------------------------------------------------------------------------ digits


def test_digits_shapes_classes_stratified_and_stats():
    train, test = load_dataset("digits")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.dtype == torch.uint8 and train.images.shape == (1437, 1, 8, 8)
    assert test.images.shape == (360, 1, 8, 8)
    assert train.labels.dtype == torch.int64 and train.classes == [str(i) for i in range(10)]
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    # stratified: each class's test share within one image of its overall share
    from sklearn.datasets import load_digits

    y = load_digits().target
    full = np.bincount(y, minlength=10)
    got = torch.bincount(test.labels, minlength=10).numpy()
    assert np.all(np.abs(got - full * 360 / len(y)) < 1.0)
    assert got.sum() == 360 and (torch.bincount(train.labels, minlength=10).numpy() + got == full).all()
    # train-split statistics, computed here with numpy
    x = train.images.numpy().astype(np.float64) / 255
    assert train.mean == pytest.approx((x.mean(),), abs=1e-6)
    assert train.std == pytest.approx((x.std(),), abs=1e-6)
    assert test.mean == train.mean


def test_digits_deterministic_and_seeded():
    a_tr, a_te = load_dataset("digits", split_seed=3)
    b_tr, b_te = load_dataset("digits", split_seed=3)
    c_tr, c_te = load_dataset("digits", split_seed=4)
    assert torch.equal(a_tr.images, b_tr.images) and torch.equal(a_te.labels, b_te.labels)
    assert not torch.equal(a_te.images, c_te.images)


def test_subsets_are_stratified_seeded_subsets():
    full, _ = load_dataset("digits")
    tr, te = load_dataset("digits", subset=200, test_subset=0.25)
    assert len(tr) == 200 and len(te) == 90
    counts = torch.bincount(tr.labels, minlength=10).numpy()
    share = torch.bincount(full.labels, minlength=10).numpy() * 200 / len(full)
    assert np.all(np.abs(counts - share) < 1.0)
    rows = {r.tobytes() + bytes([int(l)]) for r, l in zip(full.images.numpy(), full.labels)}
    assert all(r.tobytes() + bytes([int(l)]) in rows for r, l in zip(tr.images.numpy(), tr.labels))
    tr2, _ = load_dataset("digits", subset=200)
    assert torch.equal(tr.images, tr2.images)
    assert tr.mean == full.mean  # statistics of the full train split
    with pytest.raises(DataError):
        load_dataset("digits", subset=5000)


def test_unknown_dataset_suggests():
    with pytest.raises(DataError, match="cifar10"):
        load_dataset("cifar1O")


# --------------------------------------------------------------------------------------------- augments


@pytest.mark.parametrize("mode,torch_mode", [("reflect", "reflect"), ("zeros", "constant"), ("replicate", "replicate")])
def test_crop_with_known_offsets_equals_slicing_padded(mode, torch_mode):
    x = rand_u8(6, 3, 8, 10, seed=1)
    p = 3
    oy = torch.tensor([0, 6, 3, 1, 5, 2])
    ox = torch.tensor([6, 0, 3, 4, 2, 5])
    out = crop_with_offsets(x, oy, ox, p, padding_mode=mode)
    padded = F.pad(x.float(), (p, p, p, p), mode=torch_mode)
    for b in range(6):
        want = padded[b, :, oy[b] : oy[b] + 8, ox[b] : ox[b] + 10]
        assert torch.equal(out[b].float(), want)
    assert out.dtype == torch.uint8


def test_index_padding_fallback_matches_f_pad():
    from kdlab.data.augment import _pad_by_index

    x = rand_u8(2, 3, 6, 7, seed=15).float()
    for mode in ("reflect", "replicate"):
        assert torch.equal(_pad_by_index(x, 3, mode), F.pad(x, (3,) * 4, mode=mode))


def test_random_crop_per_sample_offsets_and_determinism():
    x = rand_u8(64, 3, 12, 12, seed=2)
    p = 4
    out = random_crop(x, p, gen(5))
    assert torch.equal(out, random_crop(x, p, gen(5)))
    assert not torch.equal(out, random_crop(x, p, gen(6)))
    padded = F.pad(x.float(), (p,) * 4, mode="reflect")
    found = []
    for b in range(64):  # recover each sample's offset by brute force
        hits = [
            (i, j)
            for i in range(2 * p + 1)
            for j in range(2 * p + 1)
            if torch.equal(padded[b, :, i : i + 12, j : j + 12], out[b].float())
        ]
        assert hits, f"sample {b} is no crop of its padded image"
        found.append(hits[0])
    assert len(set(found)) > 20  # different samples, different offsets
    assert len({f[0] for f in found}) > 4 and len({f[1] for f in found}) > 4


def test_flip_matches_torch_flip_on_chosen_samples():
    x = rand_u8(5, 3, 4, 6, seed=3)
    mask = torch.tensor([True, False, True, False, False])
    out = flip_where(x, mask)
    for b in range(5):
        assert torch.equal(out[b], torch.flip(x[b], dims=[2]) if mask[b] else x[b])
    assert torch.equal(hflip(x, gen(), p=1.0), torch.flip(x, dims=[3]))
    assert torch.equal(hflip(x, gen(), p=0.0), x)
    y = hflip(rand_u8(200, 1, 2, 2), gen(1))
    assert torch.equal(y, hflip(rand_u8(200, 1, 2, 2), gen(1)))


def test_cutout_zeroes_exact_square():
    x = torch.full((4, 3, 10, 10), 200, dtype=torch.uint8)
    y0, x0 = torch.tensor([0, 2, 5, 6]), torch.tensor([1, 6, 0, 6])
    out = cutout_at(x, y0, x0, 4)
    for b in range(4):
        want = x[b].clone()
        want[:, y0[b] : y0[b] + 4, x0[b] : x0[b] + 4] = 0
        assert torch.equal(out[b], want)
    # random, square kept inside: exactly size^2 zero pixels per sample, forming a square
    out = cutout(torch.ones(50, 2, 12, 12), 5, gen(2), inside=True)
    for b in range(50):
        z = (out[b, 0] == 0).nonzero()
        assert len(z) == 25 and (out[b, 1] == 0).sum() == 25
        assert (z.max(0).values - z.min(0).values).tolist() == [4, 4]
    # default (DeVries): centre anywhere, clipped at the borders -> a rectangle of at most size^2
    out = cutout(torch.ones(50, 1, 12, 12), 5, gen(3))
    for b in range(50):
        z = (out[b, 0] == 0).nonzero()
        h, w = (z.max(0).values - z.min(0).values + 1).tolist()
        assert len(z) == h * w <= 25 and 3 <= h <= 5 and 3 <= w <= 5
    assert torch.equal(cutout(x, 4, gen(1), p=0.0), x)


def test_grayscale_is_luma_and_noop_on_one_channel():
    x = torch.rand(6, 3, 5, 5, generator=gen(4))
    out = grayscale(x, gen(), p=1.0)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(out[:, c], luma)
    assert torch.equal(grayscale(x, gen(), p=0.0), x)
    one = torch.rand(4, 1, 5, 5)
    assert torch.equal(grayscale(one, gen(), p=1.0), one)


def test_normalize_fused_matches_formula_and_channels_last():
    x = rand_u8(4, 3, 6, 6, seed=5)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    out = normalize(x, mean, std)
    want = (x.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) / torch.tensor(std).double().view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normalize(x.float() / 255, mean, std), out, atol=1e-5, rtol=1e-5)


def test_rrc_full_box_is_identity_and_box_crop_is_slicing():
    x = torch.rand(8, 3, 16, 16, generator=gen(6))
    out = random_resized_crop(x, 16, gen(1), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    # a box of exactly the output size is plain slicing (pixel-centre aligned sampling)
    t, l, s = torch.tensor([2.0, 0.0]), torch.tensor([3.0, 7.0]), torch.tensor([5.0, 5.0])
    out = resized_crop(x[:2], t, l, s, s, 5)
    torch.testing.assert_close(out[0], x[0, :, 2:7, 3:8], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], x[1, :, 0:5, 7:12], atol=1e-5, rtol=0)


def test_rrc_boxes_respect_scale_ratio_and_bounds():
    x = torch.zeros(500, 3, 32, 32)
    top, left, h, w = rrc_params(x, (0.2, 0.6), (0.5, 2.0), gen(7))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = h * w / 1024
    assert area.min() > 0.17 and area.max() < 0.65  # rounding slack
    ar = w / h
    assert ar.min() > 0.4 and ar.max() < 2.5
    assert len(set(zip(top.tolist(), left.tolist()))) > 100
    out = random_resized_crop(torch.rand(4, 3, 32, 32), 24, gen(0))
    assert out.shape == (4, 3, 24, 24)


def test_color_jitter_brightness_factor_per_sample_and_hsv_roundtrip():
    x = torch.rand(64, 3, 4, 4, generator=gen(8)) * 0.5 + 0.1  # no clipping at factor <= 1.4
    out = color_jitter(x, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0, generator=gen(1))
    ratio = out / x
    per_sample = ratio.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-5)
    f = per_sample[:, 0]
    assert f.min() >= 0.6 - 1e-6 and f.max() <= 1.4 + 1e-6 and f.std() > 0.1
    # all-zero strengths: identity; 1-channel input: brightness/contrast only, no crash
    torch.testing.assert_close(color_jitter(x, 0, 0, 0, 0, gen()), x)
    one = torch.rand(8, 1, 4, 4)
    assert color_jitter(one, 0.4, 0.4, 0.4, 0.1, gen()).shape == one.shape
    # HSV conversions against colorsys
    px = torch.rand(3, 1, 7, generator=gen(9)).permute(1, 0, 2).unsqueeze(-1)  # (1, 3, 7, 1)
    h, s, v = _rgb_to_hsv(px)
    for i in range(7):
        want = colorsys.rgb_to_hsv(*px[0, :, i, 0].tolist())
        assert [h[0, i, 0].item(), s[0, i, 0].item(), v[0, i, 0].item()] == pytest.approx(list(want), abs=1e-5)
        shifted = colorsys.hsv_to_rgb((want[0] + 0.3) % 1, want[1], want[2])
        got = _hsv_to_rgb((h + 0.3) % 1, s, v)[0, :, i, 0].tolist()
        assert got == pytest.approx(list(shifted), abs=1e-5)


def test_saturation_zero_factor_gives_gray():
    x = torch.rand(4, 3, 5, 5, generator=gen(10))
    out = color_jitter(x, 0.0, 0.0, 1.0, 0.0, gen(3))  # factor in [0, 2]
    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    # out = f*x + (1-f)*gray  => (out - gray) is proportional to (x - gray) per sample
    for b in range(4):
        d_out, d_in = (out[b] - gray[b]).flatten(), (x[b] - gray[b]).flatten()
        f = (d_out @ d_in) / (d_in @ d_in)
        if 0 <= f <= 1:  # no clipping in this range
            torch.testing.assert_close(d_out, f * d_in, atol=1e-5, rtol=0)


def test_gaussian_blur_matches_2d_convolution():
    x = torch.rand(3, 2, 9, 9, generator=gen(11))
    sigma = 1.3
    out = gaussian_blur(x, 5, (sigma, sigma), gen(), p=1.0)
    r = np.arange(-2, 3)
    k1 = np.exp(-(r**2) / (2 * sigma**2))
    k2 = np.outer(k1, k1)
    k2 /= k2.sum()
    w = torch.tensor(k2, dtype=torch.float32).view(1, 1, 5, 5).repeat(2, 1, 1, 1)
    want = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), w, groups=2)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    assert torch.equal(gaussian_blur(x, 5, (0.1, 2.0), gen(), p=0.0), x)
    c = torch.full((2, 3, 6, 6), 0.3)
    torch.testing.assert_close(gaussian_blur(c, 3, (0.1, 2.0), gen(), p=1.0), c)


@pytest.mark.parametrize("channels", [1, 3])
def test_build_augment_all_policies_shapes_determinism(channels):
    x = rand_u8(16, channels, 12, 12, seed=12)
    aug = build_augment(list(POLICY_NAMES), mean=(0.5,) * channels, std=(0.25,) * channels, image_size=12, crop_padding=2)
    a = aug(x, gen(1))
    assert a.shape == (16, channels, 12, 12) and a.dtype == torch.float32
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, aug(x, gen(1))) and not torch.equal(a, aug(x, gen(2)))
    assert aug.policy == list(POLICY_NAMES)


def test_policy_names_and_defaults():
    with pytest.raises(DataError, match="color_jitter"):
        build_augment(["crop", "colour_jitter"], mean=(0.5,), std=(0.5,), image_size=8)
    assert default_policy("digits") == ["crop"]
    for name in ("cifar10", "cifar100", "tiny-imagenet", "imagefolder:cifar10-jpeg"):
        assert default_policy(name) == ["crop", "flip"]
    train, _ = load_dataset("digits")
    aug = augment_for(train)
    assert aug.policy == ["crop"] and aug.config["crop_padding"] == 1
    empty = build_augment([], mean=(0.5,), std=(0.5,), image_size=8)
    assert isinstance(empty, Augment) and empty.policy == []


# ------------------------------------------------------------------------------------------------ loader


def _toy(n: int = 50, c: int = 3, s: int = 8) -> ArrayDataset:
    return ArrayDataset(rand_u8(n, c, s, s, seed=13), torch.arange(n) % 5, list("abcde"), "toy", (0.5,) * c, (0.25,) * c)


def test_loader_covers_each_index_once_and_reproduces_order():
    ds = _toy()
    aug = build_augment(["crop", "flip"], mean=ds.mean, std=ds.std, image_size=8)
    dl = DeviceLoader(ds, batch_size=16, device="cpu", augment=aug, shuffle=True, drop_last=False, seed=1)
    assert len(dl) == 4
    batches = list(dl)
    idx = torch.cat([b.index for b in batches])
    assert sorted(idx.tolist()) == list(range(50)) and idx.tolist() != list(range(50))
    b0 = batches[0]
    assert isinstance(b0, Batch) and len(b0.views) == 1
    assert torch.equal(b0.labels, ds.labels[b0.index]) and b0.index.dtype == torch.int64
    v = b0.views[0]
    assert v.dtype == torch.float32 and v.shape == (16, 3, 8, 8) and v.is_contiguous(memory_format=torch.channels_last)
    # epoch 1 differs from epoch 0; set_epoch(0) and a fresh loader with the same seed reproduce epoch 0
    e1 = torch.cat([b.index for b in dl])
    assert not torch.equal(e1, idx)
    dl.set_epoch(0)
    again = list(dl)
    assert torch.equal(torch.cat([b.index for b in again]), idx)
    assert all(torch.equal(a.views[0], b.views[0]) for a, b in zip(again, batches))
    fresh = DeviceLoader(ds, batch_size=16, device="cpu", augment=aug, shuffle=True, drop_last=False, seed=1)
    assert torch.equal(torch.cat([b.index for b in fresh]), idx)
    other = DeviceLoader(ds, batch_size=16, device="cpu", augment=aug, shuffle=True, drop_last=False, seed=2)
    assert not torch.equal(torch.cat([b.index for b in other]), idx)


def test_loader_views_differ_but_share_labels_and_index():
    ds = _toy()
    aug = build_augment(["crop", "flip", "color_jitter"], mean=ds.mean, std=ds.std, image_size=8)
    dl = DeviceLoader(ds, batch_size=10, device="cpu", augment=aug, views=3, shuffle=True, drop_last=True, seed=0)
    b = next(iter(dl))
    assert len(b.views) == 3 and all(v.shape == (10, 3, 8, 8) for v in b.views)
    assert not torch.equal(b.views[0], b.views[1]) and not torch.equal(b.views[1], b.views[2])
    # a separate view_augment for views 1..
    plain = build_augment([], mean=ds.mean, std=ds.std, image_size=8)
    dl2 = DeviceLoader(
        ds, batch_size=10, device="cpu", augment=aug, views=2, view_augment=plain, shuffle=False, drop_last=True, seed=0
    )
    b2 = next(iter(dl2))
    torch.testing.assert_close(b2.views[1], normalize(ds.images[:10], ds.mean, ds.std))


def test_eval_loader_only_normalises_in_order():
    ds = _toy(c=1)
    dl = DeviceLoader(ds, batch_size=32, device="cpu", augment=None, shuffle=False, drop_last=False, seed=0)
    bs = list(dl)
    assert len(dl) == len(bs) == 2 and bs[1].index.tolist() == list(range(32, 50))
    want = (ds.images[:32].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(bs[0].views[0], want)
    assert bs[0].views[0].is_contiguous(memory_format=torch.channels_last)
    flat = DeviceLoader(
        ds, batch_size=32, device="cpu", augment=None, shuffle=False, drop_last=False, seed=0, channels_last=False
    )
    assert next(iter(flat)).views[0].is_contiguous()


def test_loader_drop_last_and_too_large_batch():
    ds = _toy()
    dl = DeviceLoader(ds, batch_size=16, device="cpu", augment=None, shuffle=True, drop_last=True, seed=0)
    assert len(dl) == 3 and all(len(b.index) == 16 for b in dl)
    with pytest.raises(DataError, match="batch_size 64 is larger than the dataset"):
        DeviceLoader(ds, batch_size=64, device="cpu", augment=None, shuffle=True, drop_last=True, seed=0)
    assert len(DeviceLoader(ds, batch_size=64, device="cpu", augment=None, shuffle=True, drop_last=False, seed=0)) == 1


def test_loader_state_dict_resumes_mid_epoch_exactly():
    ds = _toy()
    aug = build_augment(["crop", "flip", "cutout"], mean=ds.mean, std=ds.std, image_size=8)
    mk = lambda: DeviceLoader(ds, batch_size=8, device="cpu", augment=aug, views=2, shuffle=True, drop_last=False, seed=7)  # noqa: E731
    a = mk()
    next(iter(a))  # epoch 0 (consumed)
    it = iter(a)  # epoch 1
    first = [next(it) for _ in range(3)]
    state = a.state_dict()
    rest = list(it)
    b = mk()
    b.load_state_dict(state)
    resumed = list(b)
    assert len(first) + len(resumed) == len(a)
    for x, y in zip(rest, resumed):
        assert torch.equal(x.index, y.index) and all(torch.equal(u, v) for u, v in zip(x.views, y.views))
    assert a.state_dict()["epoch"] == 2 and a.state_dict()["batch"] == 0


# ------------------------------------------------------------------------------------------------- CIFAR


def test_cifar_pickle_reader_on_fake_folder(tmp_path):
    written = write_fake_cifar(tmp_path)
    train, test = load_dataset("cifar10", tmp_path)
    assert len(train) == 20 and len(test) == 4 and train.image_shape == (3, 32, 32)
    want = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), want)
    assert train.labels.tolist() == sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    assert train.classes == [f"class{i}" for i in range(10)]
    assert train.mean == pytest.approx((0.4914, 0.4822, 0.4465)) and len(train.std) == 3
    # the root may also be the batches folder itself
    t2, _ = load_dataset("cifar10", tmp_path / "cifar-10-batches-py")
    assert torch.equal(t2.images, train.images)
    # pickles naming numpy.core (as the official files, written with numpy 1.x) read as well
    f = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    raw = f.read_bytes()
    assert b"numpy._core" in raw
    f.write_bytes(raw.replace(b"numpy._core", b"numpy.core"))
    t3, _ = load_dataset("cifar10", tmp_path)
    assert torch.equal(t3.images, train.images)


def test_cifar_labels_out_of_range(tmp_path):
    write_fake_cifar(tmp_path, bad_label=True)
    with pytest.raises(DataError, match="data_batch_3.*labels"):
        load_dataset("cifar10", tmp_path)


def test_cifar_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"cifar-100-python.*data\.download=true.*data\.root="):
        load_dataset("cifar100", tmp_path / "nowhere")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilWrite:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("evil_cls", [_Evil, _EvilWrite])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, evil_cls):
    write_fake_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as fh:
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [evil_cls(marker)]}, fh)
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()
    # the restricted loader still rebuilds plain numpy arrays
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"a": arr, "b": [1, "x"]}, protocol=5))
    got = restricted_load(tmp_path / "ok.pkl")
    assert np.array_equal(got["a"], arr) and got["b"] == [1, "x"]


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str) -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type, i.linkname = tarfile.SYMTYPE, target
    return i


@pytest.mark.parametrize(
    "members,what",
    [
        ([(_file("ok/a.txt"), b"a"), (_file("../evil"), b"x")], "'..'"),
        ([(_file("/tmp/kdlab-evil-abs"), b"x")], "absolute"),
        ([(_link("ok/link", "../../etc"), None)], "outside"),
        ([(_link("ok/link", "/etc/passwd"), None)], "absolute target"),
    ],
)
def test_safe_extract_refuses_unsafe_members(tmp_path, members, what):
    arc = _tar_with(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "out" / "inner"
    with pytest.raises(DataError, match=what):
        safe_extract(arc, dest)
    assert not (tmp_path / "out" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/kdlab-evil-abs").exists()
    assert not list(dest.rglob("*"))  # refused before anything was written
    with pytest.raises(DataError):
        list(iter_archive(arc))


def test_safe_extract_refuses_devices_and_allows_plain(tmp_path):
    dev = tarfile.TarInfo("ok/dev")
    dev.type = tarfile.CHRTYPE
    with pytest.raises(DataError, match="device"):
        safe_extract(_tar_with(tmp_path / "dev.tar.gz", [(dev, None)]), tmp_path / "o1")
    good = _tar_with(tmp_path / "good.tar.gz", [(_file("top/a.txt"), b"hello"), (_link("top/l", "a.txt"), None)])
    out = safe_extract(good, tmp_path / "o2")
    assert (out / "top" / "a.txt").read_bytes() == b"hello"


def test_md5_mismatch_names_the_file(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"abc")
    check_md5(f, hashlib.md5(b"abc").hexdigest())
    with pytest.raises(DataError, match="blob.bin.*md5 mismatch"):
        check_md5(f, "0" * 32)


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_through_local_http_server(tmp_path, http_server):
    served, base = http_server
    src = tmp_path / "src"
    written = write_fake_cifar(src)
    arc = served / "cifar-10-python.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(arc.read_bytes()).hexdigest()
    data_root = tmp_path / "data"
    with pytest.raises(DataError, match="md5 mismatch"):
        load_dataset("cifar10", data_root, download=True, url=f"{base}/cifar-10-python.tar.gz", md5="f" * 32)
    assert not (data_root / "cifar-10-python.tar.gz").exists()
    train, test = load_dataset("cifar10", data_root, download=True, url=f"{base}/cifar-10-python.tar.gz", md5=md5)
    assert len(train) == 20 and np.array_equal(test.images.numpy().reshape(4, -1), written["test_batch"][0])
    assert (data_root / "cifar-10-python.tar.gz").exists()
    with pytest.raises(DataError, match="could not download"):
        download_url(f"{base}/missing.tar.gz", tmp_path / "m.tar.gz")


# ------------------------------------------------------------------------------------------- imagefolder


def _write_folder(root: Path, classes=("cat", "dog"), per_class=3, size=(6, 5), mode="RGB", seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays: dict[str, dict[str, list[np.ndarray]]] = {}
    for split, n in (("train", per_class), ("test", 2)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                a = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(a, mode).save(d / f"{i:03d}.png")
                arrays.setdefault(split, {}).setdefault(c, []).append(a)
    return arrays


def _expected(arrays, split, classes=("cat", "dog")):
    imgs = [a if a.ndim == 3 else a[:, :, None] for c in classes for a in arrays[split][c]]
    return np.stack(imgs).transpose(0, 3, 1, 2)


def test_imagefolder_decodes_caches_and_rebuilds(tmp_path, monkeypatch):
    root = tmp_path / "pets"
    arrays = _write_folder(root)
    train, test = load_dataset("imagefolder", root, workers=1)
    assert train.classes == ["cat", "dog"] and train.image_shape == (3, 5, 6)
    assert np.array_equal(train.images.numpy(), _expected(arrays, "train"))  # PNG is lossless
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and test.labels.tolist() == [0, 0, 1, 1]
    x = _expected(arrays, "train").astype(np.float64) / 255
    assert train.mean == pytest.approx(tuple(x.mean(axis=(0, 2, 3))), abs=1e-6)
    assert train.std == pytest.approx(tuple(x.std(axis=(0, 2, 3))), abs=1e-6)
    cache_files = list((root / ".kdlab-cache").glob("*.pt"))
    assert len(cache_files) == 1

    calls = []

    def counting(paths, workers=None, chunk=500):
        calls.append(len(paths))
        return real(paths, workers, chunk)

    real = sources.decode_files
    monkeypatch.setattr(sources, "decode_files", counting)
    t2, _ = load_dataset("imagefolder", root)
    assert calls == [] and torch.equal(t2.images, train.images)  # served from the cache, nothing decoded
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(root / "train" / "dog" / "zzz.png")
    t3, _ = load_dataset("imagefolder", root)
    assert calls == [7, 4] and len(t3) == 7  # file list changed -> new key -> decoded again


def test_imagefolder_process_pool_and_grayscale(tmp_path):
    root = tmp_path / "gray"
    arrays = _write_folder(root, classes=("a", "b", "c"), per_class=4, mode="L")
    train, test = load_dataset("imagefolder", root, workers=2, cache_dir=tmp_path / "cache")
    assert train.image_shape == (1, 5, 6) and len(test) == 6
    assert np.array_equal(train.images.numpy(), _expected(arrays, "train", ("a", "b", "c")))
    files = sorted(str(p) for p in (root / "train").rglob("*.png"))
    assert np.array_equal(sources.decode_files(files, workers=2, chunk=3), sources.decode_files(files, workers=1))


def test_imagefolder_bad_inputs_name_the_file(tmp_path):
    root = tmp_path / "bad"
    _write_folder(root)
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"train/empty: empty class folder"):
        load_dataset("imagefolder", root, workers=1)
    (root / "train" / "empty").rmdir()
    good = (root / "train" / "dog" / "001.png").read_bytes()
    (root / "train" / "dog" / "001.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match=r"dog/001.png: cannot decode"):
        load_dataset("imagefolder", root, workers=1)
    (root / "train" / "dog" / "001.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"dog/001.png: cannot decode"):
        load_dataset("imagefolder", root, workers=1)
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(root / "train" / "dog" / "001.png")
    with pytest.raises(DataError, match=r"dog/001.png: image size 7x7 differs"):
        load_dataset("imagefolder", root, workers=1)
    with pytest.raises(DataError, match="not found"):
        load_dataset("imagefolder", tmp_path / "missing")


def test_imagefolder_from_archive(tmp_path, monkeypatch):
    root = tmp_path / "src" / "pets-data"
    arrays = _write_folder(root, size=(4, 4))
    arc = tmp_path / "pets.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(root, arcname="pets-data")
    train, test = load_dataset("imagefolder", arc, cache_dir=tmp_path / "cache", workers=1)
    assert np.array_equal(train.images.numpy(), _expected(arrays, "train"))
    assert len(test) == 4 and train.name == "imagefolder:pets"
    monkeypatch.setattr(sources, "decode_files", lambda *a, **k: pytest.fail("decoded again"))
    t2, _ = load_dataset("imagefolder", arc, cache_dir=tmp_path / "cache")
    assert torch.equal(t2.images, train.images)
    # an archive with an empty class folder, and one that climbs out
    (root / "train" / "empty").mkdir()
    with tarfile.open(tmp_path / "bad.tar.gz", "w:gz") as tf:
        tf.add(root, arcname="pets-data")
    with pytest.raises(DataError, match="pets-data/train/empty: empty class folder"):
        load_dataset("imagefolder", tmp_path / "bad.tar.gz", cache_dir=tmp_path / "cache")
    evil = _tar_with(tmp_path / "evil.tar.gz", [(_file("../train/x/a.png"), b"x")])
    with pytest.raises(DataError, match="'..'"):
        load_dataset("imagefolder", evil, cache_dir=tmp_path / "cache")


def test_tiny_imagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(0)
    for w in wnids:
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"{w}_{i}.JPEG", format="JPEG")
    # one grayscale JPEG, as in the real set: expanded to RGB
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L").save(
        root / "train" / "n01" / "images" / "n01_9.JPEG", format="JPEG"
    )
    lines = []
    for i, w in enumerate(["n01", "n02", "n02"]):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            root / "val" / "images" / f"val_{i}.JPEG", format="JPEG"
        )
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    train, val = load_dataset("tiny-imagenet", tmp_path, workers=1)
    assert train.classes == ["n01", "n02"] and train.image_shape == (3, 64, 64)
    assert len(train) == 7 and torch.bincount(train.labels).tolist() == [4, 3]
    assert val.labels.tolist() == [0, 1, 1]
    with pytest.raises(DataError, match=r"data\.download=true"):
        load_dataset("tiny-imagenet", tmp_path / "none")


def test_channel_stats_matches_numpy():
    x = rand_u8(30, 3, 7, 7, seed=14)
    m, s = channel_stats(x)
    a = x.numpy().astype(np.float64) / 255
    assert m == pytest.approx(tuple(a.mean(axis=(0, 2, 3))), abs=1e-6)
    assert s == pytest.approx(tuple(a.std(axis=(0, 2, 3))), abs=1e-6)


# ------------------------------------------------------------------------------------ shared (extra tier)


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="../shared/data/cifar10-jpeg.tar.gz not present")
def test_shared_cifar10_jpeg_through_imagefolder():
    train, test = load_dataset("imagefolder", SHARED_CIFAR)
    assert (len(train), len(test)) == (50000, 10000)
    assert train.num_classes == 10 and train.image_shape == (3, 32, 32) and test.image_shape == (3, 32, 32)
    assert train.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.bincount(train.labels).tolist() == [5000] * 10 and torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=0.01)
    assert math.isclose(sum(train.std) / 3, 0.25, abs_tol=0.02)


# --------------------------------------------------------------------------------------------- streaming


def test_streaming_image_folder_and_loader(tmp_path):
    from kdlab.data import StreamingImageFolder, StreamingLoader

    root = tmp_path / "big"
    rng = np.random.default_rng(0)
    for c, sizes in (("a", [(12, 10), (10, 16), (10, 10)]), ("b", [(20, 14), (10, 11)])):
        (root / "train" / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.png")
    Image.fromarray(np.full((10, 10, 3), 77, np.uint8)).save(root / "train" / "a" / "9.png")
    ds = StreamingImageFolder(root, "train", image_size=8, resize=10)
    assert len(ds) == 6 and ds.classes == ["a", "b"] and ds.labels.tolist() == [0, 0, 0, 0, 1, 1]
    x, y, i = ds[3]
    assert x.dtype == torch.uint8 and x.shape == (3, 8, 8) and y == 0 and i == 3
    assert (x == 77).all()  # resize of a constant image, centre crop
    # a 10x10 image at resize=10 is only centre-cropped: equals slicing
    arr = np.asarray(Image.open(root / "train" / "a" / "2.png"))
    assert np.array_equal(ds[2][0].permute(1, 2, 0).numpy(), arr[1:9, 1:9])
    aug = augment_for(ds)
    assert aug.policy == ["crop", "flip"] and aug.config["crop_padding"] == 1 and aug.mean == ds.mean
    for workers in (0, 1):
        dl = StreamingLoader(
            ds, batch_size=4, device="cpu", augment=aug, views=2, shuffle=True, drop_last=False, seed=3, num_workers=workers
        )
        batches = list(dl)
        assert len(dl) == len(batches) == 2
        assert sorted(torch.cat([b.index for b in batches]).tolist()) == list(range(6))
        b = batches[0]
        assert b.views[0].shape == (4, 3, 8, 8) and b.views[0].dtype == torch.float32
        assert b.views[0].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(b.labels, ds.labels[b.index])
        dl.set_epoch(0)
        assert all(torch.equal(u.views[1], v.views[1]) for u, v in zip(batches, dl))
    with pytest.raises(DataError, match="empty class folder"):
        (root / "train" / "c").mkdir()
        StreamingImageFolder(root, "train", image_size=8)
