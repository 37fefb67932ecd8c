"""OFD (Heo et al., ICCV 2019, "A comprehensive overhaul of feature distillation"): partial L2 between
connected student pre-ReLU stages and teacher pre-ReLU stages, with a per-channel margin that replaces the
teacher's negative responses (the expectation of a BN-Gaussian response given that it is negative)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import ConfigError, Strict
from kdlab.distillers._common import full_precision
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class OFDConfig(Strict):
    weight: float = Field(1e-3, ge=0, description="mdistiller's OFD.LOSS.FEAT_WEIGHT (0.001)")
    kernel_size: int = Field(1, ge=1, description="connector conv kernel (mdistiller's OFD.CONNECTOR.KERNEL_SIZE, 1)")


def _working_dtype(x: Tensor) -> Tensor:
    """Half-precision inputs are promoted to float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def ofd_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """Per-channel margin from a BN's affine parameters (σ = |γ|, μ = β), in their dtype:
    ``E[x | x < 0] = μ - σ φ(μ/σ) / Φ(-μ/σ)`` for ``x ~ N(μ, σ²)`` where ``Φ(-μ/σ) > 0.001``, else ``-3σ``.

    Computed channel by channel in Python floats like mdistiller's ``init_ofd_modules``."""
    out = []
    for g, b in zip(bn_weight.detach().cpu().tolist(), bn_bias.detach().cpu().tolist()):
        s, m = abs(g), b
        p = _normal_cdf(-m / s) if s > 0 else 0.0
        if p > 0.001:
            out.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / p + m)
        else:
            out.append(-3 * s)
    return torch.tensor(out, dtype=bn_weight.dtype, device=bn_weight.device)


