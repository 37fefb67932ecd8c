"""The output contract every kdlab model follows, and the model registry.

Every model's ``forward(x)`` returns a :class:`ModelOutput`:

* ``logits``  -- ``(B, num_classes)``
* ``pooled``  -- ``(B, D)`` the penultimate (globally pooled) feature that feeds the classifier
* ``stages``  -- list of stage feature maps after activation, stem first (``stages[0]`` is the stem
  output, ``stages[-1]`` the last stage before pooling); the RepDistiller ``is_feat`` list without
  the pooled vector
* ``preacts`` -- the same stages before their final ReLU (for methods that distil pre-activations)

Projector/adapter sizes are read from :func:`probe` (a dummy forward), never hard-coded.
"""

from __future__ import annotations

import difflib
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn


class ModelOutput(NamedTuple):
    logits: Tensor
    pooled: Tensor
    stages: list[Tensor]
    preacts: list[Tensor]


_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Class/function decorator: ``@register_model("resnet20")``. Names are unique."""

    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    _import_zoo()
    return sorted(_MODELS)


def build_model(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a registered model by name, e.g. ``build_model("resnet20", 100)``."""
    _import_zoo()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}.{hint} Available: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)


class Probe(NamedTuple):
    """Shapes seen in a dummy forward: what adapters and projectors are sized from."""

    pooled_dim: int
    stage_shapes: list[tuple[int, ...]]  # (C, H, W) per stage, batch dim dropped
    num_classes: int


@torch.no_grad()
def probe(model: nn.Module, input_shape: tuple[int, int, int]) -> Probe:
    """Run a 2-sample dummy forward in eval mode and report feature shapes (model mode restored)."""
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    out: ModelOutput = model(torch.zeros(2, *input_shape, device=p.device, dtype=p.dtype))
    model.train(was_training)
    return Probe(
        pooled_dim=out.pooled.shape[1],
        stage_shapes=[tuple(s.shape[1:]) for s in out.stages],
        num_classes=out.logits.shape[1],
    )


def _import_zoo() -> None:
    # Importing the package registers every family.
    from kdlab import models  # noqa: F401
