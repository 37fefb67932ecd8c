"""Distillation loss terms: one class per method, registered by name, composed by ``Distillation``.

A term sees the student's and teacher's :class:`~kdlab.models.ModelOutput` for view 0 of the batch
and returns its named, *already weighted* losses. Heads a term trains are its parameters; memories it
keeps (banks, queues) are buffers, so both are checkpointed with the student.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from kdlab import registry
from kdlab.config import OptimConfig
from kdlab.data.base import Batch
from kdlab.models.base import ModelOutput, Probe


@dataclass
class DistillContext:
    """Static facts a term is built from (sizes come from dummy forwards, never hard-coded)."""

    student_probe: Probe
    teacher_probe: Probe
    num_classes: int
    num_train: int  # training-set size (memory banks index it)
    input_shape: tuple[int, int, int]
    epochs: int
    #: the online student network; ``Distillation`` fills it in before building the terms (terms that
    #: keep an EMA copy of the student, e.g. CoCoRD's slow-moving student, deep-copy it at build time)
    student: nn.Module | None = None
    #: the frozen teacher network; ``Distillation`` fills it in too (OFD reads its BN parameters for margins)
    teacher: nn.Module | None = None
    #: the student's architecture name (``student.arch``); empty when unknown (rules that depend on it, such as
    #: FT's initialisation learning rate, then take their general case)
    student_arch: str = ""


@dataclass
class StepContext:
    """Per-step handles: the networks (for terms that forward extra views) and the fractional epoch."""

    student: nn.Module
    teacher: nn.Module  # frozen, eval mode; call under torch.no_grad()
    progress: float


class DistillLoss(nn.Module):
    """A distiller's loss module (the views per image it reads are declared on its ``MethodSpec``)."""

    #: whether ``forward`` reads ``t`` (the teacher's output on view 0). When no term of a
    #: ``Distillation`` does, the teacher's view-0 forward is skipped and ``t`` is passed as ``None``.
    needs_teacher: bool = True

    def forward(self, s: ModelOutput, t: ModelOutput, batch: Batch, step: StepContext) -> dict[str, Tensor]:
        raise NotImplementedError

    #: epochs of the term's initialisation phase, run once before distillation (RepDistiller's two-phase AB,
    #: FT and FSP); 0: none. A term with a phase calls :meth:`_init_phase` and implements the ``init_*`` hooks;
    #: ``Distillation.pre_train`` runs it (``kdlab.engine.prephase``).
    init_epochs: int = 0
    #: whether the phase's loss reads the student's output (FT's reads the teacher's only)
    init_uses_student: bool = True

    def _init_phase(self, epochs: int) -> None:
        """Declare an initialisation phase of ``epochs`` epochs; its completion is the buffer ``init_done``
        (saved with the term, so a resumed run does not repeat the phase)."""
        self.init_epochs = int(epochs)
        if self.init_epochs:
            self.register_buffer("init_done", torch.zeros((), dtype=torch.bool))

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        """The modules the phase trains (in train mode; everything else in eval mode). Their parameters that
        the phase's loss does not reach (the student's classifier) get no gradient and stay as they are."""
        raise NotImplementedError

    def init_loss(self, s: ModelOutput | None, t: ModelOutput, batch: Batch) -> Tensor:
        """The phase's loss on one batch (unweighted: the term's ``weight`` scales the distillation phase)."""
        raise NotImplementedError

    def init_lr(self, optim: OptimConfig) -> float:
        """The phase's constant learning rate (default: the student's base rate, as RepDistiller)."""
        return optim.lr

    def after_step(self) -> None:
        """After the optimizer step (EMA updates)."""

    def stats(self) -> dict[str, float]:
        return {}


def distiller_names() -> list[str]:
    """Registered distillers, sorted (``kdlab.registry`` is the source)."""
    return sorted(s.name for s in registry.distillers())


def build_distill_loss(name: str, cfg: BaseModel, ctx: DistillContext) -> DistillLoss:
    """The loss module of distiller ``name`` built from its config block."""
    return registry.spec(name, "distiller").build(cfg, ctx)
