"""KDSVD (Lee et al., ECCV 2018): self-supervised KD with singular value decomposition.

RepDistiller's ``KDSVD`` (k = 1) on ``feat[1:-1]`` (every stage after the stem): per stage, the leading
right singular vectors of the ``(HW, C)`` feature matrix, the student's aligned to the teacher's by sign,
scaled by the teacher's (normalised) singular values; RBF kernels between the vectors of consecutive
stages are matched with a summed squared error divided by the batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.config import ConfigError, Strict
from kdlab.distillers._common import full_precision
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class KDSVDConfig(Strict):
    weight: float = Field(1.0, ge=0, description="beta (RepDistiller ships no KDSVD command; 1)")
    k: int = Field(1, ge=1, description="teacher singular vectors kept (the student keeps k + 3)")


def _finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _svd(feat: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Singular values and right singular vectors of ``feat`` as ``(B, HW, C)``, the first ``n`` kept and
    each L2-normalised (the values across ``n``, each vector across ``C``); non-finite entries zeroed."""
    b, c, h, w = feat.shape
    x = feat.reshape(b, c, h * w).transpose(-2, -1)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    s, v = _finite(s), _finite(vh.transpose(-2, -1))
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def _align(a: Tensor, b: Tensor) -> Tensor:
    """For each column of ``b`` the column of ``a`` with the largest |cosine|, times that cosine's sign."""
    cosine = a.transpose(-2, -1) @ b
    best = cosine.abs().amax(1, keepdim=True)
    mask = torch.where(best == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine))
    return a @ mask


def kdsvd_loss(g_s: list[Tensor], g_t: list[Tensor], k: int = 1) -> Tensor:
    """``Σ_{i≥1} Σ (rbf(v_s^i, v_s^{i-1}) - rbf(v_t^i, v_t^{i-1}))² / B`` with
    ``rbf(x, y)[b, c, c', j] = exp(-(x[b, c, j] - y[b, c', j])² / 8)``; the teacher side carries no gradient."""
    with full_precision(g_s[0]):
        dtype = torch.float32 if g_s[0].dtype in (torch.float16, torch.bfloat16) else g_s[0].dtype
        losses, prev = [], None
        for f_s, f_t in zip(g_s, g_t):
            with torch.no_grad():
                s_t, v_t = _svd(f_t.detach().to(dtype), k)
            _, v_s = _svd(f_s.to(dtype), k + 3)
            v_s = _align(v_s, v_t)
            v_t, v_s = v_t * s_t.unsqueeze(1), v_s * s_t.unsqueeze(1)
            if prev is not None:
                s_rbf = torch.exp(-(v_s.unsqueeze(2) - prev[0].unsqueeze(1)).pow(2) / 8)
                t_rbf = torch.exp(-(v_t.unsqueeze(2) - prev[1].unsqueeze(1)).pow(2) / 8)
                losses.append(_finite((s_rbf - t_rbf).pow(2)).sum())
            prev = (v_s, v_t)
        if not losses:
            raise ValueError("kdsvd_loss needs at least two stages")
        bsz = g_s[0].shape[0]
        return sum(losses[1:], losses[0]) / bsz


class KDSVD(DistillLoss):
    """Config: ``distill.kdsvd.weight`` (1), ``distill.kdsvd.k`` (1). Pairs ``stages[1:]``; needs the same
    number of stages with equal channels in both networks (RepDistiller's sign alignment multiplies the
    student's and teacher's singular vectors, so channels must agree)."""

    def __init__(self, cfg: KDSVDConfig, ctx: DistillContext):
        super().__init__()
        s_c = [c for c, *_ in ctx.student_probe.stage_shapes[1:]]
        t_c = [c for c, *_ in ctx.teacher_probe.stage_shapes[1:]]
        if s_c != t_c or len(s_c) < 2:
            raise ConfigError(f"distill.kdsvd needs at least two stages after the stem with equal channels in "
                              f"student and teacher (student {s_c}, teacher {t_c}); RepDistiller's KDSVD "
                              f"supports only such pairs")
        self.weight, self.k = cfg.weight, cfg.k

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        return {"kdsvd": self.weight * kdsvd_loss(list(s.stages[1:]), list(t.stages[1:]), self.k)}


KNOBS = (
    knob("kdsvd.weight", "distill.kdsvd.weight", "float", ["kdsvd weight", "kdsvd loss weight", "svd distillation weight"],
         "weight of the KDSVD loss", off_value=0.0, requires="distill.methods~kdsvd"),
)

register(MethodSpec(
    name="kdsvd", role="distiller", config=KDSVDConfig, build=KDSVD, knobs=KNOBS,
    summary="Lee et al., ECCV 2018: RBF relations of leading singular vectors of consecutive stages",
    phrases=('kdsvd', 'kd svd', 'svd distillation', 'singular value decomposition distillation'),
    list_aliases=('kdsvd', 'svd distillation'),
))
