"""``Distillation``: the student stage's :class:`TrainMethod` — CE plus the configured distillation terms."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import registry
from kdlab.data.base import Batch
from kdlab.distillers.base import (
    DistillContext,
    DistillLoss,
    StepContext,
    build_distill_loss,
)
from kdlab.engine.method import TrainMethod
from kdlab.engine.prephase import PrePhase, train_phase
from kdlab.models.base import ModelOutput


def resolved_ce_weight(cfg) -> float:
    """``distill.ce_weight``, or when unset the sole method's ``solo_ce_weight`` (KD: 0.1), else 1."""
    if cfg.ce_weight is not None:
        return cfg.ce_weight
    if len(cfg.methods) == 1:
        solo = registry.spec(cfg.methods[0], "distiller").solo_ce_weight
        if solo is not None:
            return solo
    return 1.0


def resolved_block(cfg, name: str):
    """The ``distill.<name>`` block with defaults that depend on the method list filled in (the plugin's
    ``resolve_block``)."""
    block = getattr(cfg, name)
    resolve = registry.spec(name, "distiller").resolve_block
    return resolve(block, list(cfg.methods)) if resolve else block


def distill_views(cfg) -> int:
    """Augmented views per image the methods of ``cfg`` (the ``distill`` section) read: the most any needs."""
    return max([1] + [registry.spec(name, "distiller").views(resolved_block(cfg, name)) for name in cfg.methods])


class Distillation(TrainMethod):
    """Student + frozen teacher + the terms of ``cfg.methods`` (``cfg``: the ``distill`` section).

    ``L = ce_weight · CE(z_s, y) + Σ_terms`` (each term already weighted by its own config block).
    The teacher is held outside the module tree (see :attr:`teacher`); the student and every term's
    heads and memories are registered, so they are trained, checkpointed and moved with this module.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg, ctx: DistillContext):
        super().__init__()
        self.student = student
        teacher.eval()
        teacher.requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher)
        self.cfg = cfg
        self.ce_weight = resolved_ce_weight(cfg)
        ctx = dataclasses.replace(ctx, student=student, teacher=teacher)
        terms: dict[str, DistillLoss] = {}
        for name in cfg.methods:
            terms[name] = build_distill_loss(name, resolved_block(cfg, name), ctx)
        self.terms = nn.ModuleDict(terms)
        self.views = distill_views(cfg)
        self.needs_teacher = any(term.needs_teacher for term in terms.values())

    # ------------------------------------------------------------------------------ networks
    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher: eval mode, ``requires_grad=False``, forwarded under ``torch.no_grad()``.

        Deliberately not a registered submodule: it is not in ``state_dict()``/``parameters()``, and
        ``train()`` does not switch it to train mode. ``.to()``/``.cuda()``/``.half()`` on this module do
        move/cast it (see ``_apply``)."""
        return self._teacher

    @property
    def model(self) -> nn.Module:
        return self.student

    def share_teacher(self, teacher: nn.Module) -> None:
        """Forward the frozen teacher through ``teacher`` from now on (a :class:`~kdlab.engine.group.SharedForward`
        around a network with the same weights, shared by a group of students)."""
        teacher.eval()
        object.__setattr__(self, "_teacher", teacher)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self._teacher._apply(fn)
        return self

    # ------------------------------------------------------------------------------ training
    def forward_train(self, batch: Batch, progress: float) -> tuple[Tensor, dict[str, Tensor]]:
        if len(batch.views) < self.views:
            raise ValueError(
                f"distill.methods={self.cfg.methods} needs {self.views} views per image, "
                f"the batch has {len(batch.views)}"
            )
        teacher = self._teacher
        if teacher.training:  # someone switched it: a frozen teacher always runs in eval mode
            teacher.eval()
        x = batch.views[0]
        s: ModelOutput = self.student(x)
        t: ModelOutput | None = None
        if self.needs_teacher:
            with torch.no_grad():
                t = teacher(x)
        losses = {"ce": self.ce_weight * F.cross_entropy(s.logits, batch.labels)}
        step = StepContext(student=self.student, teacher=teacher, progress=progress)
        for name, term in self.terms.items():
            for key, value in term(s, t, batch, step).items():
                if key in losses:
                    raise RuntimeError(f"distillation term {name!r} returned a loss named {key!r} twice")
                losses[key] = value
        return s.logits, losses

    def pre_train(self, phase: PrePhase) -> bool:
        """Each term's initialisation phase that is not done yet, in ``distill.methods`` order: only the term's
        ``init_modules`` are trained (in train mode, everything else in eval mode, the teacher frozen) on its
        ``init_loss`` alone, by a new SGD at ``init_lr`` (:func:`kdlab.engine.prephase.train_phase`); then its
        ``init_done`` buffer is set. Parameters a term keeps frozen for distillation (FT's paraphraser) are
        trainable during its phase only."""
        ran = False
        for name, term in self.terms.items():
            if not term.init_epochs or bool(term.init_done):
                continue
            modules = term.init_modules(self.student)
            params = list({id(p): p for m in modules for p in m.parameters()}.values())
            frozen = [p for p in params if not p.requires_grad]

            def set_modes(modules=modules):
                self.train(False)
                for m in modules:
                    m.train()

            def loss_fn(batch: Batch, term=term) -> Tensor:
                x = batch.views[0]
                s = self.student(x) if term.init_uses_student else None
                with torch.no_grad():
                    t = self._teacher(x)
                return term.init_loss(s, t, batch)

            for p in frozen:
                p.requires_grad_(True)
            try:
                train_phase(phase, name=name, params=params, epochs=term.init_epochs, lr=term.init_lr(phase.optim),
                            loss_fn=loss_fn, set_modes=set_modes)
            finally:
                for p in frozen:
                    p.requires_grad_(False)
                    p.grad = None
            term.init_done.fill_(True)
            ran = True
        return ran

    def after_step(self) -> None:
        for term in self.terms.values():
            term.after_step()

    def epoch_stats(self) -> dict[str, float]:
        stats: dict[str, float] = {}
        for term in self.terms.values():
            stats.update(term.stats())
        return stats

    def extra_state_bytes(self) -> int:
        """Buffers outside the student (banks, queues, Z, EMA BN statistics) plus frozen parameters
        outside it (EMA copies such as CoCoRD's slow student and teacher projector)."""
        own = {id(t) for t in self.student.parameters()} | {id(t) for t in self.student.buffers()}
        frozen = [p for p in self.parameters() if not p.requires_grad and id(p) not in own]
        buffers = [b for b in self.buffers() if id(b) not in own]
        return sum(t.numel() * t.element_size() for t in frozen + buffers)
