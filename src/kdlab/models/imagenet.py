"""ImageNet-style networks behind the kdlab output contract, in torchvision's / mdistiller's key layout.

These are the ImageNet (224x224) architectures of the KD literature, with state-dict keys and shapes
equal to the published releases, so the torchvision ImageNet weights (``resnet18-5c106cde.pth``,
``mobilenet_v2-b0353104.pth``, ...) and state dicts in mdistiller's ImageNet MobileNetV1 layout load
with :func:`kdlab.models.checkpoint.load_weights`. Names carry an ``imagenet_`` prefix so they never clash
with the CIFAR variants (``ResNet18``/``ResNet34``/``ResNet50`` are the 3x3-stem CIFAR models of
``resnetv2.py``, ``MobileNetV2`` is the half-width CIFAR model).

* ``imagenet_resnet18/34/50/101`` -- He et al. (CVPR 2016), torchvision layout (ResNet "v1.5": the
  bottleneck's stride sits on its 3x3 conv). A 7x7 stride-2 stem conv to 64 channels, BN, ReLU, a
  3x3 stride-2 max-pool, four stages of widths 64/128/256/512 (strides 1/2/2/2) of BasicBlocks
  (2-2-2-2, 3-4-6-3) or Bottlenecks with expansion 4 (3-4-6-3, 3-4-23-3), global pool, ``fc``::

      conv1.weight, bn1.*
      layer{1..4}.{i}.conv{1,2[,3]}.weight, .bn{1,2[,3]}.*, layer{s}.0.downsample.{0,1}.*
      fc.weight, fc.bias

  Features (as mdistiller's ImageNet ResNet): ``stages = [stem, layer1, ..., layer4]`` where the stem
  is the ReLU output *before* the max-pool; ``preacts`` are the same before the last ReLU.

* ``imagenet_mobilenetv2`` -- Sandler et al. (CVPR 2018), torchvision layout, width 1.0: a 3x3
  stride-2 conv-BN-ReLU6 stem to 32 channels, 17 inverted residuals (``t, c, n, s`` = ``1,16,1,1 /
  6,24,2,2 / 6,32,3,2 / 6,64,4,2 / 6,96,3,1 / 6,160,3,2 / 6,320,1,1``), a 1x1 conv-BN-ReLU6 to 1280,
  global pool, dropout 0.2 and a linear layer::

      features.0.{0,1}.*             stem conv + BN
      features.{1..17}.conv.*        t=1: conv.0.{0,1} (dw conv+BN), conv.1 (pw-linear), conv.2 (BN)
                                     t=6: conv.0.{0,1} (pw), conv.1.{0,1} (dw), conv.2, conv.3
      features.18.{0,1}.*            1x1 head conv + BN
      classifier.1.weight, .bias     (classifier.0 is the dropout)

  Features: ``stages = [stem, features.3, features.6, features.13, features.17]`` (the last block of the
  24-, 32-, 96- and 320-channel groups, the same groups as the CIFAR ``MobileNetV2``); blocks end in a
  linear bottleneck, so ``preacts`` equal ``stages`` there (stem: BN output before ReLU6).

* ``imagenet_mobilenetv1`` -- Howard et al. (2017), mdistiller's ImageNet MobileNetV1 layout: one 3x3
  stride-2 conv-BN-ReLU to 32 channels and 13 depthwise-separable blocks (3x3 depthwise conv-BN-ReLU,
  1x1 pointwise conv-BN-ReLU) to 1024 channels, a pooling module, ``fc``::

      model.0.{0,1}.*                stem conv + BN
      model.{1..13}.{0,1,3,4}.*      dw conv, BN, pw conv, BN
      fc.weight, fc.bias             (model.14 is the parameter-free pool)

  Features (mdistiller's choice plus the stem): ``stages = [model.0, model.3, model.5, model.11,
  model.13]``; ``preacts`` before each block's final ReLU.

Every model pools adaptively (the releases use ``AvgPool2d(7)`` for MobileNetV1, which equals a global
pool at 224x224), so 64x64 Tiny-ImageNet and 32x32 inputs work; ``in_channels`` and ``num_classes``
are free (a changed value changes only ``conv1``/``features.0.0``/``model.0.0`` or the head shapes).
ReLUs are not in-place, so the pre-activations handed out are not overwritten.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models._common import Stage, ZooModel, conv1x1, conv3x3, global_pool, init_conv_bn
from kdlab.models.base import ModelOutput, register_model


# ------------------------------------------------------------------------------------------- ResNet
def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    """1x1 conv + BN where the shape changes, else ``None`` (then the block has no ``downsample`` keys)."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers (stride on the first); ``forward`` returns ``(relu(sum), sum)``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_planes, planes, stride)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + identity
        return F.relu(preact), preact


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, "v1.5"), 1x1 expand x4; ``forward`` returns ``(relu(sum), sum)``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = _downsample(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + identity
        return F.relu(preact), preact


class ImageNetResNet(ZooModel):
    """7x7-stem ResNet with max-pool and four stages; ``block`` is BasicBlock or Bottleneck."""

    head_name = "fc"

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: tuple[int, int, int, int],
                 num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = 64
        stages = []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2), strict=True):
            blocks = [block(in_planes, planes, stride)]
            in_planes = planes * block.expansion
            blocks += [block(in_planes, planes, 1) for _ in range(n - 1)]
            stages.append(Stage(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_conv_bn(self)  # torchvision: He fan-out convs, BN 1/0, PyTorch-default Linear
        if zero_init_residual:  # start each residual branch at zero (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> ModelOutput:
        pre0 = self.bn1(self.conv1(x))
        f0 = F.relu(pre0)
        f1, pre1 = self.layer1(self.maxpool(f0))
        f2, pre2 = self.layer2(f1)
        f3, pre3 = self.layer3(f2)
        f4, pre4 = self.layer4(f3)
        pooled = global_pool(f4)
        return ModelOutput(self.fc(pooled), pooled, [f0, f1, f2, f3, f4], [pre0, pre1, pre2, pre3, pre4])


@register_model("imagenet_resnet18")
def imagenet_resnet18(num_classes: int = 1000, in_channels: int = 3,
                      zero_init_residual: bool = False) -> ImageNetResNet:
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, zero_init_residual)


@register_model("imagenet_resnet34")
def imagenet_resnet34(num_classes: int = 1000, in_channels: int = 3,
                      zero_init_residual: bool = False) -> ImageNetResNet:
    return ImageNetResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, zero_init_residual)


