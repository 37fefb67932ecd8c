"""ShuffleNet V1 for CIFAR (Zhang et al., CVPR 2018), groups g = 3, as in the KD literature.

RepDistiller's ``ShuffleV1``: a 1x1 stem to 24 channels (no stride, no max-pool), three stages of
4 / 8 / 4 bottlenecks with output widths 240 / 480 / 960, global pool, ``linear``. Each stage opens
with a stride-2 unit whose residual branch outputs ``out - in`` channels and is concatenated with a
3x3/2 average-pooled shortcut; the other units add an identity shortcut. A bottleneck is
grouped 1x1 conv -> channel shuffle -> 3x3 depthwise conv -> grouped 1x1 conv, with a quarter of
the output width in the middle. The very first unit (input = the 24-channel stem) uses an
ungrouped first 1x1 conv, as released.

State-dict layout (identical to RepDistiller ``models/ShuffleNetv1.py``)::

    conv1.weight, bn1.*
    layer{1,2,3}.{i}.conv1.weight, .bn1.*, .conv2.weight, .bn2.*, .conv3.weight, .bn3.*
    linear.weight, linear.bias

Features: ``stages = [stem, layer1, layer2, layer3]`` after ReLU; ``preacts`` before the last ReLU
(for the stem the ``bn1`` output, where RepDistiller repeats the post-ReLU stem). Final pool is
adaptive (released: ``avg_pool2d(4)`` on the 4x4 map of a 32x32 input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models._common import Stage, ZooModel, channel_shuffle, conv1x1, global_pool
from kdlab.models.base import ModelOutput, register_model

STEM_WIDTH = 24


class ShuffleUnit(nn.Module):
    """ShuffleNet V1 unit; ``forward`` returns ``(relu(y), y)``.

    ``stride == 2``: ``y = cat(branch(x), avgpool(x))``; otherwise ``y = branch(x) + x``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        mid = out_planes // 4
        self.stride = stride
        self.first_groups = first_groups
        self.conv1 = conv1x1(in_planes, mid, groups=first_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, out_planes, groups=groups)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            preact = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        else:
            preact = out + x
        return F.relu(preact), preact


class ShuffleNetV1(ZooModel):
    """ShuffleNet V1 with stage widths ``out_planes`` and ``num_blocks`` units per stage."""

    head_name = "linear"

    def __init__(self, out_planes: tuple[int, int, int], num_blocks: tuple[int, int, int], groups: int,
                 num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = conv1x1(in_channels, STEM_WIDTH)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        in_planes = STEM_WIDTH
        stages = []
        for width, n in zip(out_planes, num_blocks, strict=True):
            units = []
            for i in range(n):
                if i == 0:  # stride 2; branch width leaves room for the concatenated shortcut
                    first_groups = 1 if in_planes == STEM_WIDTH else groups
                    units.append(ShuffleUnit(in_planes, width - in_planes, 2, groups, first_groups))
                else:
                    units.append(ShuffleUnit(width, width, 1, groups, groups))
            stages.append(Stage(*units))
            in_planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(out_planes[2], num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        pre0 = self.bn1(self.conv1(x))
        f0 = F.relu(pre0)
        f1, pre1 = self.layer1(f0)
        f2, pre2 = self.layer2(f1)
        f3, pre3 = self.layer3(f2)
        pooled = global_pool(f3)
        return ModelOutput(self.linear(pooled), pooled, [f0, f1, f2, f3], [pre0, pre1, pre2, pre3])


@register_model("ShuffleV1")
def shufflev1(num_classes: int, in_channels: int = 3) -> ShuffleNetV1:
    """RepDistiller ``ShuffleV1``: widths 240/480/960, 4/8/4 units, g = 3."""
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, in_channels)
