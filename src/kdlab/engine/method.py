"""What the trainer trains: a :class:`TrainMethod` wraps a network with its training objective.

The teacher stage (``kdlab.objectives``) and the student stage (``kdlab.distillers``) both implement
this interface, so one trainer, one checkpoint format and one metrics path serve both.
"""

from __future__ import annotations

from typing import Iterator

from torch import Tensor, nn

from kdlab.data.base import Batch
from kdlab.engine.prephase import PrePhase
from kdlab.models.base import ModelOutput


class TrainMethod(nn.Module):
    """A network plus everything its objective needs (heads, caches, banks, EMA copies).

    Everything registered on the module (parameters and buffers) is saved in checkpoints and restored
    on resume. A frozen teacher is deliberately *not* registered (see ``Distillation.teacher``): it is
    never trained, never switched to train mode and not duplicated into student checkpoints.
    """

    #: how many augmented views of each image a step needs
    views: int = 1

    #: whether the method splits its step into :meth:`network_input` and :meth:`losses_from_output`, so that
    #: its network's forward can be computed outside it (a stacked group of teachers computes k networks'
    #: forwards as one program and hands each method its own output; ``kdlab.engine.stacked_group``)
    stackable: bool = False

    @property
    def model(self) -> nn.Module:
        """The network that is evaluated and exported (teacher or student)."""
        raise NotImplementedError

    def forward_train(self, batch: Batch, progress: float) -> tuple[Tensor, dict[str, Tensor]]:
        """One step's forward: logits of view 0 (for train accuracy) and the named, weighted loss terms.

        ``progress`` is the fractional epoch (e.g. 3.25), for warm-ups. The trainer sums the terms.
        """
        raise NotImplementedError

    def network_input(self, batch: Batch) -> Tensor:
        """The one tensor the network forwards this step (e.g. the batch's views concatenated).

        A :attr:`stackable` method's ``forward_train(batch, p)`` is exactly
        ``losses_from_output(self.model(network_input(batch)), batch, p)``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not split its step (stackable = False): "
                                  "train it with its own Trainer, not in a stacked group")

    def losses_from_output(self, out: ModelOutput, batch: Batch, progress: float) -> tuple[Tensor, dict[str, Tensor]]:
        """``forward_train``'s result from the network's output ``out`` on :meth:`network_input` ``(batch)``:
        logits of view 0 and the named, weighted loss terms."""
        raise NotImplementedError(f"{type(self).__name__} does not split its step (stackable = False): "
                                  "train it with its own Trainer, not in a stacked group")

    def stacking_refusal(self, strategy: str) -> str | None:
        """Why this method cannot train with its network stacked by ``strategy`` ("grouped" | "vmap"), or None."""
        if not self.stackable:
            return f"{type(self).__name__} cannot train in a stacked group (it does not split its step)"
        return None

    def forward(self, batch: Batch, progress: float) -> tuple[Tensor, dict[str, Tensor]]:
        """``forward_train``, so that DistributedDataParallel can wrap the method."""
        return self.forward_train(batch, progress)

    def pre_train(self, phase: PrePhase) -> bool:
        """Run the method's initialisation phases that are not done yet, before the first epoch
        (:mod:`kdlab.engine.prephase`); whether any ran. A method records a finished phase in its own state
        (a buffer), so the checkpoint the trainer then writes keeps a resumed run from repeating it."""
        return False

    def after_step(self) -> None:
        """Called after each optimizer step (EMA updates and similar)."""

    def epoch_stats(self) -> dict[str, float]:
        """Method-specific statistics of the epoch so far (e.g. margin pass fraction); resets them."""
        return {}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def extra_state_bytes(self) -> int:
        """Memory held by buffers outside the network (caches, banks, queues, EMA copies)."""
        own = {id(b) for b in self.model.buffers()}
        return sum(b.numel() * b.element_size() for b in self.buffers() if id(b) not in own)
