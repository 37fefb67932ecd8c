"""KD (Hinton et al., 2015): KL between temperature-softened teacher and student distributions."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.config import Strict
from kdlab.distillers._common import full_precision, standardize_logits, wide
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import KD_TEMPERATURE, MethodSpec, knob, register


class KDConfig(Strict):
    weight: float | None = Field(None, ge=0, description="None = 0.9 when KD is the only method, else 1 "
                                 "(with logit_std: logit_std_weight)")
    T: float = Field(4.0, gt=0)
    logit_std: bool = Field(False, description="logit standardization (Sun et al., CVPR 2024): z-score the "
                            "student and teacher logits per sample before the temperature softmax")
    logit_std_T: float = Field(2.0, gt=0, description="the temperature used instead of T when logit_std is on "
                               "(the reference's --base-temp 2)")
    logit_std_weight: float = Field(9.0, ge=0, description="the weight an unset `weight` resolves to when "
                                    "logit_std is on (the reference's KD_WEIGHT 9)")


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float | Tensor = 4.0,
            standardize: bool = False) -> Tensor:
    """``T² · Σ_i KL(softmax(t_i/T) ‖ softmax(s_i/T)) / B`` (RepDistiller's DistillKL reduction).

    ``standardize``: z-score both logits per sample first (:func:`standardize_logits`, logit
    standardization). ``T`` may be a tensor (CTKD's learnable temperature): the gradient reaches it
    through the softmaxes and the T² factor.
    """
    with full_precision(student_logits):
        s, t = wide(student_logits), wide(teacher_logits)
        if standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        if isinstance(T, Tensor):  # a learnable temperature computes in the logits' dtype (grad flows through)
            T = T.to(s.dtype)
        log_ps = F.log_softmax(s / T, dim=1)
        log_pt = F.log_softmax(t / T, dim=1)
        kl = F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)
        return kl * (T * T) / student_logits.shape[0]


class KD(DistillLoss):
    """Config: ``distill.kd.T``, ``distill.kd.weight`` (None resolves to 1 here; the composite resolves it
    with ``_resolve`` below first)."""

    def __init__(self, cfg: KDConfig, ctx: DistillContext):
        super().__init__()
        self.standardize = cfg.logit_std
        self.T = cfg.logit_std_T if cfg.logit_std else cfg.T
        default = cfg.logit_std_weight if cfg.logit_std else 1.0
        self.weight = default if cfg.weight is None else cfg.weight

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        return {"kd": self.weight * kd_loss(s.logits, t.logits, self.T, self.standardize)}


KNOBS = (
    knob("kd.T", "distill.kd.T", "float",
       ["temperature", "kd temperature", "distillation temperature", "temperature of knowledge distillation", "temperature for distillation",
        "soft label temperature", "temperature of the soft labels", "temperature of the soft targets",
        "soft target temperature", "kd t", "logit temperature",
        "softening temperature", "temperature of the kl divergence", "student temperature"],
       "temperature T of the KD term T^2 * KL(softmax(z_t/T) || softmax(z_s/T))", typical=KD_TEMPERATURE),
    knob("kd.weight", "distill.kd.weight", "float",
       ["kd weight", "kd loss weight", "weight of the kd loss", "distillation loss weight", "weight of the distillation loss",
        "kl divergence weight", "soft label loss weight", "soft target weight", "alpha", "distillation weight",
        "weight of the soft labels", "kd coefficient"],
       "weight of the KD term (REMOVE: KD out of distill.methods)", off_value=0.0),
    knob("kd.alpha", "distill.kd.weight", "float",
       ["alpha balancing hard and soft targets", "balance between hard and soft targets", "trade off between hard and soft targets",
        "balance between cross entropy and kd", "trade off between kd and cross entropy", "hinton alpha",
        "mixing weight of soft and hard targets", "proportion of the soft target loss", "alpha between kd and ce"],
       "Hinton's alpha: KD weight alpha and CE weight 1 - alpha together (kd.weight alone leaves the CE weight)",
       also=("distill.ce_weight",), typical=(0.0, 1.0),
       to_overrides=lambda a: {"distill.kd.weight": a, "distill.ce_weight": float(f"{1.0 - a:.12g}")}),
    knob("kd.logit_std", "distill.kd.logit_std", "bool",
       ["logit standardization", "kd logit standardization", "logit standardization kd", "z score logit standardization",
        "z score of the logits", "logit z score", "standardized logits", "ls kd", "lskd"],
       "logit standardization on KD (Sun et al. 2024): z-score both logits per sample, T -> kd.logit_std_T, "
       "unset weight -> kd.logit_std_weight", off_value=False, on_value=True),
    knob("kd.logit_std_T", "distill.kd.logit_std_T", "float",
       ["logit standardization temperature", "logit standardization base temperature", "kd logit std temperature"],
       "base temperature of KD with logit standardization (2)", requires="distill.kd.logit_std=True"),
    knob("kd.logit_std_weight", "distill.kd.logit_std_weight", "float",
       ["logit standardization kd weight", "kd weight with logit standardization", "kd logit std weight"],
       "KD weight with logit standardization when distill.kd.weight is unset (9)", requires="distill.kd.logit_std=True"),
)

def _resolve(block: KDConfig, methods: list[str]) -> KDConfig:
    """An unset weight is 0.9 when KD is the only method (RepDistiller's ``-a 0.9``), else 1; with logit
    standardization it is ``logit_std_weight`` (9, the reference's KD_WEIGHT) whatever the methods."""
    if block.weight is not None:
        return block
    if block.logit_std:
        return block.model_copy(update={"weight": block.logit_std_weight})
    return block.model_copy(update={"weight": 0.9 if methods == ["kd"] else 1.0})


register(MethodSpec(
    name="kd", role="distiller", config=KDConfig, build=KD, knobs=KNOBS,
    solo_ce_weight=0.1, resolve_block=_resolve,  # RepDistiller's -r 0.1 -a 0.9 for KD alone
    summary="Hinton et al., 2015: T²·KL between softened teacher and student distributions",
    phrases=('kd', 'vanilla kd', 'hinton kd', 'knowledge distillation loss', 'logit distillation', 'kl divergence loss', 'soft label distillation'),
    terms={"kd": ("kd",)},
    list_aliases=('knowledge distillation',),
))
