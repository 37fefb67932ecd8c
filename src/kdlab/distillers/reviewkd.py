"""ReviewKD (Chen et al., CVPR 2021, "Distilling knowledge via knowledge review"): the student's stages and
pooled feature are fused from deep to shallow by attention-based fusion (ABF) modules, and each fused level is
matched to the teacher's pre-ReLU stage of the same depth by the hierarchical context loss (HCL)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import ConfigError, Strict
from kdlab.distillers._common import full_precision
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.distillers.dkd import dkd_warmup
from kdlab.registry import MethodSpec, knob, register


class ReviewKDConfig(Strict):
    weight: float = Field(5.0, ge=0, description="mdistiller's REVIEWKD_WEIGHT for CIFAR-100 (5)")
    warmup: int = Field(20, ge=0, description="epochs of linear warm-up of the weight (mdistiller's WARMUP_EPOCHS)")
    max_mid_channel: int = Field(512, ge=1, description="ABF width: min(this, the student's pooled dim)")


def _working_dtype(x: Tensor) -> Tensor:
    """Half-precision inputs are promoted to float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def hcl_loss(fstudent: list[Tensor], fteacher: list[Tensor]) -> Tensor:
    """Hierarchical context loss (mdistiller's ``hcl_loss``), summed over levels. For one level of height h:
    ``(mse(s, t) + Σ_{l ∈ (4, 2, 1), l < h} 2^-j · mse(pool_l s, pool_l t)) / (1 + Σ 2^-j)`` where ``j`` counts
    the pooled terms used so far (1/2, 1/4, 1/8) and ``pool_l`` is an adaptive average pool to l × l."""
    total = fstudent[0].new_zeros(())
    for fs, ft in zip(fstudent, fteacher):
        h = fs.shape[2]
        loss = F.mse_loss(fs, ft)
        cnt, tot = 1.0, 1.0
        for level in (4, 2, 1):
            if level >= h:
                continue
            cnt /= 2.0
            loss = loss + F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level)) * cnt
            tot += cnt
        total = total + loss / tot
    return total


class ABF(nn.Module):
    """Attention-based fusion: 1×1 conv-BN to ``mid`` channels; if ``fuse``, a per-pixel 2-way sigmoid attention
    mixes it with the (nearest-upsampled) residual from the deeper level; the result, nearest-resized to the
    teacher's size, is the next residual and, through a 3×3 conv-BN, the level's output."""

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, 1, bias=False), nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, 3, stride=1, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channel))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channel * 2, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, (h, w), mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + residual * z[:, 1].view(n, 1, h, w)
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def review_fuse(abfs: list[ABF], feats: list[Tensor], out_sizes: list[tuple[int, int]]) -> list[Tensor]:
    """Run the ABFs from the deepest level (``feats[-1]``, the pooled feature as 1×1) to the shallowest; the
    outputs come back shallow to deep, like ``feats``. ``abfs[i]`` and ``out_sizes[i]`` belong to ``feats[i]``."""
    out, residual = abfs[-1](feats[-1], None, out_sizes[-1])
    results = [out]
    for i in range(len(feats) - 2, -1, -1):
        out, residual = abfs[i](feats[i], residual, out_sizes[i])
        results.insert(0, out)
    return results


class ReviewKD(DistillLoss):
    """Config: ``distill.reviewkd.weight`` (5), ``.warmup`` (20 epochs), ``.max_mid_channel`` (512).

    Levels: the last ``k = min(n_s, n_t) - 1`` stages of each network plus the pooled feature (mdistiller's
    CIFAR levels: ``feats[1:] + pooled`` of the student, ``preact_feats[1:] + pooled`` of the teacher). Channels
    and sizes (mdistiller's IN_CHANNELS/SHAPES/OUT_CHANNELS/OUT_SHAPES) are read from the probes.
    """

    def __init__(self, cfg: ReviewKDConfig, ctx: DistillContext):
        super().__init__()
        sp, tp = ctx.student_probe, ctx.teacher_probe
        self.k = min(len(sp.stage_shapes), len(tp.stage_shapes)) - 1
        if self.k < 1:
            raise ConfigError("distill.reviewkd needs networks with at least one stage after the stem")
        s_shapes, t_shapes = sp.stage_shapes[-self.k:], tp.stage_shapes[-self.k:]
        in_channels = [c for c, *_ in s_shapes] + [sp.pooled_dim]
        out_channels = [c for c, *_ in t_shapes] + [tp.pooled_dim]
        self.out_sizes = [tuple(sh[1:]) for sh in t_shapes] + [(1, 1)]
        mid = min(cfg.max_mid_channel, in_channels[-1])
        self.abfs = nn.ModuleList(
            ABF(ci, mid, co, i < len(in_channels) - 1) for i, (ci, co) in enumerate(zip(in_channels, out_channels))
        )
        self.weight, self.warmup = cfg.weight, cfg.warmup

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        k = self.k
        feats = list(s.stages[-k:]) + [s.pooled[:, :, None, None]]
        fused = review_fuse(list(self.abfs), feats, self.out_sizes)
        targets = list(t.preacts[-k:]) + [t.pooled[:, :, None, None]]
        with full_precision(s.logits):
            loss = hcl_loss([_working_dtype(f) for f in fused], [_working_dtype(f.detach()) for f in targets])
        return {"reviewkd": self.weight * dkd_warmup(step.progress, self.warmup) * loss}


KNOBS = (
    knob("reviewkd.weight", "distill.reviewkd.weight", "float",
         ["reviewkd weight", "review kd weight", "reviewkd loss weight", "knowledge review weight", "hcl weight"],
         "weight of ReviewKD's HCL loss (5)", off_value=0.0, requires="distill.methods~reviewkd"),
    knob("reviewkd.warmup", "distill.reviewkd.warmup", "int", ["reviewkd warmup", "reviewkd warm up epochs"],
         "epochs of ReviewKD weight warm-up (20)", requires="distill.methods~reviewkd"),
)

register(MethodSpec(
    name="reviewkd", role="distiller", config=ReviewKDConfig, build=ReviewKD, knobs=KNOBS,
    summary="Chen et al., CVPR 2021: attention-based fusion of the student's levels, hierarchical context loss",
    phrases=('reviewkd', 'review kd', 'knowledge review', 'review distillation'),
    list_aliases=('reviewkd', 'knowledge review', 'reviewkd loss'),
))
