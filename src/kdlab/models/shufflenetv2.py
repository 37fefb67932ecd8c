"""ShuffleNet V2 1.0x for CIFAR (Ma et al., ECCV 2018), as used in the KD literature.

RepDistiller's ``ShuffleV2``: a 1x1 stem to 24 channels (no stride, no max-pool), three stages of
one stride-2 down-sampling unit followed by 3 / 7 / 3 basic units with widths 116 / 232 / 464, a
1x1 conv to 1024 channels + BN + ReLU, global pool, ``linear``.

* Basic unit: split channels in half; the second half goes 1x1 conv-BN-ReLU -> 3x3 depthwise
  conv-BN -> 1x1 conv-BN-ReLU; concatenate with the untouched half; shuffle (2 groups).
* Down unit: left branch 3x3/2 depthwise conv-BN -> 1x1 conv-BN-ReLU; right branch 1x1 conv-BN-ReLU
  -> 3x3/2 depthwise conv-BN -> 1x1 conv-BN-ReLU; concatenate; shuffle.

State-dict layout (identical to RepDistiller ``models/ShuffleNetv2.py``)::

    conv1.weight, bn1.*
    layer{s}.0.conv{1..5}.weight, layer{s}.0.bn{1..5}.*      down unit
    layer{s}.{i>0}.conv{1..3}.weight, layer{s}.{i}.bn{1..3}.*  basic units
    conv2.weight, bn2.*, linear.weight, linear.bias

Features: ``stages = [stem, layer1, layer2, layer3]`` (RepDistiller's choice; the 1x1 head conv is
not a stage) and ``preacts`` the same maps before their last ReLU. Deviation: RepDistiller returns
the last unit's pre-activation *before* the channel shuffle, so its channels do not line up with
the stage; here the same shuffle is applied, so ``relu(preacts[i]) == stages[i]`` channel by channel.
For the stem ``preacts[0]`` is the ``bn1`` output. Final pool is adaptive (released:
``avg_pool2d(4)`` on the 4x4 map of a 32x32 input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models._common import Stage, ZooModel, channel_shuffle, conv1x1, global_pool
from kdlab.models.base import ModelOutput, register_model

STEM_WIDTH = 24


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False)


class BasicUnit(nn.Module):
    """Channel-split unit; ``forward`` returns ``(out, preact)`` both shuffled."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = conv1x1(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = _depthwise(half, 1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = conv1x1(half, half)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        keep, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        pre = self.bn3(self.conv3(out))
        out = channel_shuffle(torch.cat([keep, F.relu(pre)], 1), 2)
        return out, channel_shuffle(torch.cat([keep, pre], 1), 2)


class DownUnit(nn.Module):
    """Stride-2 unit with two branches; ``forward`` returns ``(out, preact)`` both shuffled."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left branch
        self.conv1 = _depthwise(in_channels, 2)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = conv1x1(in_channels, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch
        self.conv3 = conv1x1(in_channels, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _depthwise(mid, 2)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = conv1x1(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        left = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn5(self.conv5(self.bn4(self.conv4(right))))
        pre = channel_shuffle(torch.cat([left, right], 1), 2)
        return F.relu(pre), pre


class ShuffleNetV2(ZooModel):
    """ShuffleNet V2 with stage widths ``widths[:3]``, head width ``widths[3]``."""

    head_name = "linear"

    def __init__(self, widths: tuple[int, int, int, int], num_blocks: tuple[int, int, int], num_classes: int,
                 in_channels: int = 3):
        super().__init__()
        self.conv1 = conv1x1(in_channels, STEM_WIDTH)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        in_ch = STEM_WIDTH
        stages = []
        for width, n in zip(widths[:3], num_blocks, strict=True):
            stages.append(Stage(DownUnit(in_ch, width), *(BasicUnit(width) for _ in range(n))))
            in_ch = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = conv1x1(widths[2], widths[3])
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        pre0 = self.bn1(self.conv1(x))
        f0 = F.relu(pre0)
        f1, pre1 = self.layer1(f0)
        f2, pre2 = self.layer2(f1)
        f3, pre3 = self.layer3(f2)
        pooled = global_pool(F.relu(self.bn2(self.conv2(f3))))
        return ModelOutput(self.linear(pooled), pooled, [f0, f1, f2, f3], [pre0, pre1, pre2, pre3])


@register_model("ShuffleV2")
def shufflev2(num_classes: int, in_channels: int = 3) -> ShuffleNetV2:
    """RepDistiller ``ShuffleV2`` (net size 1.0x): widths 116/232/464, head 1024, 3/7/3 units."""
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes, in_channels)