def ofd_feat_loss(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """Partial L2 of one stage, summed over (C, H, W) and averaged over the batch (mdistiller's ``feat_loss``):

    ``(s - m)²·[s > m, t ≤ m] + (s - t)²·[s > t, m < t ≤ 0] + (s - t)²·[t > 0]``, ``m`` the channel's margin.
    """
    margin = margin.to(source)
    if margin.dim() == 1:
        margin = margin.view(1, -1, 1, 1)
    loss = (
        (source - margin).pow(2) * ((source > margin) & (target <= margin)).to(source.dtype)
        + (source - target).pow(2) * ((source > target) & (target > margin) & (target <= 0)).to(source.dtype)
        + (source - target).pow(2) * (target > 0).to(source.dtype)
    )
    return loss.abs().mean(dim=0).sum()


def ofd_loss(connected: list[Tensor], teacher_preacts: list[Tensor], margins: list[Tensor]) -> Tensor:
    """Sum over the ``k`` stage pairs of ``feat_loss / 2^(k-1-i)`` (the deepest stage weighs 1); each teacher
    map is adaptive-average-pooled to the student map's spatial size (mdistiller's ``ofd_loss``)."""
    k = len(connected)
    total = connected[0].new_zeros(())
    for i, (s, t, m) in enumerate(zip(connected, teacher_preacts, margins)):
        t = F.adaptive_avg_pool2d(t.detach(), s.shape[-2:])
        total = total + ofd_feat_loss(s, t, m) / 2 ** (k - i - 1)
    return total


def teacher_bns_before_relu(teacher: nn.Module) -> list[nn.BatchNorm2d]:
    """The BN layers whose statistics give the margins of ``preacts[1:]`` (mdistiller's ``get_bn_before_relu``)."""
    from kdlab.models.mobilenetv2 import MobileNetV2
    from kdlab.models.resnet import CifarResNet
    from kdlab.models.resnetv2 import Bottleneck, ResNetV2
    from kdlab.models.vgg import VGG
    from kdlab.models.wrn import WideResNet

    if isinstance(teacher, (CifarResNet, ResNetV2)):
        layers = [teacher.layer1, teacher.layer2, teacher.layer3] + ([teacher.layer4] if hasattr(teacher, "layer4") else [])
        return [layer[-1].bn3 if isinstance(layer[-1], Bottleneck) else layer[-1].bn2 for layer in layers]
    if isinstance(teacher, WideResNet):
        return [teacher.block2.layer[0].bn1, teacher.block3.layer[0].bn1, teacher.bn1]
    if isinstance(teacher, VGG):
        return [teacher.block1[-1], teacher.block2[-1], teacher.block3[-1], teacher.block4[-1]]
    if isinstance(teacher, MobileNetV2):
        return [teacher.blocks[g][-1].conv[-1] for g in (1, 2, 4, 6)]
    raise ConfigError(f"distill.ofd: a {type(teacher).__name__} teacher is not supported (OFD's margins need the BN "
                      "before each stage's last ReLU; mdistiller defines them for ResNet, WRN, VGG and MobileNetV2 "
                      "teachers, not ShuffleNet)")


def _connector(s_channels: int, t_channels: int, kernel_size: int) -> nn.Sequential:
    conv = nn.Conv2d(s_channels, t_channels, kernel_size, stride=1, padding=(kernel_size - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channels)))
    bn = nn.BatchNorm2d(t_channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


class OFD(DistillLoss):
    """Config: ``distill.ofd.weight`` (0.001), ``distill.ofd.kernel_size`` (1).

    Pairs ``preacts[1:]`` of both networks; with unequal counts the last ``min`` of each (and of the teacher's
    margins). One conv-BN connector per pair maps the student's channels to the teacher's.
    """

    def __init__(self, cfg: OFDConfig, ctx: DistillContext):
        super().__init__()
        if ctx.teacher is None:
            raise ConfigError("distill.ofd needs the teacher network in DistillContext.teacher (for its BN margins)")
        s_shapes, t_shapes = ctx.student_probe.stage_shapes[1:], ctx.teacher_probe.stage_shapes[1:]
        bns = teacher_bns_before_relu(ctx.teacher)
        if len(bns) != len(t_shapes) or any(bn.num_features != sh[0] for bn, sh in zip(bns, t_shapes)):
            raise ConfigError(f"distill.ofd: the teacher's BN layers {[bn.num_features for bn in bns]} do not match "
                              f"its stage channels {[sh[0] for sh in t_shapes]}")
        self.k = min(len(s_shapes), len(t_shapes))
        if self.k < 1:
            raise ConfigError("distill.ofd needs networks with at least one stage after the stem")
        self.weight = cfg.weight
        self.connectors = nn.ModuleList(
            _connector(cs[0], ct[0], cfg.kernel_size) for cs, ct in zip(s_shapes[-self.k:], t_shapes[-self.k:])
        )
        for i, bn in enumerate(bns[-self.k:]):  # fixed by the frozen teacher: recomputed, never checkpointed
            self.register_buffer(f"margin{i}", ofd_margin(bn.weight, bn.bias), persistent=False)

    @property
    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{i}") for i in range(self.k)]

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        k = self.k
        with full_precision(s.logits):
            feats = [conn(_working_dtype(f)) for conn, f in zip(self.connectors, s.preacts[-k:])]
            targets = [_working_dtype(f) for f in t.preacts[-k:]]
            return {"ofd": self.weight * ofd_loss(feats, targets, self.margins)}


KNOBS = (
    knob("ofd.weight", "distill.ofd.weight", "float",
         ["ofd weight", "ofd loss weight", "overhaul feature distillation weight", "weight of the ofd loss"],
         "weight of OFD's partial L2 feature loss (0.001)", off_value=0.0, requires="distill.methods~ofd"),
    knob("ofd.kernel_size", "distill.ofd.kernel_size", "int", ["ofd connector kernel", "ofd kernel size"],
         "kernel size of OFD's conv-BN connectors (1)", requires="distill.methods~ofd"),
)

register(MethodSpec(
    name="ofd", role="distiller", config=OFDConfig, build=OFD, knobs=KNOBS,
    summary="Heo et al., ICCV 2019: partial L2 on pre-ReLU stages with margins from the teacher's BN statistics",
    phrases=('ofd', 'overhaul of feature distillation', 'overhaul feature distillation'),
    list_aliases=('ofd', 'overhaul of feature distillation', 'ofd loss'),
))
