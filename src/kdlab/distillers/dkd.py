"""DKD (Zhao et al., CVPR 2022): KD decoupled into target-class (TCKD) and non-target (NCKD) parts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.config import Strict
from kdlab.distillers._common import full_precision, standardize_logits, wide
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import KD_TEMPERATURE, MethodSpec, knob, register


class DKDConfig(Strict):
    weight: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    T: float = Field(4.0, gt=0)
    warmup: int = Field(20, ge=0, description="epochs of linear warm-up of the DKD weight")
    logit_std: bool = Field(False, description="logit standardization (Sun et al., CVPR 2024): z-score the "
                            "logits per sample before the temperature softmax")
    logit_std_T: float = Field(2.0, gt=0, description="the temperature used instead of T when logit_std is on "
                               "(the reference's --base-temp 2)")
    logit_std_weight: float = Field(9.0, ge=0, description="with logit_std, alpha and beta are multiplied by "
                                    "this (the reference's --kd-weight 9: ALPHA = 1·9, BETA = 8·9)")


def _binary(p: Tensor, gt: Tensor) -> Tensor:
    """``[p_target, Σ_{k≠target} p_k]`` per row, shape ``(B, 2)``."""
    return torch.stack([(p * gt).sum(1), (p * ~gt).sum(1)], dim=1)


def dkd_parts(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, T: float = 4.0,
              standardize: bool = False) -> tuple[Tensor, Tensor]:
    """Unweighted ``(TCKD, NCKD)``, each ``T² · Σ KL / B`` (mdistiller's reduction).

    TCKD is the KL between the binary (target, rest) distributions; NCKD the KL between the softmaxes
    over the non-target classes only. ``standardize``: z-score both logits per sample first
    (logit standardization, :func:`standardize_logits`), then divide by ``T``.
    """
    with full_precision(student_logits):
        s, t = wide(student_logits), wide(teacher_logits)
        if standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        s, t = s / T, t / T
        b, c = s.shape
        gt = F.one_hot(labels, c).bool()
        b_s = _binary(F.softmax(s, dim=1), gt)
        b_t = _binary(F.softmax(t, dim=1), gt)
        tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * (T * T) / b
        if c > 1:
            other = ~gt
            s_nt = s[other].view(b, c - 1)
            t_nt = t[other].view(b, c - 1)
            nckd = F.kl_div(F.log_softmax(s_nt, dim=1), F.softmax(t_nt, dim=1), reduction="sum") * (T * T) / b
        else:
            nckd = s.new_zeros(())
    return tckd, nckd


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float = 1.0,
             beta: float = 8.0, T: float = 4.0, standardize: bool = False) -> Tensor:
    """``alpha · TCKD + beta · NCKD`` (mdistiller's ``dkd_loss``; its CIFAR-100 defaults α=1, β=8, T=4),
    without the warm-up ramp (:func:`dkd_warmup`)."""
    tckd, nckd = dkd_parts(student_logits, teacher_logits, labels, T, standardize)
    return alpha * tckd + beta * nckd


def dkd_warmup(progress: float, warmup: int) -> float:
    """Linear warm-up by epochs: ``min(e / warmup, 1)`` with ``e = floor(progress) + 1`` the 1-based epoch
    (mdistiller's ``min(epoch / WARMUP, 1)``, constant within an epoch); 1 when ``warmup`` is 0."""
    if warmup <= 0:
        return 1.0
    return min((math.floor(max(progress, 0.0)) + 1) / warmup, 1.0)


class DKD(DistillLoss):
    """Config: ``distill.dkd.weight`` (1), ``.alpha`` (1), ``.beta`` (8), ``.T`` (4), ``.warmup`` (20 epochs)."""

    def __init__(self, cfg: DKDConfig, ctx: DistillContext):
        super().__init__()
        self.weight, self.alpha, self.beta, self.T, self.warmup = cfg.weight, cfg.alpha, cfg.beta, cfg.T, cfg.warmup
        self.standardize = cfg.logit_std
        if cfg.logit_std:
            self.T = cfg.logit_std_T
            self.alpha, self.beta = cfg.alpha * cfg.logit_std_weight, cfg.beta * cfg.logit_std_weight

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        loss = dkd_loss(s.logits, t.logits, batch.labels, self.alpha, self.beta, self.T, self.standardize)
        return {"dkd": (self.weight * dkd_warmup(step.progress, self.warmup)) * loss}


KNOBS = (
    knob("dkd.alpha", "distill.dkd.alpha", "float", ["dkd alpha", "tckd weight", "target class knowledge distillation weight",
                                                      "tckd", "tckd term", "target class knowledge distillation"],
       "DKD weight of TCKD (REMOVE: 0, DKD without its target-class term)", off_value=0.0, requires="distill.methods~dkd"),
    knob("dkd.beta", "distill.dkd.beta", "float", ["dkd beta", "nckd weight", "non target class knowledge distillation weight",
                                                    "nckd", "nckd term", "non target class knowledge distillation"],
       "DKD weight of NCKD (REMOVE: 0, DKD without its non-target-class term)", off_value=0.0, requires="distill.methods~dkd"),
    knob("dkd.T", "distill.dkd.T", "float", ["dkd temperature"], "DKD temperature", requires="distill.methods~dkd", typical=KD_TEMPERATURE),
    knob("dkd.warmup", "distill.dkd.warmup", "int", ["dkd warmup", "dkd warm up epochs"], "epochs of DKD weight warm-up",
       requires="distill.methods~dkd"),
    knob("dkd.weight", "distill.dkd.weight", "float", ["dkd weight", "dkd loss weight"], "overall DKD weight", off_value=0.0,
       requires="distill.methods~dkd"),
    knob("dkd.logit_std", "distill.dkd.logit_std", "bool",
       ["dkd logit standardization", "logit standardization dkd", "logit standardization on dkd", "dkd z score"],
       "logit standardization on DKD (Sun et al. 2024): z-score both logits, T -> dkd.logit_std_T, "
       "alpha and beta times dkd.logit_std_weight", off_value=False, on_value=True, requires="distill.methods~dkd"),
    knob("dkd.logit_std_T", "distill.dkd.logit_std_T", "float",
       ["dkd logit standardization temperature", "dkd logit std temperature", "dkd base temperature"],
       "base temperature of DKD with logit standardization (2)", requires="distill.dkd.logit_std=True"),
    knob("dkd.logit_std_weight", "distill.dkd.logit_std_weight", "float",
       ["dkd logit standardization weight", "dkd logit std weight", "dkd kd weight with logit standardization"],
       "factor on DKD's alpha and beta with logit standardization (9)", requires="distill.dkd.logit_std=True"),
)

register(MethodSpec(
    name="dkd", role="distiller", config=DKDConfig, build=DKD, knobs=KNOBS,
    summary="Zhao et al., CVPR 2022: KD decoupled into target-class and non-target-class parts",
    phrases=('dkd', 'decoupled knowledge distillation', 'decoupled kd'),
    list_aliases=('dkd', 'decoupled knowledge distillation', 'dkd loss'),
))
