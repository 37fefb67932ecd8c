"""Streaming image folders for data too large to hold in memory (ImageNet size).

Files are decoded in DataLoader worker processes into fixed-size uint8 ``(C, H, W)`` tensors, collated into
uint8 batches, moved to the training device and augmented there by the same batched
:class:`~kdlab.data.augment.Augment` the in-memory path uses -- so :class:`StreamingLoader` yields the same
:class:`~kdlab.data.base.Batch` objects as :class:`~kdlab.data.loader.DeviceLoader`, with the same seeded,
per-epoch reproducible order.

The worker's per-sample CPU work is a resize: evaluation (and training views without ``rrc``) resize the
shorter side and centre-crop; a training view whose augmentation lists ``rrc`` instead takes its
random-resized crop in the worker, from the full-resolution image (as torchvision's RandomResizedCrop on the
decoded original), and only the remaining ops (flip, colour, ...) run on the device. The crop box of sample
``i`` in epoch ``e``, view ``v`` is a pure function of ``(seed, e, i, v)`` (:func:`crop_boxes`), so it does
not depend on the batch, the number of workers or the rank, and any epoch replays exactly.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .augment import Augment, normalize
from .base import Batch, DataError
from .loader import check_loader_args, epoch_seed
from .sources import IMAGE_EXTENSIONS

__all__ = [
    "StreamingImageFolder", "StreamingLoader", "IMAGENET_MEAN", "IMAGENET_STD", "EVAL_CROP_FRACTION", "rrc_box", "crop_boxes",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 0.875  # evaluation: centre crop of side S from the shorter side resized to S / 0.875

CROP_STREAM = -1  # epoch_seed stream of the worker crop boxes (0 is the order, 1 + rank the device augmentation)
WORKER_SEED_STREAM = -2  # epoch_seed stream of the DataLoader's worker base seed

CropSpec = tuple[tuple[float, float], tuple[float, float]]  # (scale, ratio) of a view's random-resized crop


def rrc_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """A random-resized-crop box ``(left, top, w, h)`` of a ``width`` x ``height`` image, drawn from ``rng``.

    The standard sampling: up to ``attempts`` tries of an area fraction uniform in ``scale`` and an aspect
    ratio ``w/h`` log-uniform in ``ratio``; the first box that fits is placed uniformly at random. If none
    fits, the central box of the whole image with its aspect ratio clamped into ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    if width / height < ratio[0]:  # too tall: full width, height clamped to the ratio
        w, h = width, min(height, max(1, round(width / ratio[0])))
    elif width / height > ratio[1]:  # too wide
        w, h = min(width, max(1, round(height * ratio[1]))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def crop_boxes(
    seed: int, epoch: int, index: int, width: int, height: int, specs: Sequence[CropSpec | None]
) -> list[tuple[int, int, int, int] | None]:
    """The crop box of every view of sample ``index`` (a ``width`` x ``height`` image) in ``epoch``.

    A pure function of ``(seed, epoch, index, view)`` and the image size: each view draws from its own
    generator, so views are independent and nothing depends on batching, workers or ranks. ``None`` where
    the view's spec is ``None`` (resize + centre crop).
    """
    key = epoch_seed(seed, epoch, CROP_STREAM)
    return [
        None if spec is None else rrc_box(width, height, np.random.default_rng((key, index, v)), *spec)
        for v, spec in enumerate(specs)
    ]


class StreamingImageFolder(Dataset):
    """``root/<split>/<class>/<image>`` read lazily; item ``i`` is ``(uint8 (C, S, S), label, i)``.

    ``image_size``: side S of the square output; ``resize``: the shorter side is first resized to this
    (default ``image_size``, i.e. resize + centre crop; use e.g. 256 with image_size 224 for the classic
    ImageNet eval crop). ``classes``: pass the train split's list for evaluation splits so labels agree.
    ``mean``/``std``: default ImageNet's published statistics (or call :meth:`estimate_stats`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        image_size: int,
        resize: int | None = None,
        classes: Sequence[str] | None = None,
        channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.root = Path(root)
        folder = self.root / split
        if not folder.is_dir():
            raise DataError(f"{folder}: split folder not found (expected {self.root}/{split}/<class>/*.jpg)")
        found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.classes = list(classes) if classes is not None else found
        if not self.classes:
            raise DataError(f"{folder}: no class folders")
        index = {c: i for i, c in enumerate(self.classes)}
        files: list[str] = []
        labels: list[int] = []
        for c in found:
            if c not in index:
                raise DataError(f"{folder / c}: class {c!r} is not among the given classes")
            imgs = sorted(
                p.name for p in (folder / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
            )
            if not imgs:
                raise DataError(f"{folder / c}: empty class folder")
            files += [str(folder / c / f) for f in imgs]
            labels += [index[c]] * len(imgs)
        self.files = files
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.image_size = int(image_size)
        self.resize = int(resize) if resize is not None else self.image_size
        if self.resize < self.image_size:
            raise DataError(f"resize {self.resize} is smaller than image_size {self.image_size}")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels
        self.mean = tuple(mean) if mean is not None else (IMAGENET_MEAN if channels == 3 else (0.449,))
        self.std = tuple(std) if std is not None else (IMAGENET_STD if channels == 3 else (0.226,))
        self.name = f"imagefolder:{self.root.name}"
        self.split = split

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def _centre(self, im) -> np.ndarray:
        """Shorter side resized to ``resize``, then the central ``image_size`` square (``im`` decoded)."""
        from PIL import Image

        w, h = im.size
        s = self.resize / min(w, h)
        if s != 1:
            im = im.resize((max(self.resize, round(w * s)), max(self.resize, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - self.image_size) // 2, (h - self.image_size) // 2
        return np.asarray(im.crop((left, top, left + self.image_size, top + self.image_size)), dtype=np.uint8)

    @staticmethod
    def _tensor(arr: np.ndarray) -> Tensor:
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))  # numpy: no torch threads in workers

    def load(self, i: int) -> Tensor:
        """Image ``i``: shorter side resized to ``resize``, centre crop ``image_size`` (uint8 ``(C, S, S)``)."""
        from PIL import Image

        mode = "RGB" if self.channels == 3 else "L"
        try:
            with Image.open(self.files[i]) as im:
                im.draft(mode, (self.resize, self.resize))  # fast JPEG downscale
                arr = self._centre(im.convert(mode))
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{self.files[i]}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        return self._tensor(arr)

    def load_views(self, i: int, specs: Sequence[CropSpec | None], *, seed: int, epoch: int) -> Tensor:
        """Image ``i`` once per view, uint8 ``(V, C, S, S)``: view ``v`` is the random-resized crop of the
        full-resolution image with ``specs[v] = (scale, ratio)`` (box from :func:`crop_boxes`), resized to
        ``image_size`` (bilinear, antialiased), or :meth:`load`'s resize + centre crop where ``specs[v]`` is None.

        JPEGs are decoded at a reduced scale (DCT scaling) only while every box keeps at least ``image_size``
        pixels a side, so each crop is still a downscale of at least output resolution.
        """
        from PIL import Image

        mode = "RGB" if self.channels == 3 else "L"
        S = self.image_size
        try:
            with Image.open(self.files[i]) as im:
                W, H = im.size
                boxes = crop_boxes(seed, epoch, i, W, H, specs)
                # smallest decode size that keeps every box >= S pixels a side (centre views: shorter side >= resize)
                need = [(math.ceil(W * S / b[2]), math.ceil(H * S / b[3])) if b else (self.resize,) * 2 for b in boxes]
                drafted = im.draft(mode, (max(n[0] for n in need), max(n[1] for n in need)))
                sx = drafted[1][2] / W if drafted else 1.0  # original -> decoded coordinates
                sy = drafted[1][3] / H if drafted else 1.0
                im = im.convert(mode)
                centre = None
                out = []
                for b in boxes:
                    if b is None:
                        centre = self._centre(im) if centre is None else centre
                        out.append(centre)
                    else:
                        left, top, w, h = b
                        box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
                        out.append(np.asarray(im.resize((S, S), Image.BILINEAR, box=box), dtype=np.uint8))
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{self.files[i]}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        arr = np.stack(out)
        if arr.ndim == 3:
            arr = arr[..., None]
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        return self.load(i), int(self.labels[i]), i

    def estimate_stats(self, n: int = 2000, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean/std from ``n`` seeded random images; also stored on the dataset."""
        from .sources import channel_stats

        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[: min(n, len(self))]
        self.mean, self.std = channel_stats(torch.stack([self.load(int(i)) for i in idx]))
        return self.mean, self.std


class _EpochViews(Dataset):
    """One epoch's training items for the workers: ``(uint8 (V, C, S, S), label, i)`` from :meth:`load_views`."""

    def __init__(self, dataset: StreamingImageFolder, specs: tuple[CropSpec | None, ...], seed: int, epoch: int):
        self.dataset, self.specs, self.seed, self.epoch = dataset, specs, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        x = self.dataset.load_views(i, self.specs, seed=self.seed, epoch=self.epoch)
        return x, int(self.dataset.labels[i]), i


def _split_rrc(aug: Augment | None) -> tuple[Augment | None, CropSpec | None]:
    """``aug`` without its ``rrc`` op, and that op's ``(scale, ratio)`` (None if ``aug`` has no rrc)."""
    if aug is None or "rrc" not in aug.policy:
        return aug, None
    cfg = aug.config
    spec = (
        tuple(map(float, cfg.get("rrc_scale", (0.08, 1.0)))),
        tuple(map(float, cfg.get("rrc_ratio", (3 / 4, 4 / 3)))),
    )
    ops = [op for op in aug.ops if op.name != "rrc"]
    device = dataclasses.replace(aug, ops=ops, config={**cfg, "policy": [op.name for op in ops]})
    return device, spec  # type: ignore[return-value]


class StreamingLoader:
    """:class:`~kdlab.data.loader.DeviceLoader`'s interface over a :class:`StreamingImageFolder`.

    Decoding runs in ``num_workers`` DataLoader processes (default: cores - 1, at least 1; 0 decodes in
    this process); augmentation of the uint8 batch runs on ``device``. Order and augmentation of epoch
    ``e`` are seeded from ``(seed, e)`` exactly as in DeviceLoader.

    A view whose augmentation lists ``rrc`` gets its random-resized crop in the workers, from the
    full-resolution image (``worker_rrc=False``: on the device, from the decoded ``image_size`` square, as
    the in-memory path does); its other ops run on the device as usual, and rrc counts as the first op. Each
    view takes its own crop, with the rrc scale/ratio of its :class:`~kdlab.data.augment.Augment`.
    """

    def __init__(
        self,
        dataset: StreamingImageFolder,
        *,
        batch_size: int,
        device: torch.device | str,
        augment: Augment | None,
        views: int = 1,
        view_augment: Augment | None = None,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        channels_last: bool = True,
        num_workers: int | None = None,
        prefetch_factor: int = 4,
        rank: int = 0,
        world_size: int = 1,
        worker_rrc: bool = True,
    ) -> None:
        check_loader_args(dataset, batch_size=batch_size, views=views, drop_last=drop_last, world_size=world_size)
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.augment, self.views, self.view_augment = augment, int(views), view_augment
        self.shuffle, self.drop_last, self.seed = bool(shuffle), bool(drop_last), int(seed)
        self.channels_last = channels_last
        self.num_workers = max(1, (os.cpu_count() or 2) - 1) if num_workers is None else int(num_workers)
        self.prefetch_factor = prefetch_factor
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        # per view: the augmentation run on the device, and the worker's crop (None: resize + centre crop)
        second = view_augment or augment
        augs = [augment] + [second] * (self.views - 1)
        split = [_split_rrc(a) if worker_rrc else (a, None) for a in augs]
        self.device_augments = [a for a, _ in split]
        self.crop_specs: tuple[CropSpec | None, ...] = tuple(c for _, c in split)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> Tensor:
        e = self.epoch if epoch is None else int(epoch)
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, e, 0)))

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        order = self.order(epoch)
        if self.drop_last:
            order = order[: len(self) * self.batch_size]
        per_rank = self.batch_size // self.world_size
        if self.world_size > 1:  # rank r takes the r-th slice of every global batch
            order = order.view(len(self), self.world_size, per_rank)[:, self.rank].reshape(-1)
        kw = dict(num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        if self.num_workers > 0:
            kw.update(prefetch_factor=self.prefetch_factor, persistent_workers=False)
        per_view = any(c is not None for c in self.crop_specs)  # items are (V, C, S, S): one image per view
        data = _EpochViews(self.dataset, self.crop_specs, self.seed, epoch) if per_view else self.dataset
        # the DataLoader draws its workers' base seed from the generator it is given, else from torch's global
        # one; its own keeps the global stream (CRD's negatives, dropout) that of the run alone, grouped or not
        base_seed = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, WORKER_SEED_STREAM))
        dl = DataLoader(data, batch_size=per_rank, sampler=order.tolist(), shuffle=False, drop_last=False,
                        generator=base_seed, **kw)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(epoch_seed(self.seed, epoch, 1 + self.rank))
        for x, y, idx in dl:
            x = x.to(self.device, non_blocking=True)
            views = [self._view(x[:, v] if per_view else x, a, gen) for v, a in enumerate(self.device_augments)]
            yield Batch(views, y.to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True))

    def _view(self, x: Tensor, aug: Augment | None, gen: torch.Generator) -> Tensor:
        out = (
            aug(x, gen)
            if aug is not None
            else normalize(x, self.dataset.mean, self.dataset.std, channels_last=self.channels_last)
        )
        return out.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
