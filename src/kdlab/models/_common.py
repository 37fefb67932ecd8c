"""Small building blocks shared by the CIFAR zoo families (no parameters of their own).

Nothing here adds state-dict keys: the key layout of every model is decided in its family file.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (the conv used by every residual family)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, groups=groups, bias=False)


def global_pool(x: Tensor) -> Tensor:
    """Global average pool to a ``(B, C)`` vector; works for any spatial size (also 1x1)."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle: ``(B, g*c, H, W)`` -> interleave the ``g`` groups."""
    if groups == 1:
        return x
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class Stage(nn.Sequential):
    """A run of blocks whose ``forward`` returns ``(out, preact)``.

    Behaves like ``nn.Sequential`` for naming (children ``0, 1, ...``, so state-dict keys such as
    ``layer1.0.conv1.weight`` are unchanged) but threads the pair through and returns the last
    block's ``(out, preact)``.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        pre = x
        for block in self:
            x, pre = block(x)
        return x, pre


class ZooModel(nn.Module):
    """Base class of the zoo models: knows which child is the classifier head.

    ``head_name`` is the attribute holding the classifier (``fc``, ``linear`` or ``classifier``
    depending on the released layout); ``get_classifier()`` returns it, so callers can check or
    replace the head without knowing the family.
    """

    head_name: str = "fc"

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_name)


def init_conv_bn(model: nn.Module, linear_std: float | None = None, zero_linear_bias: bool = False) -> None:
    """The initialisation the reference releases use.

    Convs: He-normal with fan-out (std ``sqrt(2 / (k*k*out_channels))``), bias zeroed.
    BatchNorm: weight 1, bias 0. Linear: ``N(0, linear_std)`` with zero bias when ``linear_std`` is
    given; otherwise PyTorch's default, optionally with the bias zeroed.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
                nn.init.zeros_(m.bias)
            elif zero_linear_bias:
                nn.init.zeros_(m.bias)


__all__ = ["Stage", "ZooModel", "channel_shuffle", "conv1x1", "conv3x3", "global_pool", "init_conv_bn"]
