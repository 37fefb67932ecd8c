"""Distillation loss terms: one class per method, registered by name, composed by ``Distillation``.

A term sees the student's and teacher's :class:`~kdlab.models.ModelOutput` for view 0 of the batch
and returns its named, *already weighted* losses. Heads a term trains are its parameters; memories it
keeps (banks, queues) are buffers, so both are checkpointed with the student.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from torch import Tensor, nn

from kdlab import registry
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
