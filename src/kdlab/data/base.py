"""Data contract: in-memory datasets of uint8 images and the batches the trainer consumes.

A :class:`ArrayDataset` holds a whole split as one uint8 tensor ``(N, C, H, W)`` plus int64 labels.
The :class:`~kdlab.data.loader.DeviceLoader` moves it to the training device once and yields
:class:`Batch` objects whose views are augmented on that device, a whole batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor


class DataError(ValueError):
    """Bad or missing data: the message names the file/folder and how to fix it."""


@dataclass
class ArrayDataset:
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,)
    classes: list[str]
    name: str
    mean: tuple[float, ...] = field(default=())  # per-channel mean in [0, 1] (train split statistics)
    std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.images.shape[0]} images but {tuple(self.labels.shape)} labels")
        self.labels = self.labels.long()
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise DataError(
                f"{self.name}: labels must lie in [0, {len(self.classes) - 1}] for {len(self.classes)} classes, "
                f"found [{int(self.labels.min())}, {int(self.labels.max())}]"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


class Batch(NamedTuple):
    views: list[Tensor]  # each float (B, C, H, W), normalised, on the training device
    labels: Tensor  # int64 (B,)
    index: Tensor  # int64 (B,) positions in the training split (for memory banks)
