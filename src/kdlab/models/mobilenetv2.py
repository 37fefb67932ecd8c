"""MobileNetV2 for CIFAR (Sandler et al., CVPR 2018), the half-width variant of the KD literature.

This is RepDistiller's ``mobile_half`` (mdistiller's ``MobileNetV2``): expansion ``T = 6``, width
multiplier 0.5, a stride-2 3x3 stem, seven groups of inverted residual blocks
(``t, c, n, s`` = ``1,16,1,1 / T,24,2,1 / T,32,3,2 / T,64,4,2 / T,96,3,1 / T,160,3,2 / T,320,1,1``,
channels scaled by 0.5), a 1x1 conv to 1280 channels (not scaled below width 1), global pool and a
linear classifier wrapped in a one-element ``nn.Sequential``.

State-dict layout (identical to RepDistiller ``models/mobilenetv2.py``)::

    conv1.0.weight, conv1.1.*                         stem conv + BN
    blocks.{g}.{i}.conv.{0,1,3,4,6,7}.*               pw conv/BN, dw conv/BN, pw-linear conv/BN
    conv2.0.weight, conv2.1.*                         1x1 head conv + BN
    classifier.0.weight, classifier.0.bias

Note every inverted residual keeps its 1x1 expansion conv, also where ``t = 1``.

Features (RepDistiller's choice): ``stages = [stem, blocks[1], blocks[2], blocks[4], blocks[6]]``.
Block outputs are linear bottlenecks (no ReLU follows them), so ``preacts`` equal ``stages`` there;
for the stem ``preacts[0]`` is the BN output before its ReLU. ``pooled`` is the global pool of
``conv2``'s output (RepDistiller uses ``AvgPool2d(2)`` on the 2x2 map of a 32x32 input, which is the
same thing; here the pool is adaptive so 8x8 and 64x64 inputs work).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models._common import ZooModel, global_pool, init_conv_bn
from kdlab.models.base import ModelOutput, register_model

# (expansion, channels, repeats, first stride); ``None`` expansion means "use T".
_SETTING = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
# Indices of ``blocks`` whose output is a distillation stage.
_STAGE_GROUPS = (1, 2, 4, 6)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; identity skip when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(ZooModel):
    """CIFAR MobileNetV2 with expansion ``expansion`` and width multiplier ``width_mult``."""

    head_name = "classifier"

    def __init__(self, num_classes: int, in_channels: int = 3, expansion: int = 6, width_mult: float = 0.5):
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTING:
            out_ch = int(c * width_mult)
            group = []
            for i in range(n):
                group.append(InvertedResidual(channels, out_ch, s if i == 0 else 1, expansion if t is None else t))
                channels = out_ch
            self.blocks.append(nn.Sequential(*group))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        init_conv_bn(self, linear_std=0.01)

    def forward(self, x: Tensor) -> ModelOutput:
        pre0 = self.conv1[1](self.conv1[0](x))
        out = F.relu(pre0)
        stages = [out]
        for g, group in enumerate(self.blocks):
            out = group(out)
            if g in _STAGE_GROUPS:
                stages.append(out)
        pooled = global_pool(self.conv2(out))
        return ModelOutput(self.classifier(pooled), pooled, stages, [pre0, *stages[1:]])


@register_model("MobileNetV2")
def mobilenetv2(num_classes: int, in_channels: int = 3) -> MobileNetV2:
    """RepDistiller ``mobile_half``: T=6, width 0.5."""
    return MobileNetV2(num_classes, in_channels, expansion=6, width_mult=0.5)
