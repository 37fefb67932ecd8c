"""Teacher groups: k runs of one architecture trained as one program, their networks stacked (issue 16).

Teacher variants of one ablation (λ, δ, τ, Q, margin on/off, λ schedule, ...) share the architecture, seed,
batches and augmentation, optimizer and schedule; only the objective differs. A :class:`StackedGroup` stacks
their k networks into one (:func:`kdlab.models.stacked.stack_networks`) and trains them with one forward, one
backward and one optimizer step per batch, while each run keeps its own objective (heads, caches, λ schedule),
run folder, checkpoints, metrics and evaluation. It has :class:`~kdlab.engine.group.StudentGroup`'s contract:
:meth:`StackedGroup.add` each trainer built and resumed as its separate run would be, then
:meth:`StackedGroup.fit`, which returns the members, each with its ``metrics`` or its ``error``.

Each step: the learning rate of the shared schedule, the stacked forward on the batch's network input (every
member's is the same: same views of the same batch), each member's ``losses_from_output`` on its own copy's
output (inside :meth:`Member.run`: its own global random state, a failure ends that member only), one backward
of the sum of the members' losses, one optimizer step, then each member's ``after_step`` and ``record_step``
(the trainer's bookkeeping and its every-25-steps finiteness check). At each epoch's end every live member gets
its copy's weights, buffers and optimizer state back into its own network and optimizer, then evaluates and
checkpoints as its separate run does (``finish_epoch(end_epoch(epoch))``): its checkpoint is a separate run's.

Why the copies never mix, and a NaN in one cannot reach another:

* Forward: in the ``"grouped"`` strategy a conv has k groups (one per copy), BatchNorm normalises each channel
  alone (its batch and running statistics are each copy's own), the classifier is k separate products; in
  ``"vmap"`` each copy's parameters are mapped separately. Copy i's output depends on copy i's parameters and
  the shared input only.
* Backward: the gradient of ``sum_j loss_j`` with respect to ``loss_i`` is 1 whatever the values of the other
  terms (a NaN term included), and through the layers above it flows only into copy i's slices.
* Optimizer: SGD (momentum, weight decay, Nesterov), Adam and AdamW update each element from that element's
  own gradient and state, so one step over the stacked parameters is k separate steps. An optimizer or gradient
  clipping that uses a norm over a whole tensor (LARS, LAMB, clip_grad_norm) would mix them; kdlab has none, and
  any optimizer name other than the three is refused.

So a member whose loss turns non-finite poisons only its own copy; it is found at its trainer's next sync point
(as in its separate run), fails alone, and its loss is left out of the sum from then on. Its copy keeps being
computed (the stack is not rebuilt) but is never written back: its folder keeps its last good checkpoint.

Memory: unlike a student group, which runs its members one after another, a stacked group holds all k copies'
activations at once (k times a run's activation memory, plus k runs' parameters and optimizer state).

A single member (k = 1) trains through its own trainer (``Trainer.fit``), exactly its separate run, whatever its
method (nothing is stacked, so nothing is checked).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.engine.group import Member, RunGroup
from kdlab.engine.trainer import Trainer, build_optimizer, lr_at
from kdlab.models.stacked import StackedNets, Strategy, stack_networks

#: optimizers whose update is elementwise (so one step over stacked parameters is k separate steps)
ELEMENTWISE_OPTIMIZERS = ("sgd", "adam", "adamw")


class StackedGroup(RunGroup):
    """Teacher runs of one architecture whose networks train stacked as one (see the module docstring)."""

    kind = "stacked group"

    def __init__(self, loader, strategy: Strategy = "grouped"):
        super().__init__(loader)
        self.strategy = strategy
        self.stacked: StackedNets | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._lr = 0.0

    def fit(self) -> list[Member]:
        """Train every member to the last epoch; returns the members, each with its metrics or its error.

        Raises ValueError (before training anything) when the members cannot share one stacked program, and
        :class:`Interrupted` when a signal arrives; every member keeps its last checkpoint.
        """
        if not self.members:
            return self.members
        if len(self.members) == 1:  # nothing to stack: the trainer's own loop is the separate run itself
            m = self.members[0]
            m.metrics = m.run(m.trainer.fit) or {}
            return self.members
        self._check_members()
        return super().fit()

    def _prepare(self) -> None:
        for m in self.members:  # initialisation phases (none for teachers so far), before stacking
            m.run(m.trainer.pre_train)
        self._stack()

    def _epochs(self) -> range:
        first = self.members[0].trainer
        return range(first.start_epoch, first.epochs)

    def _release(self) -> None:
        self.stacked = self.optimizer = None  # k networks' worth of memory

    # ------------------------------------------------------------------------------------------ checks
    def _check_members(self) -> None:
        """Refuse (ValueError) members that cannot be one stacked program, naming what differs."""
        first = self.members[0].trainer
        for i, m in enumerate(self.members):
            t = m.trainer
            why = t.method.stacking_refusal(self.strategy)
            if why:
                raise ValueError(f"member {i} ({t.run_dir}): {why}")
            if t.rt.compile:
                raise ValueError(f"member {i} ({t.run_dir}): a stacked group does not compile its step "
                                 "(runtime.compile=true); run it separately")
            if t.optim_cfg.optimizer not in ELEMENTWISE_OPTIMIZERS:
                raise ValueError(f"member {i} ({t.run_dir}): optimizer {t.optim_cfg.optimizer!r} is not known to "
                                 f"update elementwise (one step over stacked copies would mix them); "
                                 f"supported: {', '.join(ELEMENTWISE_OPTIMIZERS)}")
        for i, m in enumerate(self.members[1:], 1):
            t = m.trainer
            differs = [what for what, a, b in [
                ("start epoch (a resumed run's checkpoint epoch)", t.start_epoch, first.start_epoch),
                ("epochs", t.epochs, first.epochs),
                ("optimizer config", t.optim_cfg, first.optim_cfg),
                ("runtime device", t.rt.device, first.rt.device),
                ("runtime precision (amp)", t.rt.amp_dtype, first.rt.amp_dtype),
                ("runtime channels_last", t.rt.channels_last, first.rt.channels_last),
                ("views", t.method.views, first.method.views),
                ("network type", type(t.method.model), type(first.method.model)),
                ("network shapes", _shapes(t.method.model), _shapes(first.method.model)),
            ] if a != b]
            if differs:
                raise ValueError(f"member {i} ({t.run_dir}) differs from member 0 ({first.run_dir}) in its "
                                 f"{', '.join(differs)}: they cannot train as one stacked group; run them separately")

    # ----------------------------------------------------------------------------------------- stacking
    def _stack(self) -> None:
        """Stack the members' networks and build the one optimizer over them and every member's other trainable
        parameters (heads), with each member's optimizer state (a resumed run's momentum) loaded into it."""
        trainers = [m.trainer for m in self.members]
        first = trainers[0]
        stacked = stack_networks([t.method.model for t in trainers], self.strategy)
        if first.rt.channels_last:
            stacked.to_channels_last()
        extras = [_other_parameters(t) for t in trainers]
        optimizer = build_optimizer(list(stacked.parameters()) + [p for ps in extras for p in ps], first.optim_cfg)
        for i, (t, ps) in enumerate(zip(trainers, extras)):
            own = t.optimizer.state
            stacked.load_copy_optimizer_state(optimizer, i, {n: own[p] for n, p in t.method.model.named_parameters()
                                                             if own.get(p)})
            for p in ps:
                if own.get(p):
                    optimizer.state[p] = _cloned(own[p])
        self.stacked, self.optimizer = stacked, optimizer

    def _write_back(self, i: int) -> None:
        """Member ``i``'s copy into its own network, its optimizer state into its own optimizer (so that its
        checkpoint is the one its separate run writes)."""
        t = self.members[i].trainer
        t.method.model.load_state_dict(self.stacked.copy_state_dict(i), strict=True)
        own = t.optimizer.state
        params = dict(t.method.model.named_parameters())
        for name, state in self.stacked.copy_optimizer_state(self.optimizer, i).items():
            if state:
                own[params[name]] = state
        for p in _other_parameters(t):
            if self.optimizer.state.get(p):
                own[p] = _cloned(self.optimizer.state[p])
        for group in t.optimizer.param_groups:
            group["lr"] = self._lr

    # ----------------------------------------------------------------------------------------- training
    def _epoch(self, epoch: int) -> None:
        for m in self.members:
            if m.alive:
                m.run(m.trainer.begin_epoch, epoch)
        self.stacked.train()
        self.loader.set_epoch(epoch)
        steps = len(self.loader)
        for step, batch in enumerate(self.loader):
            if not any(m.alive for m in self.members):
                break
            self._step(epoch, step, steps, batch)
            self._stop_during(epoch)
        for i, m in enumerate(self.members):
            if m.alive:
                m.run(self._write_back, i)
            if m.alive:
                m.run(lambda t: t.finish_epoch(t.end_epoch(epoch)), m.trainer)

    def _step(self, epoch: int, step: int, steps: int, batch) -> None:
        """One step of every live member: one stacked forward, each member's losses on its own copy's output,
        one backward of their sum, one optimizer step, then each member's ``after_step`` and ``record_step``."""
        live = [(i, m) for i, m in enumerate(self.members) if m.alive]
        first = self.members[0].trainer
        progress = epoch + step / steps
        self._lr = lr = lr_at(first.optim_cfg, first.epochs, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = live[0][1].trainer.method.network_input(batch)  # the same for every member: same views, same batch
        with first.rt.autocast():
            outs = self.stacked(x)
        results = []
        for i, m in live:
            r = m.run(_losses, m.trainer, outs[i], batch, progress)
            if m.alive:
                results.append((m, *r))
        self.optimizer.zero_grad(set_to_none=True)
        if results:
            sum(loss for _, loss, _, _ in results).backward()
            self.optimizer.step()
        for m, loss, terms, logits in results:
            m.run(m.trainer.method.after_step)
            if m.alive:
                m.run(m.trainer.record_step, epoch, step, batch, lr, loss, terms, logits)


def _losses(trainer: Trainer, out, batch, progress: float) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """A member's loss, terms and view-0 logits from its copy's output, as its trainer's step computes them."""
    with trainer.rt.autocast():
        logits, terms = trainer.method.losses_from_output(out, batch, progress)
        loss = sum(terms.values())
    return loss, terms, logits


def _other_parameters(trainer: Trainer) -> list[nn.Parameter]:
    """The method's trainable parameters outside its network (projection heads), in the trainer's order."""
    net = {id(p) for p in trainer.method.model.parameters()}
    return [p for p in trainer.method.trainable_parameters() if id(p) not in net]


def _shapes(net: nn.Module) -> dict[str, tuple]:
    return {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}


def _cloned(state: dict) -> dict:
    return {k: v.clone() if isinstance(v, Tensor) else v for k, v in state.items()}


__all__ = ["ELEMENTWISE_OPTIMIZERS", "StackedGroup"]
