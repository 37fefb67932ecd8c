"""CIFAR ResNets (He et al., "Deep Residual Learning", CVPR 2016, Sec. 4.2).

Three stages of ``n`` BasicBlocks on a 3x3 stem, depth ``6n + 2``. Widths ``16/16/32/64`` for
resnet8 ... resnet110; the ``x4`` variants (resnet8x4, resnet32x4, used as teacher/student pair in
CRD) use ``32/64/128/256``. Shortcuts are projections (1x1 conv + BN, "option B") wherever the
shape changes, as in the RepDistiller / mdistiller releases.

State-dict layout (identical to RepDistiller ``models/resnet.py`` so its CIFAR-100
``ckpt_epoch_240.pth`` teachers load with ``strict=True``)::

    conv1.weight, bn1.*
    layer{1,2,3}.{i}.conv1.weight, .bn1.*, .conv2.weight, .bn2.*
    layer{s}.0.downsample.0.weight, layer{s}.0.downsample.1.*   (only where the shape changes)
    fc.weight, fc.bias

Features (``ModelOutput``): ``stages = [stem, layer1, layer2, layer3]`` after ReLU; ``preacts``
the same maps before their last ReLU (for the stem: ``bn1`` output, where RepDistiller repeats the
post-ReLU stem). The final pool is adaptive, so 8x8 and 64x64 inputs work.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models._common import Stage, ZooModel, conv1x1, conv3x3, global_pool, init_conv_bn
from kdlab.models.base import ModelOutput, register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus shortcut; ``forward`` returns ``(relu(sum), sum)``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        preact = out + shortcut
        return F.relu(preact), preact


class CifarResNet(ZooModel):
    """CIFAR ResNet of depth ``6n + 2`` with stem width ``widths[0]`` and stage widths ``widths[1:]``."""

    head_name = "fc"

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._make_stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._make_stage(widths[2], widths[3], n, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> Stage:
        first = BasicBlock(in_planes, planes, stride)
        return Stage(first, *(BasicBlock(planes, planes) for _ in range(blocks - 1)))

    def forward(self, x: Tensor) -> ModelOutput:
        pre0 = self.bn1(self.conv1(x))
        f0 = F.relu(pre0)
        f1, pre1 = self.layer1(f0)
        f2, pre2 = self.layer2(f1)
        f3, pre3 = self.layer3(f2)
        pooled = global_pool(f3)
        return ModelOutput(self.fc(pooled), pooled, [f0, f1, f2, f3], [pre0, pre1, pre2, pre3])


_THIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model("resnet8")
def resnet8(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(8, _THIN, num_classes, in_channels)


@register_model("resnet14")
def resnet14(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(14, _THIN, num_classes, in_channels)


@register_model("resnet20")
def resnet20(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, _THIN, num_classes, in_channels)


@register_model("resnet32")
def resnet32(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, _THIN, num_classes, in_channels)


@register_model("resnet44")
def resnet44(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(44, _THIN, num_classes, in_channels)


@register_model("resnet56")
def resnet56(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(56, _THIN, num_classes, in_channels)


@register_model("resnet110")
def resnet110(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(110, _THIN, num_classes, in_channels)


@register_model("resnet8x4")
def resnet8x4(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes, in_channels)


@register_model("resnet32x4")
def resnet32x4(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes, in_channels)
