"""CIFAR VGG with BatchNorm (Simonyan & Zisserman 2015), fully-connected layers removed.

Five conv blocks (3x3 conv with bias + BN, ReLU between convs) separated by 2x2 max-pools, global
average pool, one ``Linear(512, num_classes)``. ``vgg8`` is the 1-1-1-1-1 configuration used as a
student in CRD; vgg11/13/16/19 are configurations A/B/D/E. Registered under the plain names
(``vgg13``), which RepDistiller maps to its ``vgg13_bn`` builders.

State-dict layout (identical to RepDistiller ``models/vgg.py`` with ``batch_norm=True``): each block
is an ``nn.Sequential`` of ``conv, bn, relu, conv, bn, ...`` without the trailing ReLU, so keys are
``block{b}.{3j}.weight/bias`` (conv ``j``) and ``block{b}.{3j+1}.*`` (its BN), then
``classifier.weight/bias``. The pools (``pool0`` ... ``pool4``) have no parameters.

Pooling rule (documented deviation for small inputs): ``pool0``-``pool2`` halve the map unless it
is already 1 pixel high or wide, in which case they are skipped (a 2x2 pool would produce an empty
map). ``pool3`` is applied only when the map entering it is larger than 4x4 -- this reproduces
RepDistiller exactly for its two input sizes (skipped at 32x32, applied at 64x64, where it tests
``h == 64``) and generalises to other sizes. 8x8 inputs run 8 -> 4 -> 2 -> 1 -> 1. ``pool4`` is a
global average pool, as released.

Features: ``stages = [relu(block0), ..., relu(block4)]``; ``preacts`` the BN outputs before those
ReLUs (RepDistiller repeats the post-ReLU map for block0).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models._common import ZooModel, init_conv_bn
from kdlab.models.base import ModelOutput, register_model

# Output widths of the convs in each of the five blocks.
CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _make_block(widths: list[int], in_channels: int) -> nn.Sequential:
    """conv-BN(-ReLU-conv-BN)*: the block ends on a BN, its ReLU is applied by the model."""
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        if i > 0:
            layers.append(nn.ReLU(inplace=True))
        layers += [nn.Conv2d(in_channels, w, kernel_size=3, padding=1), nn.BatchNorm2d(w)]
        in_channels = w
    return nn.Sequential(*layers)


def _halve(pool: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2x2 max-pool unless the map is already a single row or column."""
    return pool(x) if min(x.shape[-2:]) >= 2 else x


class VGG(ZooModel):
    """VGG-BN for small images; ``cfg`` lists the conv widths of the five blocks."""

    head_name = "classifier"

    def __init__(self, cfg: list[list[int]], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.block0 = _make_block(cfg[0], in_channels)
        self.block1 = _make_block(cfg[1], cfg[0][-1])
        self.block2 = _make_block(cfg[2], cfg[1][-1])
        self.block3 = _make_block(cfg[3], cfg[2][-1])
        self.block4 = _make_block(cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        init_conv_bn(self, linear_std=0.01)

    def forward(self, x: Tensor) -> ModelOutput:
        pre0 = self.block0(x)
        f0 = F.relu(pre0)
        pre1 = self.block1(_halve(self.pool0, f0))
        f1 = F.relu(pre1)
        pre2 = self.block2(_halve(self.pool1, f1))
        f2 = F.relu(pre2)
        pre3 = self.block3(_halve(self.pool2, f2))
        f3 = F.relu(pre3)
        x = self.pool3(f3) if min(f3.shape[-2:]) > 4 else f3  # see the module docstring
        pre4 = self.block4(x)
        f4 = F.relu(pre4)
        pooled = self.pool4(f4).flatten(1)
        return ModelOutput(self.classifier(pooled), pooled, [f0, f1, f2, f3, f4], [pre0, pre1, pre2, pre3, pre4])


@register_model("vgg8")
def vgg8(num_classes: int, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg8"], num_classes, in_channels)


@register_model("vgg11")
def vgg11(num_classes: int, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg11"], num_classes, in_channels)


@register_model("vgg13")
def vgg13(num_classes: int, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg13"], num_classes, in_channels)


@register_model("vgg16")
def vgg16(num_classes: int, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg16"], num_classes, in_channels)


@register_model("vgg19")
def vgg19(num_classes: int, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg19"], num_classes, in_channels)