@register_model("imagenet_resnet50")
def imagenet_resnet50(num_classes: int = 1000, in_channels: int = 3,
                      zero_init_residual: bool = False) -> ImageNetResNet:
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, zero_init_residual)


@register_model("imagenet_resnet101")
def imagenet_resnet101(num_classes: int = 1000, in_channels: int = 3,
                       zero_init_residual: bool = False) -> ImageNetResNet:
    return ImageNetResNet(Bottleneck, (3, 4, 23, 3), num_classes, in_channels, zero_init_residual)


# -------------------------------------------------------------------------------------- MobileNetV2
# (expansion t, output channels c, repeats n, first stride s) at width 1.0
_MV2_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
# Channel groups whose last block's output is a distillation stage (as the CIFAR MobileNetV2).
_MV2_STAGE_GROUPS = (1, 2, 4, 6)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never dropping it by more than 10%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1,
                 act: type[nn.Module] = nn.ReLU6) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BN -> activation, children ``0, 1, 2``."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        act(),
    )


class InvertedResidualV2(nn.Module):
    """[1x1 expand conv-BN-ReLU6 if t != 1] -> 3x3 depthwise conv-BN-ReLU6 -> 1x1 linear conv -> BN."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_act(inp, hidden, 1, 1))
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class ImageNetMobileNetV2(ZooModel):
    """torchvision-layout MobileNetV2 (``features``, ``classifier = [Dropout, Linear]``)."""

    head_name = "classifier"

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2):
        super().__init__()
        channels = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_bn_act(in_channels, channels, 3, 2)]
        self._stage_ends: list[int] = []  # indices into ``features`` whose outputs are stages
        for g, (t, c, n, s) in enumerate(_MV2_SETTING):
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidualV2(channels, out_ch, s if i == 0 else 1, t))
                channels = out_ch
            if g in _MV2_STAGE_GROUPS:
                self._stage_ends.append(len(features) - 1)
        features.append(_conv_bn_act(channels, self.last_channel, 1, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        init_conv_bn(self, linear_std=0.01)  # torchvision: He fan-out convs, BN 1/0, Linear N(0, 0.01)

    def forward(self, x: Tensor) -> ModelOutput:
        stem = self.features[0]
        pre0 = stem[1](stem[0](x))
        out = stem[2](pre0)
        stages = [out]
        for i in range(1, len(self.features)):
            out = self.features[i](out)
            if i in self._stage_ends:
                stages.append(out)
        pooled = global_pool(out)
        return ModelOutput(self.classifier(pooled), pooled, stages, [pre0, *stages[1:]])


@register_model("imagenet_mobilenetv2")
def imagenet_mobilenetv2(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                         dropout: float = 0.2) -> ImageNetMobileNetV2:
    """torchvision ``mobilenet_v2`` (width 1.0 by default)."""
    return ImageNetMobileNetV2(num_classes, in_channels, width_mult, dropout)


# -------------------------------------------------------------------------------------- MobileNetV1
# (output channels, stride) of the 13 depthwise-separable blocks after the 32-channel stem
_MV1_BLOCKS = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]
# Indices into ``model`` whose outputs are stages: the stem and mdistiller's four feature points.
_MV1_STAGES = (0, 3, 5, 11, 13)


def _dw_separable(inp: int, oup: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv-BN-ReLU then 1x1 pointwise conv-BN-ReLU, children ``0..5``."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class ImageNetMobileNetV1(ZooModel):
    """mdistiller-layout MobileNetV1 (``model = [stem, 13 dw-separable blocks, pool]``, ``fc``)."""

    head_name = "fc"

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_act(in_channels, 32, 3, 2, act=nn.ReLU)]
        channels = 32
        for out_ch, stride in _MV1_BLOCKS:
            layers.append(_dw_separable(channels, out_ch, stride))
            channels = out_ch
        layers.append(nn.AdaptiveAvgPool2d(1))  # the release's AvgPool2d(7) at 224x224; no parameters
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> ModelOutput:
        stages, preacts = [], []
        out = x
        for i, block in enumerate(self.model[:-1]):
            for layer in block[:-1]:
                out = layer(out)
            pre = out
            out = block[-1](pre)
            if i in _MV1_STAGES:
                stages.append(out)
                preacts.append(pre)
        pooled = self.model[-1](out).flatten(1)
        return ModelOutput(self.fc(pooled), pooled, stages, preacts)


@register_model("imagenet_mobilenetv1")
def imagenet_mobilenetv1(num_classes: int = 1000, in_channels: int = 3) -> ImageNetMobileNetV1:
    """mdistiller's ImageNet MobileNetV1 (the ResNet50 -> MobileNetV1 student)."""
    return ImageNetMobileNetV1(num_classes, in_channels)


__all__ = [
    "ImageNetMobileNetV1",
    "ImageNetMobileNetV2",
    "ImageNetResNet",
    "imagenet_mobilenetv1",
    "imagenet_mobilenetv2",
    "imagenet_resnet101",
    "imagenet_resnet18",
    "imagenet_resnet34",
    "imagenet_resnet50",
]
