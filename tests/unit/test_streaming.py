"""Streaming training crops: the random-resized crop is taken in the decode workers from the full-resolution
image, with a box that is a pure function of (seed, epoch, index, view)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from kdlab.data import build_augment
from kdlab.data.augment import normalize
from kdlab.data.streaming import StreamingImageFolder, StreamingLoader, crop_boxes, rrc_box

SPEC = ((0.08, 1.0), (3 / 4, 4 / 3))


def _folder(root, sizes, *, fmt="png", seed=0):
    """root/train/{a,b}/k.<fmt> random-noise images of the given (w, h) sizes, alternating classes."""
    rng = np.random.default_rng(seed)
    for k, (w, h) in enumerate(sizes):
        d = root / "train" / "ab"[k % 2]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{k}.{fmt}")
    return root


def _by_index(loader):
    """{sample index: tuple of its views (float tensors)} over one epoch."""
    out = {}
    for b in loader:
        for j, i in enumerate(b.index.tolist()):
            out[i] = tuple(v[j] for v in b.views)
    return out


# --------------------------------------------------------------------------------------------- the box


def test_rrc_box_stays_in_scale_ratio_and_image_bounds():
    rng = np.random.default_rng(0)
    for W, H in ((500, 375), (375, 500), (64, 64), (300, 90)):
        for _ in range(2000):
            left, top, w, h = rrc_box(W, H, rng)
            assert 0 <= left and left + w <= W and 0 <= top and top + h <= H and w > 0 and h > 0
            frac = w * h / (W * H)
            # rounding w and h to whole pixels moves the area by at most about one row and one column
            slack = (w + h + 1) / (W * H)
            assert 0.08 - slack <= frac <= 1.0
            # aspect within [3/4, 4/3] up to the rounding of w and h (or the fallback's own rounding)
            assert math.log(3 / 4) - 1.5 / min(w, h) <= math.log(w / h) <= math.log(4 / 3) + 1.5 / min(w, h)


def test_rrc_box_draws_uniform_area_log_uniform_ratio_uniform_position():
    # a large square image with scale <= 0.5: every first try fits, so the draws are the raw distributions
    rng = np.random.default_rng(1)
    W = H = 1000
    boxes = np.array([rrc_box(W, H, rng, scale=(0.08, 0.5)) for _ in range(6000)], dtype=float)
    left, top, w, h = boxes.T
    frac = w * h / (W * H)
    assert frac.mean() == pytest.approx((0.08 + 0.5) / 2, abs=0.01)
    assert np.quantile(frac, [0.25, 0.75]) == pytest.approx([0.08 + 0.42 / 4, 0.08 + 0.42 * 3 / 4], abs=0.015)
    logr = np.log(w / h)
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    assert logr.mean() == pytest.approx(0.0, abs=0.01)
    assert np.quantile(logr, [0.25, 0.75]) == pytest.approx([lo + (hi - lo) / 4, lo + 3 * (hi - lo) / 4], abs=0.015)
    # position uniform over the free range
    assert (left / (W - w)).mean() == pytest.approx(0.5, abs=0.02)
    assert (top / (H - h)).mean() == pytest.approx(0.5, abs=0.02)


def test_rrc_box_falls_back_to_centre_crop_with_clamped_ratio():
    rng = np.random.default_rng(0)
    # 1000x10: any box of >= 8% area needs w/h >= 8, never within [3/4, 4/3] -> fallback every time
    assert rrc_box(1000, 10, rng) == ((1000 - 13) // 2, 0, 13, 10)  # w = round(10 * 4/3)
    assert rrc_box(10, 1000, rng) == (0, (1000 - 13) // 2, 10, 13)  # h = round(10 / (3/4))
    # no valid try at all (scale above 1): whole image when its ratio is inside the range
    assert rrc_box(40, 30, rng, scale=(2.0, 3.0)) == (0, 0, 40, 30)


def test_crop_boxes_are_a_pure_function_of_seed_epoch_index_view():
    specs = (SPEC, SPEC)
    a = crop_boxes(0, 3, 17, 500, 375, specs)
    assert a == crop_boxes(0, 3, 17, 500, 375, specs)
    assert a[0] != a[1]  # the views of one image draw independently
    assert crop_boxes(0, 4, 17, 500, 375, specs) != a
    assert crop_boxes(1, 3, 17, 500, 375, specs) != a
    assert crop_boxes(0, 3, 18, 500, 375, specs) != a
    assert crop_boxes(0, 3, 17, 500, 375, (None, SPEC)) == [None, a[1]]


# ----------------------------------------------------------------------------------------- the pixels


def test_worker_crop_takes_the_box_from_the_full_resolution_image(tmp_path):
    # pixel values encode coordinates (R = x, G = y; lossless PNG), so each crop's box can be read back
    W, H, S = 240, 160, 32
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "train" / "a" / "0.png")
    ds = StreamingImageFolder(tmp_path, "train", image_size=S)
    c = np.arange(S) + 0.5
    outside_centre = 0
    for epoch in range(60):
        x = ds.load_views(0, (SPEC,), seed=5, epoch=epoch)
        assert x.shape == (1, 3, S, S) and x.dtype == torch.uint8
        r = x[0, 0].double().mean(0).numpy()  # x coordinate of each output column
        g = x[0, 1].double().mean(1).numpy()  # y coordinate of each output row
        # an output pixel centre c maps to left + c * w / S - 0.5 in the source
        sx, bx = np.polyfit(c, r, 1)
        sy, by = np.polyfit(c, g, 1)
        w, h = sx * S, sy * S
        left, top = bx + 0.5, by + 0.5
        assert -1.5 <= left and left + w <= W + 1.5 and -1.5 <= top and top + h <= H + 1.5
        assert 0.08 * 0.9 <= w * h / (W * H) <= 1.02
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
        # and it is the box drawn for (seed, epoch, 0)
        (bl, bt, bw, bh), = crop_boxes(5, epoch, 0, W, H, (SPEC,))
        assert (left, top, w, h) == pytest.approx((bl, bt, bw, bh), abs=1.5)
        # the old path could only crop inside the central 160x160 square (columns 40..200)
        outside_centre += left < 38 or left + w > 202
    assert outside_centre >= 10


def test_drafted_jpeg_decode_matches_a_full_resolution_crop(tmp_path):
    # a large JPEG: the worker decodes at a reduced DCT scale while every box keeps >= S pixels a side
    W, H, S = 1600, 1200, 32
    yy, xx = np.mgrid[0:H, 0:W] / 100.0
    img = np.stack([np.sin(xx) * 100 + 128, np.cos(yy * 1.3) * 100 + 128, np.sin(xx + yy) * 60 + 128], -1)
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(img.astype(np.uint8)).save(tmp_path / "train" / "a" / "0.jpg", quality=95)
    ds = StreamingImageFolder(tmp_path, "train", image_size=S)
    full = Image.open(tmp_path / "train" / "a" / "0.jpg").convert("RGB")
    for epoch in range(8):
        got = ds.load_views(0, (SPEC,), seed=0, epoch=epoch)[0].permute(1, 2, 0).numpy().astype(float)
        (l, t, w, h), = crop_boxes(0, epoch, 0, W, H, (SPEC,))
        ref = np.asarray(full.resize((S, S), Image.BILINEAR, box=(l, t, l + w, t + h)), dtype=float)
        assert np.abs(got - ref).mean() < 3.0


def test_image_smaller_than_the_crop(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.full((9, 12, 3), 200, np.uint8)).save(tmp_path / "train" / "a" / "0.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "train" / "a" / "1.png")
    ds = StreamingImageFolder(tmp_path, "train", image_size=32)
    x = ds.load_views(0, (SPEC, SPEC, None), seed=0, epoch=0)
    assert x.shape == (3, 3, 32, 32) and (x == 200).all()
    assert ds.load_views(1, (SPEC,), seed=0, epoch=0).shape == (1, 3, 32, 32)
    assert ds.load(0).shape == (3, 32, 32)


# ---------------------------------------------------------------------------------------------- loader


def test_loader_pixels_depend_only_on_seed_epoch_index(tmp_path):
    sizes = [(40, 30), (30, 40), (50, 50), (64, 20), (33, 47), (45, 28), (20, 64), (41, 39), (36, 36), (60, 44)]
    ds = StreamingImageFolder(_folder(tmp_path, sizes), "train", image_size=16)
    aug = build_augment(["rrc"], mean=ds.mean, std=ds.std, image_size=16)  # device: normalise only

    def epoch(e, *, batch_size, workers, seed=7):
        dl = StreamingLoader(ds, batch_size=batch_size, device="cpu", augment=aug, views=2, shuffle=True,
                             drop_last=False, seed=seed, num_workers=workers)
        assert dl.crop_specs == (SPEC, SPEC) and [a.policy for a in dl.device_augments] == [[], []]
        dl.set_epoch(e)
        return _by_index(dl)

    a = epoch(1, batch_size=4, workers=0)
    b = epoch(1, batch_size=3, workers=2)
    assert sorted(a) == sorted(b) == list(range(len(sizes)))
    for i in a:
        assert a[i][0].shape == (3, 16, 16)
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
        assert not torch.equal(a[i][0], a[i][1])  # each view its own crop
    c = epoch(2, batch_size=4, workers=0)
    assert sum(not torch.equal(a[i][0], c[i][0]) for i in a) >= len(sizes) - 1  # new boxes next epoch
    d = epoch(1, batch_size=4, workers=0, seed=8)
    assert sum(not torch.equal(a[i][0], d[i][0]) for i in a) >= len(sizes) - 1


def test_loader_with_flip_is_reproducible_across_workers_and_epoch_replay(tmp_path):
    ds = StreamingImageFolder(_folder(tmp_path, [(30 + 3 * k, 40 - 2 * k) for k in range(8)], fmt="jpg"), "train",
                              image_size=16)
    aug = build_augment(["rrc", "flip"], mean=ds.mean, std=ds.std, image_size=16)
    runs = []
    for workers in (0, 2):
        dl = StreamingLoader(ds, batch_size=4, device="cpu", augment=aug, views=2, shuffle=True, drop_last=True,
                             seed=1, num_workers=workers)
        assert [a.policy for a in dl.device_augments] == [["flip"], ["flip"]]  # no second crop on the device
        first = list(dl)
        dl.set_epoch(0)  # replay (what a resume does)
        again = list(dl)
        for u, v in zip(first, again):
            assert torch.equal(u.index, v.index) and all(torch.equal(p, q) for p, q in zip(u.views, v.views))
        runs.append(first)
    for u, v in zip(*runs):
        assert torch.equal(u.index, v.index) and all(torch.equal(p, q) for p, q in zip(u.views, v.views))
        assert u.views[0].shape == (4, 3, 16, 16) and u.views[0].is_contiguous(memory_format=torch.channels_last)


def test_views_without_rrc_keep_the_centre_crop_and_eval_is_unchanged(tmp_path):
    ds = StreamingImageFolder(_folder(tmp_path, [(40, 30), (30, 40), (24, 24), (50, 20)]), "train", image_size=16)
    aug = build_augment(["rrc"], mean=ds.mean, std=ds.std, image_size=16)
    plain = build_augment([], mean=ds.mean, std=ds.std, image_size=16)
    dl = StreamingLoader(ds, batch_size=2, device="cpu", augment=aug, view_augment=plain, views=2, shuffle=True,
                         drop_last=False, seed=0, num_workers=0)
    assert dl.crop_specs == (SPEC, None)
    for i, (v0, v1) in _by_index(dl).items():
        centre = normalize(ds.load(i)[None], ds.mean, ds.std)[0]  # resize + centre crop, as before
        assert torch.allclose(v1, centre) and not torch.allclose(v0, centre)
    ev = StreamingLoader(ds, batch_size=3, device="cpu", augment=None, shuffle=False, drop_last=False, seed=0,
                         num_workers=0)
    assert ev.crop_specs == (None,)
    x = torch.cat([b.views[0] for b in ev])
    assert torch.allclose(x, normalize(torch.stack([ds.load(i) for i in range(len(ds))]), ds.mean, ds.std))


def test_worker_rrc_off_keeps_the_crop_on_the_device(tmp_path):
    ds = StreamingImageFolder(_folder(tmp_path, [(40, 30), (30, 40)]), "train", image_size=16)
    aug = build_augment(["rrc", "flip"], mean=ds.mean, std=ds.std, image_size=16, rrc_scale=(0.5, 1.0))
    dl = StreamingLoader(ds, batch_size=2, device="cpu", augment=aug, shuffle=True, drop_last=True, seed=0,
                         num_workers=0, worker_rrc=False)
    assert dl.crop_specs == (None,) and dl.device_augments[0].policy == ["rrc", "flip"]
    on = StreamingLoader(ds, batch_size=2, device="cpu", augment=aug, shuffle=True, drop_last=True, seed=0,
                         num_workers=0)
    assert on.crop_specs == (((0.5, 1.0), (3 / 4, 4 / 3)),)  # the Augment's own rrc scale reaches the workers
    assert next(iter(dl)).views[0].shape == next(iter(on)).views[0].shape == (2, 3, 16, 16)




def test_streaming_bundle_evaluates_on_the_classic_256_to_224_centre_crop(tmp_path):
    """The test split of a streaming dataset resizes the shorter side to S / 0.875, then centre-crops S."""
    from kdlab.experiment.schema import build_config
    from kdlab.experiment.stages import DataBundle

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (50, 40), (10, 20, 30)).save(tmp_path / split / c / "0.jpg")
    cfg = build_config(overrides=[f"data.root={tmp_path}", "data.name=imagefolder", "data.streaming=true",
                                  "data.image_size=56", "data.batch_size=2"])
    bundle = DataBundle(cfg)
    assert bundle.test.resize == 64 and bundle.test.image_size == 56  # 56 / 0.875
    assert bundle.train.resize == 56
