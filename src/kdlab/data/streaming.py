"""Streaming image folders for data too large to hold in memory (ImageNet size).

Files are decoded in DataLoader worker processes into fixed-size uint8 ``(C, H, W)`` tensors (shorter side
resized, then centre-cropped: the only per-sample CPU work), collated into uint8 batches, moved to the
training device and augmented there by the same batched :class:`~kdlab.data.augment.Augment` the in-memory
path uses -- so :class:`StreamingLoader` yields the same :class:`~kdlab.data.base.Batch` objects as
:class:`~kdlab.data.loader.DeviceLoader`, with the same seeded, per-epoch reproducible order.
"""

from __future__ import annotations

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

__all__ = ["StreamingImageFolder", "StreamingLoader", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

    def load(self, i: int) -> Tensor:
        from PIL import Image

        path = self.files[i]
        try:
            with Image.open(path) as im:
                im.draft("RGB" if self.channels == 3 else "L", (self.resize, self.resize))  # fast JPEG downscale
                im = im.convert("RGB" if self.channels == 3 else "L")
                w, h = im.size
                s = self.resize / min(w, h)
                if s != 1:
                    im = im.resize((max(self.resize, round(w * s)), max(self.resize, round(h * s))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - self.image_size) // 2, (h - self.image_size) // 2
                im = im.crop((left, top, left + self.image_size, top + self.image_size))
                arr = np.asarray(im, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        return self.load(i), int(self.labels[i]), i

    def estimate_stats(self, n: int = 2000, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean/std from ``n`` seeded random images; also stored on the dataset."""
        from .sources import channel_stats

        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[: min(n, len(self))]
        self.mean, self.std = channel_stats(torch.stack([self.load(int(i)) for i in idx]))
        return self.mean, self.std


class StreamingLoader:
    """:class:`~kdlab.data.loader.DeviceLoader`'s interface over a :class:`StreamingImageFolder`.

    Decoding runs in ``num_workers`` DataLoader processes (default: cores - 1, at least 1; 0 decodes in
    this process); augmentation of the uint8 batch runs on ``device``. Order and augmentation of epoch
    ``e`` are seeded from ``(seed, e)`` exactly as in DeviceLoader.
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
        dl = DataLoader(self.dataset, batch_size=per_rank, sampler=order.tolist(), shuffle=False, drop_last=False, **kw)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(epoch_seed(self.seed, epoch, 1 + self.rank))
        second = self.view_augment or self.augment
        for x, y, idx in dl:
            x = x.to(self.device, non_blocking=True)
            views = [self._view(x, self.augment, gen)] + [self._view(x, second, gen) for _ in range(self.views - 1)]
            yield Batch(views, y.to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True))

    def _view(self, x: Tensor, aug: Augment | None, gen: torch.Generator) -> Tensor:
        out = (
            aug(x, gen)
            if aug is not None
            else normalize(x, self.dataset.mean, self.dataset.std, channels_last=self.channels_last)
        )
        return out.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
