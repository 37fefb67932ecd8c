"""FT (Kim et al., NeurIPS 2018): factor transfer through a teacher paraphraser and a student translator.

RepDistiller's ``FactorTransfer`` on ``feat[-2]`` (the last stage before pooling): the teacher's map is
encoded by a paraphraser (trained beforehand to reconstruct it, then frozen), the student's by a trainable
translator; the two factors are compared by ``mean |norm(mean_c f^p1) - norm(mean_c g^p1)|^p2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import ConfigError, Strict
from kdlab.distillers._common import full_precision
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.registry import MethodSpec, knob, register


class FTConfig(Strict):
    weight: float = Field(200.0, ge=0, description="beta: RepDistiller's -b for factor (200)")
    rate: float = Field(0.5, gt=0, description="paraphrase rate k: factor channels = int(teacher channels * k)")
    p1: float = Field(2.0, gt=0, description="exponent of the channel mean in the factor map")
    p2: float = Field(1.0, gt=0, description="exponent of the factor difference (1: L1)")
    init_epochs: int = Field(0, ge=0, description="epochs of the phase that trains the paraphraser to "
                                                  "reconstruct the teacher's map before distillation "
                                                  "(RepDistiller: 30; 0: the paraphraser stays untrained)")


def _promote(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _factor_map(f: Tensor, p1: float) -> Tensor:
    return F.normalize(f.pow(p1).mean(1).reshape(f.shape[0], -1))


def ft_loss(factor_s: Tensor, factor_t: Tensor, p1: float = 2.0, p2: float = 1.0) -> Tensor:
    """RepDistiller's ``FactorTransfer(p1, p2)``: the larger map is adaptive-average-pooled to the smaller
    one's height (square), then ``mean |F_s - F_t|`` (``p2 = 1``) or ``mean (F_s - F_t)^p2``."""
    with full_precision(factor_s):
        s = _promote(factor_s)
        t = _promote(factor_t).to(s.dtype)
        s_h, t_h = s.shape[2], t.shape[2]
        if s_h > t_h:
            s = F.adaptive_avg_pool2d(s, (t_h, t_h))
        elif s_h < t_h:
            t = F.adaptive_avg_pool2d(t, (s_h, s_h))
        diff = _factor_map(s, p1) - _factor_map(t, p1)
        return diff.abs().mean() if p2 == 1 else diff.pow(p2).mean()


def _conv_block(convs: list[nn.Module], channels: list[int], use_bn: bool) -> nn.Sequential:
    """conv, BN (or an empty slot, keeping RepDistiller's state-dict indices), LeakyReLU(0.1) per conv."""
    layers: list[nn.Module] = []
    for conv, c in zip(convs, channels):
        layers += [conv, nn.BatchNorm2d(c) if use_bn else nn.Identity(), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """RepDistiller's ``Paraphraser`` (no BN): 3×3 convs ``C → C → kC → kC`` (encoder) and transposed
    3×3 convs ``kC → kC → C → C`` (decoder), each followed by LeakyReLU(0.1)."""

    def __init__(self, channels: int, rate: float = 0.5, use_bn: bool = False):
        super().__init__()
        c, k = channels, int(channels * rate)
        self.encoder = _conv_block([nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, k, 3, 1, 1), nn.Conv2d(k, k, 3, 1, 1)],
                                   [c, k, k], use_bn)
        self.decoder = _conv_block([nn.ConvTranspose2d(k, k, 3, 1, 1), nn.ConvTranspose2d(k, c, 3, 1, 1),
                                    nn.ConvTranspose2d(c, c, 3, 1, 1)], [k, c, c], use_bn)

    def forward(self, f: Tensor, is_factor: bool = False):
        factor = self.encoder(f)
        return factor if is_factor else (factor, self.decoder(factor))


class Translator(nn.Module):
    """RepDistiller's ``Translator`` (with BN): 3×3 convs ``C_s → C_s → kC_t → kC_t``, LeakyReLU(0.1)."""

    def __init__(self, s_channels: int, t_channels: int, rate: float = 0.5, use_bn: bool = True):
        super().__init__()
        c, k = s_channels, int(t_channels * rate)
        self.encoder = _conv_block([nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, k, 3, 1, 1), nn.Conv2d(k, k, 3, 1, 1)],
                                   [c, k, k], use_bn)

    def forward(self, f: Tensor) -> Tensor:
        return self.encoder(f)


