"""ImageNet-style ResNet18/34/50 adapted to CIFAR (He et al., CVPR 2016).

RepDistiller / mdistiller ``resnetv2.py``: a 3x3 stride-1 stem to 64 channels (no max-pool), four
stages of widths 64/128/256/512 (strides 1/2/2/2) of BasicBlocks (ResNet18: 2-2-2-2, ResNet34:
3-4-6-3) or Bottlenecks with expansion 4 (ResNet50: 3-4-6-3), global pool and a classifier named
``linear``. Projection shortcuts (1x1 conv + BN) where the shape changes.

State-dict layout (identical to the releases)::

    conv1.weight, bn1.*
    layer{1..4}.{i}.conv{1,2[,3]}.weight, .bn{1,2[,3]}.*, layer{s}.{i}.shortcut.{0,1}.*
    linear.weight, linear.bias

Features: ``stages = [stem, layer1, ..., layer4]`` after ReLU; ``preacts`` before the last ReLU (for
the stem the ``bn1`` output, where the releases repeat the post-ReLU stem).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models._common import Stage, ZooModel, conv1x1, conv3x3, global_pool, init_conv_bn
from kdlab.models.base import ModelOutput, register_model


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Empty (identity) when shapes match, else 1x1 conv + BN; always named ``shortcut``."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; ``forward`` returns ``(relu(sum), sum)``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(preact), preact


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4; ``forward`` returns ``(relu(sum), sum)``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact


class ResNetV2(ZooModel):
    """CIFAR-stem ResNet with four stages; ``block`` is BasicBlock or Bottleneck."""

    head_name = "linear"

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: tuple[int, int, int, int],
                 num_classes: int, in_channels: int = 3, zero_init_residual: bool = False):
        super().__init__()
        self.conv1 = conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2), strict=True):
            blocks = [block(in_planes, planes, stride)]
            in_planes = planes * block.expansion
            blocks += [block(in_planes, planes, 1) for _ in range(n - 1)]
            stages.append(Stage(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        init_conv_bn(self)
        if zero_init_residual:  # start each residual branch at zero (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> ModelOutput:
        pre0 = self.bn1(self.conv1(x))
        f0 = F.relu(pre0)
        f1, pre1 = self.layer1(f0)
        f2, pre2 = self.layer2(f1)
        f3, pre3 = self.layer3(f2)
        f4, pre4 = self.layer4(f3)
        pooled = global_pool(f4)
        return ModelOutput(self.linear(pooled), pooled, [f0, f1, f2, f3, f4], [pre0, pre1, pre2, pre3, pre4])


@register_model("ResNet18")
def resnet18(num_classes: int, in_channels: int = 3, zero_init_residual: bool = False) -> ResNetV2:
    return ResNetV2(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, zero_init_residual)


@register_model("ResNet34")
def resnet34(num_classes: int, in_channels: int = 3, zero_init_residual: bool = False) -> ResNetV2:
    return ResNetV2(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, zero_init_residual)


@register_model("ResNet50")
def resnet50(num_classes: int, in_channels: int = 3, zero_init_residual: bool = False) -> ResNetV2:
    return ResNetV2(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, zero_init_residual)
