"""CTKD (Li et al., AAAI 2023): KD at a learnable temperature trained adversarially through a gradient reversal.

Global-temperature variant of the reference (github zhengli97/CTKD, ``models/temp_global.py``,
``train_student.py``, ``helper/loops.py``):

    T   = t_start + t_end · sigmoid(θ),          θ a learnable scalar (initialised to 1)
    L   = w · T² · Σ_i KL(softmax(z_t,i / T) ‖ softmax(z_s,i / T)) / B      (KD at the current T)

θ reaches the loss through a gradient-reversal layer: identity forward, gradient multiplied by ``-λ`` backward,
so the student's optimizer (which trains θ with the student) moves T to *increase* the KD loss while the
student decreases it. λ follows the curriculum ``λ(e) = λ_max · (1 − cos(π · min(e, E) / E)) / 2`` of the
1-based epoch ``e`` (the reference's cosine decay from 0 to −1 over ``decay_loops = 10`` epochs, applied as the
reversal factor).

``temperature: instance`` is the instance-wise variant: a small MLP predicts θ_i per sample from the (detached)
student and teacher logits, ``T_i = t_start + t_end · sigmoid(θ_i)`` through the same reversal, and the loss is
the reference README's per-sample KL (``ctkd_instance_loss``). The MLP's shape is kdlab's (docs/METHODS.md).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import Strict
from kdlab.distillers._common import full_precision, wide
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.distillers.kd import kd_loss
from kdlab.registry import MethodSpec, knob, register


class CTKDConfig(Strict):
    weight: float | None = Field(None, ge=0, description="None = 0.9 when CTKD is the only method, else 1")
    t_start: float = Field(1.0, ge=0, description="T = t_start + t_end · sigmoid(θ)")
    t_end: float = Field(20.0, ge=0, description="scale of the sigmoid in T = t_start + t_end · sigmoid(θ)")
    init: float = Field(1.0, description="initial θ (T = 1 + 20·sigmoid(1) ≈ 15.62 with the defaults)")
    lambda_max: float = Field(1.0, ge=0, description="largest gradient-reversal strength λ")
    lambda_epochs: int = Field(10, ge=0, description="epochs of the cosine curriculum of λ from 0 to lambda_max "
                               "(0: λ_max from the start)")
    temperature: Literal["global", "instance"] = Field(
        "global", description="global: one learnable temperature (the reference's --mlp_name global); instance: "
                              "one per sample, predicted by a small MLP from the student and teacher logits")
    instance_hidden: int = Field(256, ge=1, description="hidden width of the instance-wise temperature MLP "
                                 "(a kdlab choice: the reference's module is not published in its repository)")


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * (-ctx.lam), None


def grad_reverse(x: Tensor, lam: float) -> Tensor:
    """Gradient-reversal layer (Ganin & Lempitsky 2015): ``x`` forward, ``-lam · grad`` backward."""
    return _GradReverse.apply(x, lam)


def ctkd_lambda(progress: float, lambda_max: float = 1.0, epochs: int = 10) -> float:
    """λ at fractional epoch ``progress``: ``λ_max · (1 − cos(π · min(e, E) / E)) / 2`` with
    ``e = floor(progress) + 1`` the 1-based epoch (constant within an epoch); ``λ_max`` when ``E`` is 0."""
    if epochs <= 0:
        return lambda_max
    e = min(math.floor(max(progress, 0.0)) + 1, epochs)
    return lambda_max * (1.0 - math.cos(math.pi * e / epochs)) / 2.0


def ctkd_temperature(theta: Tensor, t_start: float = 1.0, t_end: float = 20.0) -> Tensor:
    """``t_start + t_end · sigmoid(θ)`` (the reference's global temperature mapping)."""
    return t_start + t_end * torch.sigmoid(theta)


def ctkd_loss(student_logits: Tensor, teacher_logits: Tensor, theta: Tensor, lam: float,
              t_start: float = 1.0, t_end: float = 20.0) -> Tensor:
    """KD at ``T = ctkd_temperature(grad_reverse(θ, λ))``: the student gets KD's gradient, θ the reversed one."""
    T = ctkd_temperature(grad_reverse(theta, lam), t_start, t_end).reshape(())
    return kd_loss(student_logits, teacher_logits, T)


#: added to the teacher's probabilities in the instance-wise loss (the reference README's ``10 ** (-7)``)
INSTANCE_EPS = 1e-7


def ctkd_instance_kl(student_logits: Tensor, teacher_logits: Tensor, T: Tensor) -> Tensor:
    """The CTKD README's instance-wise KD: ``(1/B) Σ_i T_i² Σ_c q_ic (log q_ic − log p_ic)`` with
    ``p_i = softmax(z_s,i / T_i)`` and ``q_i = softmax(z_t,i / T_i) + 1e-7`` (the 1e-7 inside the log too)."""
    with full_precision(student_logits):
        s = wide(student_logits)
        t = wide(teacher_logits).to(s.dtype)
        T = T.to(s.dtype).reshape(-1, 1)
        log_p = F.log_softmax(s / T, dim=1)
        q = F.softmax(t / T, dim=1) + INSTANCE_EPS
        per_sample = (q * (q.log() - log_p)).sum(dim=1) * T.reshape(-1).pow(2)
        return per_sample.sum() / s.shape[0]


def ctkd_instance_loss(student_logits: Tensor, teacher_logits: Tensor, theta: Tensor, lam: float,
                       t_start: float = 1.0, t_end: float = 20.0) -> Tensor:
    """Instance-wise CTKD: ``T_i = ctkd_temperature(grad_reverse(θ_i, λ))`` for the ``(B,)`` predictions ``θ``,
    then :func:`ctkd_instance_kl`; the student gets the loss's gradient, ``θ`` the reversed one."""
    T = ctkd_temperature(grad_reverse(theta.reshape(-1), lam), t_start, t_end)
    return ctkd_instance_kl(student_logits, teacher_logits, T)


class InstanceTemperature(nn.Module):
    """θ_i = Linear(hidden → 1)(ReLU(Linear(2C → hidden)([z_s, z_t]))) on detached logits (kdlab's module: the
    temperature is trained through the reversal, the student never through its inputs). The output layer starts
    at weight 0 and bias ``init``, so every sample starts at the global variant's initial temperature."""

    def __init__(self, num_classes: int, hidden: int = 256, init: float = 1.0):
        super().__init__()
        self.hidden = nn.Linear(2 * num_classes, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, float(init))

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        x = torch.cat([student_logits, teacher_logits], dim=1).detach().to(self.hidden.weight.dtype)
        return self.out(torch.relu(self.hidden(x))).squeeze(1)


class CTKD(DistillLoss):
    """Config: ``distill.ctkd.weight`` (None → 0.9 alone, else 1), ``.t_start`` (1), ``.t_end`` (20),
    ``.init`` (1), ``.lambda_max`` (1), ``.lambda_epochs`` (10), ``.temperature`` (global | instance),
    ``.instance_hidden`` (256). θ (or the instance MLP) is a parameter of this term, so the student's optimizer
    trains it (with its learning rate and weight decay, as the reference's SGD over the student and the
    temperature module)."""

    def __init__(self, cfg: CTKDConfig, ctx: DistillContext):
        super().__init__()
        self.weight = 1.0 if cfg.weight is None else cfg.weight
        self.t_start, self.t_end = cfg.t_start, cfg.t_end
        self.lambda_max, self.lambda_epochs = cfg.lambda_max, cfg.lambda_epochs
        self.mode = cfg.temperature
        if self.mode == "instance":
            self.instance = InstanceTemperature(ctx.num_classes, cfg.instance_hidden, cfg.init)
        else:
            self.theta = nn.Parameter(torch.full((1,), float(cfg.init)))
        self._lam = 0.0
        self._batch_T: Tensor | None = None  # instance mode: the last batch's temperatures

    def temperature(self) -> Tensor:
        """The global temperature; in instance mode the mean temperature of the last batch."""
        if self.mode == "instance":
            if self._batch_T is None:
                return ctkd_temperature(self.instance.out.bias.detach(), self.t_start, self.t_end).reshape(())
            return self._batch_T.mean()
        return ctkd_temperature(self.theta.detach(), self.t_start, self.t_end).reshape(())

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        self._lam = ctkd_lambda(step.progress, self.lambda_max, self.lambda_epochs)
        if self.mode == "instance":
            theta = self.instance(s.logits, t.logits)
            self._batch_T = ctkd_temperature(theta.detach(), self.t_start, self.t_end)
            loss = ctkd_instance_loss(s.logits, t.logits, theta, self._lam, self.t_start, self.t_end)
        else:
            loss = ctkd_loss(s.logits, t.logits, self.theta, self._lam, self.t_start, self.t_end)
        return {"ctkd": self.weight * loss}

    def stats(self) -> dict[str, float]:
        out = {"ctkd_T": float(self.temperature()), "ctkd_lambda": self._lam}
        if self.mode == "instance" and self._batch_T is not None and self._batch_T.numel() > 1:
            out["ctkd_T_std"] = float(self._batch_T.std())
        return out


KNOBS = (
    knob("ctkd.weight", "distill.ctkd.weight", "float",
         ["ctkd weight", "ctkd loss weight", "curriculum temperature kd weight"],
         "weight of the CTKD term (REMOVE: 0)", off_value=0.0, requires="distill.methods~ctkd"),
    knob("ctkd.lambda_max", "distill.ctkd.lambda_max", "float",
         ["ctkd lambda", "ctkd gradient reversal strength", "ctkd reversal strength", "ctkd maximum lambda",
          "gradient reversal strength of ctkd", "ctkd adversarial strength"],
         "largest gradient-reversal strength λ of CTKD's temperature (REMOVE: 0, the temperature then only "
         "follows weight decay)", off_value=0.0, requires="distill.methods~ctkd"),
    knob("ctkd.lambda_epochs", "distill.ctkd.lambda_epochs", "int",
         ["ctkd curriculum epochs", "ctkd curriculum length", "ctkd decay loops", "ctkd lambda schedule length",
          "ctkd curriculum"],
         "epochs of CTKD's cosine curriculum of λ (REMOVE: 0, full strength from the start)",
         off_value=0, requires="distill.methods~ctkd"),
    knob("ctkd.t_start", "distill.ctkd.t_start", "float",
         ["ctkd minimum temperature", "ctkd t start", "ctkd temperature lower bound"],
         "lower bound of CTKD's temperature", requires="distill.methods~ctkd"),
    knob("ctkd.t_end", "distill.ctkd.t_end", "float",
         ["ctkd temperature range", "ctkd t end", "ctkd temperature scale"],
         "scale of CTKD's temperature sigmoid (T in (t_start, t_start + t_end))", requires="distill.methods~ctkd"),
    knob("ctkd.temperature", "distill.ctkd.temperature", "choice",
         ["ctkd temperature module", "ctkd temperature type", "global or instance temperature",
          "ctkd temperature granularity", "instance wise temperature", "temperature module type"],
         "CTKD's temperature: one global learnable value, or one per sample predicted by a small MLP",
         requires="distill.methods~ctkd",
         choices={"global": ("global", "global temperature", "single temperature", "one temperature"),
                  "instance": ("instance", "instance wise", "per instance", "per sample", "instance wise temperature",
                               "sample wise")}),
    knob("ctkd.init", "distill.ctkd.init", "float",
         ["ctkd initial temperature parameter", "ctkd temperature init"],
         "initial θ of CTKD's temperature", requires="distill.methods~ctkd"),
)


def _resolve(block: CTKDConfig, methods: list[str]) -> CTKDConfig:
    """An unset weight is 0.9 when CTKD is the only method (the reference's ``-r 0.1 -a 0.9``), else 1."""
    if block.weight is not None:
        return block
    return block.model_copy(update={"weight": 0.9 if methods == ["ctkd"] else 1.0})


register(MethodSpec(
    name="ctkd", role="distiller", config=CTKDConfig, build=CTKD, knobs=KNOBS,
    solo_ce_weight=0.1, resolve_block=_resolve,
    summary="Li et al., AAAI 2023: KD at a learnable temperature trained adversarially (gradient reversal, "
            "cosine curriculum)",
    phrases=("ctkd", "curriculum temperature", "curriculum temperature kd",
             "curriculum temperature for knowledge distillation", "learnable temperature kd"),
    terms={"ctkd": ("ctkd", "kd")},
    list_aliases=("ctkd", "curriculum temperature kd"),
))