#: students for which RepDistiller trains the paraphraser at lr 0.01 instead of the student's base rate
#: (``helper/pretrain.py``: the CIFAR ResNets and WRNs)
PARAPHRASER_LR_001 = frozenset({"resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                                "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"})


class FT(DistillLoss):
    """Config: ``distill.ft.weight`` (200), ``.rate`` (0.5), ``.p1`` (2), ``.p2`` (1), ``.init_epochs``
    (0). Pairs ``stages[-1]`` of both networks; any pair works (the translator maps the student's channels,
    spatial sizes are pooled). The paraphraser is frozen during distillation, as in RepDistiller; with
    ``init_epochs > 0`` it is first trained alone to reconstruct the teacher's map (MSE), otherwise it
    stays at its random initialisation."""

    init_uses_student = False

    def __init__(self, cfg: FTConfig, ctx: DistillContext):
        super().__init__()
        self._init_phase(cfg.init_epochs)
        self.student_arch = ctx.student_arch
        s_c, t_c = ctx.student_probe.stage_shapes[-1][0], ctx.teacher_probe.stage_shapes[-1][0]
        if int(t_c * cfg.rate) < 1:
            raise ConfigError(f"distill.ft.rate={cfg.rate} leaves no factor channel for {t_c} teacher channels")
        self.weight, self.p1, self.p2 = cfg.weight, cfg.p1, cfg.p2
        self.paraphraser = Paraphraser(t_c, cfg.rate).requires_grad_(False).eval()
        self.translator = Translator(s_c, t_c, cfg.rate)

    def train(self, mode: bool = True):
        super().train(mode)
        self.paraphraser.eval()  # RepDistiller: module_list[2].eval() during distillation
        return self

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        factor_s = self.translator(s.stages[-1])
        with torch.no_grad():
            factor_t = self.paraphraser(t.stages[-1].detach(), is_factor=True)
        return {"ft": self.weight * ft_loss(factor_s, factor_t, self.p1, self.p2)}

    # RepDistiller's initialisation phase: the paraphraser alone, reconstructing the teacher's map
    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.paraphraser]

    def init_loss(self, s, t, batch) -> Tensor:
        f_t = t.stages[-1].detach()
        _, rec = self.paraphraser(f_t)
        return paraphraser_loss(rec, f_t)

    def init_lr(self, optim) -> float:
        """0.01 for a CIFAR ResNet/WRN student, else the student's base rate (RepDistiller's rule)."""
        return 0.01 if self.student_arch in PARAPHRASER_LR_001 else optim.lr


def paraphraser_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all elements (RepDistiller's ``nn.MSELoss()`` on the paraphraser's output)."""
    with full_precision(reconstruction):
        r = _promote(reconstruction)
        return F.mse_loss(r, _promote(target).to(r.dtype))


KNOBS = (
    knob("ft.weight", "distill.ft.weight", "float",
         ["ft weight", "ft loss weight", "factor transfer weight", "factor transfer loss weight"],
         "weight of the factor-transfer loss", off_value=0.0, requires="distill.methods~ft"),
    knob("ft.rate", "distill.ft.rate", "float", ["ft paraphrase rate", "factor transfer paraphrase rate", "paraphrase rate"],
         "paraphrase rate k of FT's paraphraser and translator (0.5)", requires="distill.methods~ft"),
    knob("ft.init_epochs", "distill.ft.init_epochs", "int",
         ["ft init epochs", "paraphraser epochs", "paraphraser training epochs", "factor transfer init epochs", "paraphraser pretraining"],
         "epochs of FT's paraphraser training phase before distillation (RepDistiller: 30; REMOVE: 0, untrained paraphraser)", off_value=0, requires="distill.methods~ft"),
)

register(MethodSpec(
    name="ft", role="distiller", config=FTConfig, build=FT, knobs=KNOBS,
    summary="Kim et al., NeurIPS 2018: factor transfer through a teacher paraphraser and a student translator",
    phrases=('ft', 'factor transfer', 'paraphrasing complex network'),
    list_aliases=('factor transfer', 'ft loss'),
))
