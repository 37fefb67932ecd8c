"""AB (Heo et al., AAAI 2019): transfer the activation boundaries of the hidden neurons.

The student's pre-ReLU stage maps (through a connector where shapes differ) are pushed to the same side
of zero as the teacher's, with a margin; RepDistiller's ``ABLoss`` on ``feat[1:-1]`` with ``preact=True``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import ConfigError, Strict
from kdlab.distillers._common import full_precision
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class ABConfig(Strict):
    weight: float = Field(1.0, ge=0, description="beta: weight of the AB loss during distillation (1; "
                                                 "RepDistiller's protocol: 0 after its initialisation phase)")
    margin: float = Field(1.0, ge=0, description="margin m of the alternative L2 boundary loss")
    init_epochs: int = Field(0, ge=0, description="epochs of the initialisation phase that trains the student's "
                                                  "layers and the connectors on the AB loss alone before "
                                                  "distillation (RepDistiller: 30; 0: no phase)")


def _promote(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def ab_pair_loss(source: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """``Σ (s+m)²·[s>-m ∧ t≤0] + (s-m)²·[s≤m ∧ t>0]`` over every element (RepDistiller's alternative L2)."""
    with full_precision(source):
        s, t = _promote(source), _promote(target).to(_promote(source).dtype)
        neg = ((s > -margin) & (t <= 0)).to(s.dtype)
        pos = ((s <= margin) & (t > 0)).to(s.dtype)
        return ((s + margin).pow(2) * neg + (s - margin).pow(2) * pos).abs().sum()


def ab_loss(g_s: list[Tensor], g_t: list[Tensor], margin: float = 1.0) -> Tensor:
    """RepDistiller's ``sum(ABLoss(k)(g_s, g_t))``: pair ``i`` of ``k`` weighted ``2^(i-k+1)`` (the deepest 1),
    each divided by the batch size and scaled by ``3/1000``."""
    k, bsz = len(g_s), g_s[0].shape[0]
    terms = [2.0 ** (i - k + 1) * ab_pair_loss(s, t, margin) / bsz / 1000 * 3
             for i, (s, t) in enumerate(zip(g_s, g_t))]
    return sum(terms[1:], terms[0])


class ConvReg(nn.Module):
    """RepDistiller's ``ConvReg`` (``use_relu=False`` for AB's connector): conv + BN from the student shape
    to the teacher's. Student map twice the teacher's: 3×3 stride 2; half: 4×4 transposed stride 2;
    otherwise (student ≥ teacher) a valid conv of kernel ``1 + s - t``."""

    def __init__(self, s_shape: tuple[int, int, int], t_shape: tuple[int, int, int], use_relu: bool = False,
                 what: str = "distill.ab"):
        super().__init__()
        s_c, s_h, s_w = s_shape
        t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ConfigError(f"{what}: no connector from a student map of {s_h}x{s_w} to a larger teacher "
                              f"map of {t_h}x{t_w} (RepDistiller's ConvReg supports equal, half, double or smaller)")
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return torch.relu(x) if self.use_relu else x


class AB(DistillLoss):
    """Config: ``distill.ab.weight`` (1), ``.margin`` (1), ``.init_epochs`` (0).

    Pairs ``preacts[1:]`` (every stage but the stem, before its last ReLU). RepDistiller asserts equal
    stage counts; with unequal counts the last ``min(n_s, n_t)`` stages are paired (deepest with deepest),
    as kdlab's AT does. Connector per pair: identity when channels and height agree, else ``ConvReg``.

    With ``init_epochs > 0`` the student and the connectors are first trained on the unweighted AB loss alone
    (``Distillation.pre_train``). With ``weight = 0`` the term adds nothing during distillation and its
    connectors are frozen (RepDistiller's protocol: AB acts only in its initialisation phase).
    """

    def __init__(self, cfg: ABConfig, ctx: DistillContext):
        super().__init__()
        self._init_phase(cfg.init_epochs)
        s_shapes, t_shapes = ctx.student_probe.stage_shapes[1:], ctx.teacher_probe.stage_shapes[1:]
        k = min(len(s_shapes), len(t_shapes))
        if k < 1:
            raise ConfigError("distill.ab needs networks with at least one stage after the stem")
        self.pairs, self.weight, self.margin = k, cfg.weight, cfg.margin
        self.connectors = nn.ModuleList(
            nn.Identity() if (s[0], s[1]) == (t[0], t[1]) else ConvReg(s, t, what="distill.ab")
            for s, t in zip(s_shapes[-k:], t_shapes[-k:]))
        if self.weight == 0:  # nothing to train during distillation (the phase unfreezes them for itself)
            self.connectors.requires_grad_(False)

    def _loss(self, s, t) -> Tensor:
        k = self.pairs
        g_s = [c(f) for c, f in zip(self.connectors, s.preacts[-k:])]
        g_t = [f.detach() for f in t.preacts[-k:]]
        return ab_loss(g_s, g_t, self.margin)

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        if self.weight == 0:
            return {"ab": s.logits.new_zeros((), dtype=torch.float32)}
        return {"ab": self.weight * self._loss(s, t)}

    # RepDistiller's initialisation phase: the student's layers and the connectors on the AB loss alone
    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [student, self.connectors]

    def init_loss(self, s, t, batch) -> Tensor:
        return self._loss(s, t)


KNOBS = (
    knob("ab.weight", "distill.ab.weight", "float",
         ["ab weight", "ab loss weight", "activation boundary weight", "activation boundaries loss weight"],
         "weight of the activation-boundary loss", off_value=0.0, requires="distill.methods~ab"),
    knob("ab.margin", "distill.ab.margin", "float", ["ab margin", "activation boundary margin"],
         "margin of the activation-boundary loss (1)", requires="distill.methods~ab"),
    knob("ab.init_epochs", "distill.ab.init_epochs", "int",
         ["ab init epochs", "ab initialisation epochs", "ab initialization epochs", "activation boundary init epochs", "ab connector initialisation"],
         "epochs of AB's initialisation phase before distillation (RepDistiller: 30; REMOVE: 0, no phase)", off_value=0, requires="distill.methods~ab"),
)

register(MethodSpec(
    name="ab", role="distiller", config=ABConfig, build=AB, knobs=KNOBS,
    summary="Heo et al., AAAI 2019: activation boundaries of the pre-ReLU stages, with a margin",
    phrases=('ab', 'activation boundaries', 'activation boundary', 'activation boundary distillation'),
    list_aliases=('activation boundaries', 'ab loss'),
))
