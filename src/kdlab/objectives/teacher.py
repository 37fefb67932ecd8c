"""The teacher stage's :class:`TrainMethod`: L_CE plus the configured objective's term.

``objective.kind`` names a plugin of this folder (``ce``, ``intra``, ``supcon``, ``simclr``, ...). A plugin's
term (:class:`ObjectiveTerm`) works on e = normalize(P(pooled)) with the projection head P built here from
``objective.head``; the CE teacher has no term and no head. Each step forwards every view of the batch in one
concatenated pass (``views`` × B images); L_CE is the mean cross-entropy over all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab import registry
from kdlab.config import Strict
from kdlab.data.base import Batch
from kdlab.engine.method import TrainMethod
from kdlab.models.base import ModelOutput


class HeadConfig(Strict):
    """Projection head P for contrastive objectives: e = normalize(P(h))."""

    kind: Literal["none", "linear", "mlp2", "mlp3"] = "mlp2"
    dim: int = Field(128, ge=1, description="embedding size (ignored for kind=none)")
    hidden: int | None = Field(None, ge=1, description="hidden width; None = the backbone feature size")
    bn: bool = True


def build_head(cfg: HeadConfig, in_dim: int) -> nn.Module:
    """Projection head P: none | linear | mlp2 | mlp3 (hidden width defaults to ``in_dim``)."""
    if cfg.kind == "none":
        return nn.Identity()
    if cfg.kind == "linear":
        return nn.Linear(in_dim, cfg.dim)
    hidden = cfg.hidden or in_dim
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range({"mlp2": 1, "mlp3": 2}[cfg.kind]):
        layers += [nn.Linear(width, hidden, bias=not cfg.bn)]
        layers += [nn.BatchNorm1d(hidden)] if cfg.bn else []
        layers += [nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, cfg.dim))
    return nn.Sequential(*layers)


def embedding_dim(head: HeadConfig, feature_dim: int) -> int:
    return feature_dim if head.kind == "none" else head.dim


@dataclass
class ObjectiveContext:
    """Static facts an objective term is built from."""

    num_classes: int
    emb_dim: int  # size of e = normalize(P(h))
    num_train: int  # training-set size (per-sample memories index it)
    epochs: int = 1


@dataclass
class ObjectiveStep:
    """What an objective term sees in one step: every view's rows (``views × B``, view-major)."""

    emb: Tensor  # e = normalize(P(h)), float32 (float64 when the network is float64)
    logits: Tensor
    labels: Tensor
    ids: Tensor  # image index of each row
    b: int  # rows per view
    progress: float  # fractional epoch
    features: Tensor  # h, the backbone's pooled features (shared by L_CE and the term)
    ce: Tensor  # this step's L_CE


class ObjectiveTerm(nn.Module):
    """The teacher objective's term beside L_CE, already weighted (``{"intra": λ·L_Intra}``).

    ``forward`` runs outside autocast. Memories it keeps are buffers (checkpointed with the teacher).
    """

    #: whether the term differentiates a loss with respect to ``ObjectiveStep.features`` (the pooled features
    #: must then be the very tensor the logits were computed from; a vmap-stacked network cannot give that)
    differentiates_features: bool = False

    def forward(self, step: ObjectiveStep) -> dict[str, Tensor]:
        raise NotImplementedError

    def epoch_stats(self) -> dict[str, float]:
        """Statistics of the epoch so far (e.g. margin pass fraction); resets them."""
        return {}


def _at_least_float32(t: Tensor) -> Tensor:
    """float32 for half-precision tensors (bf16 under autocast), the tensor itself otherwise: float32 as before,
    and a float64 network (the equivalence tests) keeps float64 all the way through the term."""
    return t.float() if t.element_size() < 4 else t


def _legacy_term_keys(state: dict, prefix: str, *args) -> None:
    """Checkpoints written before objectives were plugins kept the term's memories on the objective itself
    (``cache.bank``, ``sample_bank``); they now live under ``term.``: rename them so such runs resume."""
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if rest.split(".")[0] in ("cache", "sample_bank", "sample_seen"):
            state[f"{prefix}term.{rest}"] = state.pop(key)


class TeacherObjective(TrainMethod):
    """A teacher network trained with L_CE + the term of ``cfg.kind`` (``cfg``: the ``objective`` section).

    Stackable: its step is the network's forward on :meth:`network_input` followed by
    :meth:`losses_from_output`, so teacher variants of one architecture can train as one stacked program.
    """

    stackable = True

    def __init__(self, net: nn.Module, cfg: Any, *, views: int, num_classes: int, feature_dim: int,
                 num_train: int, epochs: int = 1):
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.views = views
        method = registry.spec(cfg.kind, "objective")
        block = getattr(cfg, cfg.kind, None)
        ctx = ObjectiveContext(num_classes, embedding_dim(cfg.head, feature_dim), num_train, epochs)
        self.term: ObjectiveTerm | None = method.build(block, ctx)
        self.head = build_head(cfg.head, feature_dim) if self.term is not None else None
        self._register_load_state_dict_pre_hook(_legacy_term_keys)

    @property
    def model(self) -> nn.Module:
        return self.net

    def forward_train(self, batch: Batch, progress: float) -> tuple[Tensor, dict[str, Tensor]]:
        return self.losses_from_output(self.net(self.network_input(batch)), batch, progress)

    def network_input(self, batch: Batch) -> Tensor:
        """Every view of the batch, concatenated (``views`` × B images, view-major): one forward for all."""
        return torch.cat(batch.views[: self.views]) if self.views > 1 else batch.views[0]

    def losses_from_output(self, out: ModelOutput, batch: Batch, progress: float) -> tuple[Tensor, dict[str, Tensor]]:
        b = batch.labels.shape[0]
        labels = batch.labels.repeat(self.views)
        losses = {"ce": F.cross_entropy(out.logits, labels, label_smoothing=self.cfg.label_smoothing)}
        if self.term is not None:
            emb = F.normalize(_at_least_float32(self.head(out.pooled)), dim=1)
            step = ObjectiveStep(emb, out.logits, labels, batch.index.repeat(self.views), b, progress,
                                 out.pooled, losses["ce"])
            # similarities at temperature 0.1 need float32: leave autocast for the contrastive term
            with torch.autocast(emb.device.type, enabled=False):
                losses.update(self.term(step))
        return out.logits[:b], losses

    def stacking_refusal(self, strategy: str) -> str | None:
        if strategy == "vmap" and self.term is not None and self.term.differentiates_features:
            return (f"the {self.cfg.kind} objective differentiates its loss with respect to the pooled features, "
                    "which the vmap strategy cannot hand out as the classifier's input; use strategy='grouped'")
        return None

    def epoch_stats(self) -> dict[str, float]:
        return self.term.epoch_stats() if self.term is not None else {}
