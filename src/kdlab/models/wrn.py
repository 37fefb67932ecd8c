"""Wide Residual Networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: a 3x3 stem to 16 channels, then three groups of ``n = (d - 4) / 6`` pre-activation
blocks (BN-ReLU-conv-BN-ReLU-conv) of widths ``16k, 32k, 64k``, a final BN-ReLU, global pool and
``fc``. A block whose width changes has a 1x1 ``convShortcut`` applied to the *activated* input.

State-dict layout (identical to RepDistiller ``models/wrn.py``)::

    conv1.weight
    block{1,2,3}.layer.{i}.bn1.*, .conv1.weight, .bn2.*, .conv2.weight, [.convShortcut.weight]
    bn1.*, fc.weight, fc.bias

Features follow RepDistiller's ``is_feat`` list: ``stages = [conv1, block1, block2, block3]``
outputs. WRN is pre-activation, so these are *raw* residual sums (no ReLU at a stage boundary);
``preacts`` are the BN outputs that feed the next ReLU (``block{s+1}.layer.0.bn1`` of the stage,
and the final ``bn1`` for block3), exactly what RepDistiller's ``preact=True`` returns for stages
1-3. They are taken from the real forward pass, so BN statistics are updated only once (RepDistiller
re-applies those BNs, which updates running stats a second time in train mode). For the stem,
``preacts[0]`` is ``block1.layer.0.bn1(stem)`` by the same rule (RepDistiller repeats the stem).
``pooled`` is the global pool of ``relu(bn1(block3))``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models._common import ZooModel, conv1x1, conv3x3, global_pool, init_conv_bn
from kdlab.models.base import ModelOutput, register_model


class WideBasic(nn.Module):
    """Pre-activation basic block. ``forward`` returns ``(out, bn1(x))``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = conv3x3(out_planes, out_planes)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        # As released: a projection only when the width changes (stride alone never changes it here).
        self.convShortcut = None if self.equal_in_out else conv1x1(in_planes, out_planes, stride)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.bn1(x)
        act = F.relu(pre)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return out + shortcut, pre


class NetworkBlock(nn.Module):
    """A group of ``WideBasic`` blocks held in ``.layer`` (the released key layout).

    ``forward`` returns ``(out, preact_of_input)`` where the second item is the first block's
    ``bn1`` applied to the group's input, i.e. the pre-activation of the previous stage.
    """

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        blocks = [WideBasic(in_planes, out_planes, stride, drop_rate)]
        blocks += [WideBasic(out_planes, out_planes, 1, drop_rate) for _ in range(n - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, input_preact = self.layer[0](x)
        for block in self.layer[1:]:
            x, _ = block(x)
        return x, input_preact


class WideResNet(ZooModel):
    """WRN-``depth``-``widen_factor`` for 32x32-style inputs (any size works, pooling is adaptive)."""

    head_name = "fc"

    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_channels: int = 3, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = conv3x3(in_channels, widths[0])
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self, zero_linear_bias=True)

    def forward(self, x: Tensor) -> ModelOutput:
        f0 = self.conv1(x)
        f1, pre0 = self.block1(f0)
        f2, pre1 = self.block2(f1)
        f3, pre2 = self.block3(f2)
        pre3 = self.bn1(f3)
        pooled = global_pool(F.relu(pre3))
        return ModelOutput(self.fc(pooled), pooled, [f0, f1, f2, f3], [pre0, pre1, pre2, pre3])


@register_model("wrn_16_1")
def wrn_16_1(num_classes: int, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    return WideResNet(16, 1, num_classes, in_channels, drop_rate)


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    return WideResNet(16, 2, num_classes, in_channels, drop_rate)


@register_model("wrn_40_1")
def wrn_40_1(num_classes: int, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    return WideResNet(40, 1, num_classes, in_channels, drop_rate)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    return WideResNet(40, 2, num_classes, in_channels, drop_rate)
