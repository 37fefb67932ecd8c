"""The device loader: a whole split on the training device, batches augmented there, multi-view.

Randomness: each epoch ``e`` uses two generators on the device seeded from ``(seed, e)`` -- one draws the
permutation, one the augmentation parameters -- so any epoch is reproducible on its own
(``set_epoch(e)``), and :meth:`DeviceLoader.state_dict` adds the position inside an epoch and the
augmentation generator state for an exact mid-epoch resume.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from .augment import Augment, normalize
from .base import ArrayDataset, Batch, DataError
from .sources import channel_stats

__all__ = ["DeviceLoader", "epoch_seed"]


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for (run seed, epoch, stream); well mixed so neighbouring epochs are unrelated."""
    h = hashlib.blake2b(f"kdlab|{seed}|{epoch}|{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def check_loader_args(dataset, *, batch_size: int, views: int, drop_last: bool, world_size: int) -> None:
    """The argument checks every loader shares; each failure is one DataError saying how to fix it."""
    n = len(dataset)
    if batch_size <= 0:
        raise DataError(f"{dataset.name}: batch_size must be positive, got {batch_size}")
    if views < 1:
        raise DataError(f"{dataset.name}: views must be >= 1, got {views}")
    if n == 0:
        raise DataError(f"{dataset.name}: the dataset is empty")
    if drop_last and batch_size > n:
        raise DataError(
            f"{dataset.name}: batch_size {batch_size} is larger than the dataset ({n} samples) and drop_last=True, "
            f"so an epoch would have no batch; use batch_size <= {n} or drop_last=False"
        )
    if world_size > 1 and (batch_size % world_size or not drop_last):
        raise DataError(
            f"{dataset.name}: data-parallel loading over {world_size} ranks needs drop_last=True and a "
            f"batch size divisible by {world_size} (got {batch_size}); batch_size is the global batch"
        )


class DeviceLoader:
    """Iterate over ``dataset`` in batches of :class:`~kdlab.data.base.Batch` on ``device``.

    ``views`` augmented views per batch: view 0 through ``augment``, views 1.. through ``view_augment``
    (default: ``augment`` again, with fresh random draws). ``augment=None`` only normalises (evaluation),
    with the dataset's mean/std. Views are float32, channels_last (4-D) when ``channels_last``.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
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
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_loader_args(dataset, batch_size=batch_size, views=views, drop_last=drop_last, world_size=world_size)
        self.dataset = dataset
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.augment = augment
        self.views = int(views)
        self.view_augment = view_augment
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.channels_last = bool(channels_last)
        # Data parallel: every rank walks the same permutation; rank r takes the r-th slice of each batch.
        self.rank, self.world_size = int(rank), int(world_size)
        self.images = dataset.images.to(self.device, non_blocking=True)
        self.labels = dataset.labels.to(self.device, non_blocking=True)
        mean, std = dataset.mean, dataset.std
        if not mean or not std:
            mean, std = channel_stats(dataset.images)
        self.mean, self.std = tuple(mean), tuple(std)
        self.epoch = 0
        self._resume: tuple[int, Tensor | None] | None = None  # (batch index, aug generator state)
        self._position = (0, 0)  # (epoch, next batch) of the iteration in progress
        self._aug_gen: torch.Generator | None = None

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The next iteration runs epoch ``epoch`` (order and augmentation exactly as that epoch always is)."""
        self.epoch = int(epoch)
        self._resume = None

    def _generator(self, stream: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(epoch_seed(self.seed, self.epoch, stream))
        return g

    def order(self, epoch: int | None = None) -> Tensor:
        """The sample order of ``epoch`` (default: the next one) on the device."""
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        saved, self.epoch = self.epoch, (self.epoch if epoch is None else int(epoch))
        try:
            return torch.randperm(n, generator=self._generator(0), device=self.device)
        finally:
            self.epoch = saved

    def _view(self, x: Tensor, aug: Augment | None, gen: torch.Generator) -> Tensor:
        if aug is None:
            out = normalize(x, self.mean, self.std, channels_last=self.channels_last)
        else:
            out = aug(x, gen)
        if out.dim() == 4:
            out = out.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return out

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        perm = self.order(epoch)
        aug_gen = self._generator(1 + self.rank)  # stream 0 is the permutation; one stream per rank
        start = 0
        if self._resume is not None:
            start, state = self._resume
            if state is not None:
                aug_gen.set_state(state)
            self._resume = None
        self._aug_gen = aug_gen
        self.epoch = epoch + 1  # the next __iter__ runs the following epoch unless set_epoch says otherwise
        nb = len(self)
        second = self.view_augment or self.augment
        for i in range(start, nb):
            self._position = (epoch, i)
            idx = perm[i * self.batch_size : (i + 1) * self.batch_size]
            if self.world_size > 1:
                per_rank = self.batch_size // self.world_size
                idx = idx[self.rank * per_rank : (self.rank + 1) * per_rank]
            x = self.images[idx]
            views = [self._view(x, self.augment, aug_gen)]
            views += [self._view(x, second, aug_gen) for _ in range(self.views - 1)]
            self._position = (epoch, i + 1)
            yield Batch(views, self.labels[idx], idx)

    def state_dict(self) -> dict:
        """Where the loader stands: resume with :meth:`load_state_dict` to continue exactly.

        Taken between batches of an iteration it records that position (the next batch to yield and the
        augmentation generator state); taken outside an iteration it records the next epoch.
        """
        epoch, nxt = self._position
        if self._aug_gen is not None and 0 < nxt < len(self) and epoch == self.epoch - 1:
            return {"epoch": epoch, "batch": nxt, "aug_state": self._aug_gen.get_state().cpu(), "seed": self.seed}
        return {"epoch": self.epoch, "batch": 0, "aug_state": None, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise DataError(f"loader state was saved with seed {state['seed']}, this loader has seed {self.seed}")
        self.epoch = int(state["epoch"])
        batch = int(state.get("batch", 0))
        self._resume = (batch, state.get("aug_state")) if batch > 0 else None
        self._position = (self.epoch, batch)
        self._aug_gen = None
