"""k networks of one architecture computed as one program (the building block of teacher groups, issue 16).

``stack_networks(nets, strategy)`` takes k networks built and initialised separately (as k separate runs
would build them) and returns one module whose ``forward`` computes all k forwards at once and returns k
:class:`ModelOutput` (logits, pooled, stages, preacts exactly as each copy's own network returns them).
Its parameters hold the k copies' parameters, so ``sum_i loss_i`` backpropagated through it gives each copy
its own gradient, and one optimizer step over it is k separate steps for any optimizer whose update is
elementwise (SGD with momentum / weight decay / Nesterov, Adam, AdamW) -- not for one that uses a norm over a
whole tensor (LARS, LAMB) nor for gradient clipping by a global norm, which would mix the copies.

Inputs: ``x`` of shape ``(B, C, H, W)`` is one batch every copy sees (teacher variants with the same seed);
``(k, B, C, H, W)`` (or a list of k batches) gives copy ``i`` its own batch ``x[i]``.

Two strategies:

``"grouped"`` (:class:`GroupedNets`)
    One network whose every channel dimension is the k copies' channels concatenated: a conv becomes a conv
    with ``k·groups`` groups and its weight the copies' weights concatenated along the output channels;
    BatchNorm over ``k·C`` channels is per channel, so its batch statistics and running statistics are each
    copy's own; a linear layer is k products, one per copy's slice of its input. The family's own ``forward``
    runs unchanged on the wide tensors, which is exact only when everything between those layers acts on each
    channel alone (ReLU, sums, pooling, flatten of a 1×1 map), so only the families checked for that are
    accepted (:data:`GROUPED_FAMILIES`); anything else is refused with one line. The shared-input stem is a
    plain conv with ``k·C_out`` outputs.
``"vmap"`` (:class:`VmapNets`)
    ``torch.func.stack_module_state`` stacks each parameter and buffer into a ``(k, ...)`` tensor and
    ``vmap(functional_call(...))`` maps the copy dimension over them. BatchNorm in train mode works because the
    stacked buffers are passed in *batched* (``in_dims=0``): the in-place running-mean/var and
    ``num_batches_tracked`` updates then land in each copy's slice of the stacked buffer (an unbatched buffer
    with a batched input is what vmap refuses). Dropout in train mode is refused by vmap's default
    ``randomness="error"``; both strategies refuse networks with dropout (a copy's masks could not equal its
    separate run's). Limit: a copy's outputs are slices of vmap's stacked outputs, so ``outs[i].pooled`` is not
    an ancestor of ``outs[i].logits`` and ``autograd.grad(loss_i, outs[i].pooled)`` fails (the intra objective's
    gradnorm λ needs it; the grouped strategy hands out the classifier's own input, where it works).

State: :meth:`StackedNets.copy_state_dict` returns copy ``i``'s state dict with the separate network's keys
(checkpoints stay RepDistiller-style); :meth:`StackedNets.write_back` loads every copy into k networks;
:meth:`StackedNets.copy_grads` and :meth:`StackedNets.copy_optimizer_state` give copy ``i``'s gradients and
optimizer state (momentum buffers) under the separate network's parameter names, and
:meth:`StackedNets.load_copy_optimizer_state` puts such a state back (a resumed run's momentum).

Layout: ``to_channels_last()`` (not ``Module.to(memory_format=...)``, which cannot lay out vmap's 5-D stacks).
Under vmap, channels-last inputs reach ``adaptive_avg_pool2d`` through a batching fallback (a PyTorch warning
about ``as_strided_``); results are unaffected.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models.base import ModelOutput
from kdlab.models.mobilenetv2 import MobileNetV2
from kdlab.models.resnet import CifarResNet
from kdlab.models.resnetv2 import ResNetV2
from kdlab.models.vgg import VGG
from kdlab.models.wrn import WideResNet

Strategy = Literal["grouped", "vmap"]

# Families whose forward acts on each channel alone between its conv / BN / linear layers.
GROUPED_FAMILIES: tuple[type[nn.Module], ...] = (CifarResNet, WideResNet, ResNetV2, VGG, MobileNetV2)


class StackedNets(nn.Module):
    """k copies of one architecture as one module; ``forward(x)`` returns k :class:`ModelOutput`."""

    k: int

    def copy_state_dict(self, i: int) -> dict[str, Tensor]:
        """Copy ``i``'s state dict: the separate network's keys, in its order, as fresh tensors."""
        raise NotImplementedError

    def stacked_parameters(self) -> dict[str, Tensor]:
        """The stacked parameter holding each of the separate network's parameters, by its name there."""
        raise NotImplementedError

    def part(self, stacked: Tensor, i: int) -> Tensor:
        """Copy ``i``'s slice (a view) of a tensor laid out like a stacked parameter (its grad, its momentum)."""
        raise NotImplementedError

    def copy_grads(self, i: int) -> dict[str, Tensor | None]:
        """Copy ``i``'s gradients keyed by the separate network's parameter names (None where no gradient)."""
        return {n: None if p.grad is None else self.part(p.grad, i).clone() for n, p in self.stacked_parameters().items()}

    def copy_optimizer_state(self, optimizer: torch.optim.Optimizer, i: int) -> dict[str, dict[str, Tensor]]:
        """Copy ``i``'s per-parameter optimizer state (SGD's ``momentum_buffer``, Adam's moments; scalars such as
        ``step`` as they are) keyed by the separate network's parameter names, for checkpoints of the copy."""
        out: dict[str, dict[str, Tensor]] = {}
        for n, p in self.stacked_parameters().items():
            state = optimizer.state.get(p, {})
            out[n] = {key: self.part(v, i).clone() if isinstance(v, Tensor) and v.shape == p.shape else
                      (v.clone() if isinstance(v, Tensor) else v) for key, v in state.items()}
        return out

    def load_copy_optimizer_state(self, optimizer: torch.optim.Optimizer, i: int,
                                  state_by_name: dict[str, dict[str, Tensor]]) -> None:
        """The inverse of :meth:`copy_optimizer_state`: put copy ``i``'s optimizer state (keyed by the separate
        network's parameter names, e.g. a resumed run's momentum buffers) into ``optimizer``'s state of the
        stacked parameters.

        A tensor shaped like the copy's parameter goes into copy ``i``'s slice of the stacked state (created as
        zeros laid out like the stacked parameter when absent; other copies' slices are left alone). Anything
        else (Adam's ``step``) is shared by the copies: it is set when absent and must otherwise be equal, since
        one optimizer steps every copy (ValueError)."""
        params = self.stacked_parameters()
        unknown = sorted(set(state_by_name) - set(params))
        if unknown:
            raise ValueError(f"optimizer state for parameters the network does not have: {unknown[:3]}")
        for name, state in state_by_name.items():
            p = params[name]
            dest = optimizer.state[p]
            own_shape = self.part(p, i).shape
            for key, v in state.items():
                if isinstance(v, Tensor) and v.shape == own_shape and v.dim() > 0:
                    if key not in dest:
                        dest[key] = torch.zeros_like(p)
                    with torch.no_grad():
                        self.part(dest[key], i).copy_(v)
                elif key not in dest:
                    dest[key] = v.clone() if isinstance(v, Tensor) else v
                elif not _same_value(dest[key], v):
                    raise ValueError(f"copy {i}'s optimizer state {name}.{key} = {v} differs from the other copies' "
                                     f"{dest[key]}: one optimizer cannot step copies at different {key}s")

    def to_channels_last(self) -> StackedNets:
        """Lay the conv weights (and hence the inputs) out channels-last, in place; returns ``self``."""
        raise NotImplementedError

    def write_back(self, nets: Sequence[nn.Module]) -> None:
        """Load each copy's parameters and buffers into ``nets[i]`` (strict)."""
        if len(nets) != self.k:
            raise ValueError(f"write_back needs {self.k} networks, got {len(nets)}")
        for i, net in enumerate(nets):
            net.load_state_dict(self.copy_state_dict(i), strict=True)

    def _split_input(self, x: Tensor | Sequence[Tensor]) -> tuple[Tensor, bool]:
        """``(x, shared)``: a 4-D batch is shared by every copy; ``(k, B, ...)`` or k batches are per copy."""
        if not isinstance(x, Tensor):
            x = torch.stack(list(x))
        if x.dim() == 5:
            if x.shape[0] != self.k:
                raise ValueError(f"per-copy input needs {self.k} batches on dim 0, got shape {tuple(x.shape)}")
            return x, False
        if x.dim() != 4:
            raise ValueError(f"input must be (B, C, H, W) shared or (k, B, C, H, W) per copy, got {tuple(x.shape)}")
        return x, True


def _same_value(a, b) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return torch.equal(torch.as_tensor(a).cpu(), torch.as_tensor(b).cpu())
    return a == b


def _check_same(nets: Sequence[nn.Module]) -> None:
    if len(nets) < 2:
        raise ValueError(f"stacking needs at least 2 networks, got {len(nets)}")
    first = nets[0]
    shapes = {k: (v.shape, v.dtype, v.device) for k, v in first.state_dict().items()}
    for i, net in enumerate(nets[1:], 1):
        if type(net) is not type(first):
            raise ValueError(f"network {i} is a {type(net).__name__}, network 0 a {type(first).__name__}")
        other = {k: (v.shape, v.dtype, v.device) for k, v in net.state_dict().items()}
        if other != shapes:
            raise ValueError(f"network {i} differs from network 0 in its state-dict keys, shapes, dtypes or devices")
        if net.training != first.training:
            raise ValueError("the networks must all be in train mode or all in eval mode")


def stack_refusal(net: nn.Module, strategy: Strategy = "grouped") -> str | None:
    """Why copies of ``net`` cannot be stacked with ``strategy`` (None when they can): what the strategy's
    constructor would refuse, asked before building the copies."""
    return _grouped_refusal(net) if strategy == "grouped" else _dropout_refusal(net, "vmap")


def stack_networks(nets: Sequence[nn.Module], strategy: Strategy = "grouped") -> StackedNets:
    """One :class:`StackedNets` over ``nets`` (k ≥ 2 networks of one architecture); the nets are not modified."""
    if strategy == "grouped":
        return GroupedNets(nets)
    if strategy == "vmap":
        return VmapNets(nets)
    raise ValueError(f"unknown stacking strategy {strategy!r}: 'grouped' or 'vmap'")


# ---------------------------------------------------------------------------------------------- grouped


class _StackedConv2d(nn.Conv2d):
    """k convs as one conv of ``k·groups`` groups; weight = the k weights concatenated on dim 0.

    A shared input (``in_channels / k`` channels, the stem) is convolved with all ``k·C_out`` filters at once.
    """

    def __init__(self, convs: Sequence[nn.Conv2d]):
        c, k = convs[0], len(convs)
        if c.padding_mode != "zeros":
            raise ValueError(f"grouped stacking supports zero-padded convs only, got padding_mode={c.padding_mode!r}")
        super().__init__(k * c.in_channels, k * c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                         k * c.groups, c.bias is not None, device=c.weight.device, dtype=c.weight.dtype)
        self.k, self.copy_groups = k, c.groups
        with torch.no_grad():
            self.weight.copy_(torch.cat([m.weight for m in convs]))
            if self.bias is not None:
                self.bias.copy_(torch.cat([m.bias for m in convs]))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] * self.k == self.in_channels:  # one input shared by the k copies
            if self.copy_groups == 1:
                return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, 1)
            x = x.repeat(1, self.k, 1, 1)
        return super().forward(x)


class _StackedLinear(nn.Module):
    """k linear layers on ``(B, k·D)`` → ``(B, k·N)``; weight ``(k·N, D)``, bias ``(k·N)``.

    Each copy's product is its own ``F.linear`` on its own view of the input (the separate network's
    computation, and cheap beside the convs). The views and outputs of the last call are kept in ``last`` so
    that :class:`GroupedNets` can return, for the classifier, each copy's ``pooled`` as the very tensor its
    logits were computed from: ``autograd.grad(loss_i, pooled_i)`` then works as on a separate network.
    """

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        self.k = len(linears)
        self.in_features, self.out_features = linears[0].in_features, linears[0].out_features
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in linears]).clone())
        has_bias = linears[0].bias is not None
        self.bias = nn.Parameter(torch.cat([m.bias.detach() for m in linears]).clone()) if has_bias else None
        self.last: tuple[Tensor, tuple[Tensor, ...], list[Tensor]] | None = None

    def forward(self, x: Tensor) -> Tensor:
        xs = x.unflatten(1, (self.k, self.in_features)).unbind(1)
        ws = self.weight.chunk(self.k)
        bs = self.bias.chunk(self.k) if self.bias is not None else [None] * self.k
        outs = [F.linear(xi, wi, bi) for xi, wi, bi in zip(xs, ws, bs)]
        self.last = (x, xs, outs)
        return torch.cat(outs, 1)


def _stacked_bn(bns: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b, k = bns[0], len(bns)
    for m in bns[1:]:
        if (m.eps, m.momentum, m.affine, m.track_running_stats) != (b.eps, b.momentum, b.affine, b.track_running_stats):
            raise ValueError("grouped stacking needs the same BatchNorm settings (eps, momentum, affine) in every copy")
        if b.track_running_stats and int(m.num_batches_tracked) != int(b.num_batches_tracked):
            raise ValueError("grouped stacking needs every copy's BatchNorm to have seen the same number of batches")
    p = b.running_mean if b.running_mean is not None else b.weight
    out = nn.BatchNorm2d(k * b.num_features, b.eps, b.momentum, b.affine, b.track_running_stats,
                         device=p.device, dtype=p.dtype)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(out, name) is not None:
                getattr(out, name).copy_(torch.cat([getattr(m, name) for m in bns]))
        if b.track_running_stats:
            out.num_batches_tracked.copy_(b.num_batches_tracked)
    return out


def _grouped_refusal(net: nn.Module) -> str | None:
    if not isinstance(net, GROUPED_FAMILIES):
        names = ", ".join(c.__name__ for c in GROUPED_FAMILIES)
        return (f"grouped stacking does not support {type(net).__name__} (its forward mixes channels or is unchecked; "
                f"supported: {names}); use strategy='vmap'")
    return _dropout_refusal(net, "grouped")


def _dropout_refusal(net: nn.Module, strategy: str) -> str | None:
    if any(getattr(m, "drop_rate", 0.0) > 0 or (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0)
           for m in net.modules()):
        return f"{strategy} stacking does not support dropout (a copy's masks could not equal its separate run's)"
    return None


class GroupedNets(StackedNets):
    """The ``"grouped"`` strategy: one network of ``k``-times wider, grouped layers (see the module docstring)."""

    def __init__(self, nets: Sequence[nn.Module]):
        super().__init__()
        _check_same(nets)
        why = _grouped_refusal(nets[0])
        if why:
            raise ValueError(why)
        self.k = len(nets)
        body = copy.deepcopy(nets[0])
        for name, _ in list(body.named_modules()):
            parent = body.get_submodule(name)
            for child_name, child in list(parent.named_children()):
                path = f"{name}.{child_name}" if name else child_name
                copies = [net.get_submodule(path) for net in nets]
                if isinstance(child, nn.Conv2d):
                    setattr(parent, child_name, _StackedConv2d(copies))
                elif isinstance(child, nn.BatchNorm2d):
                    setattr(parent, child_name, _stacked_bn(copies))
                elif isinstance(child, nn.Linear):
                    setattr(parent, child_name, _StackedLinear(copies))
                elif any(True for _ in child.parameters(recurse=False)) or any(True for _ in child.buffers(recurse=False)):
                    raise ValueError(f"grouped stacking cannot stack {path} ({type(child).__name__})")
        own = [n for n, _ in body.named_parameters(recurse=False)] + [n for n, _ in body.named_buffers(recurse=False)]
        if own:
            raise ValueError(f"grouped stacking cannot stack the top-level tensors {own}")
        self.body = body
        self._stem = [next(m for m in body.modules() if isinstance(m, nn.Conv2d))]  # not a second registration
        self._head = [next((m for m in body.get_classifier().modules() if isinstance(m, _StackedLinear)), None)]
        self._keys = list(nets[0].state_dict().keys())
        if list(body.state_dict().keys()) != self._keys:  # the stacked layers keep every name
            raise ValueError("grouped stacking changed the state-dict keys (an unsupported layer type)")

    def forward(self, x: Tensor | Sequence[Tensor]) -> list[ModelOutput]:
        x, shared = self._split_input(x)
        if not shared:  # (k, B, C, H, W) -> (B, k·C, H, W): copy i's channels are block i
            k, b, c, h, w = x.shape
            x = x.transpose(0, 1).reshape(b, k * c, h, w)
        stem = self._stem[0].weight
        if stem.dim() == 4 and stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous():
            x = x.contiguous(memory_format=torch.channels_last)
        out: ModelOutput = self.body(x)
        split = lambda t: t.unflatten(1, (self.k, -1)).unbind(1)
        logits, pooled = split(out.logits), split(out.pooled)
        head = self._head[0]
        if head is not None and head.last is not None:
            fed, views, outs = head.last
            head.last = None  # hold no graph between steps
            if fed is out.pooled:  # the classifier read the pooled features: hand out its own views
                pooled, logits = views, outs
        stages = [split(t) for t in out.stages]
        preacts = [split(t) for t in out.preacts]
        return [ModelOutput(logits[i], pooled[i], [s[i] for s in stages], [p[i] for p in preacts])
                for i in range(self.k)]

    def copy_state_dict(self, i: int) -> dict[str, Tensor]:
        sd = self.body.state_dict()
        return {key: (sd[key].chunk(self.k)[i] if sd[key].dim() else sd[key]).detach().clone() for key in self._keys}

    def to_channels_last(self) -> GroupedNets:
        return self.to(memory_format=torch.channels_last)

    def stacked_parameters(self) -> dict[str, Tensor]:
        return dict(self.body.named_parameters())

    def part(self, stacked: Tensor, i: int) -> Tensor:
        return stacked.chunk(self.k)[i]


# ------------------------------------------------------------------------------------------------- vmap


def _cl_slices(t: Tensor) -> Tensor:
    """A ``(k, N, C, H, W)`` tensor whose every ``t[i]`` is channels-last."""
    return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def _mangle(name: str) -> str:
    return name.replace(".", "__")


class VmapNets(StackedNets):
    """The ``"vmap"`` strategy: stacked ``(k, ...)`` parameters and buffers, ``vmap`` over ``functional_call``."""

    def __init__(self, nets: Sequence[nn.Module]):
        super().__init__()
        _check_same(nets)
        why = _dropout_refusal(nets[0], "vmap")
        if why:
            raise ValueError(why)
        self.k = len(nets)
        params, buffers = torch.func.stack_module_state(list(nets))
        self._params = {n: _mangle(n) for n in params}
        self._buffers_map = {n: _mangle(n) for n in buffers}
        for n, t in params.items():
            self.register_parameter(_mangle(n), nn.Parameter(t.detach().clone()))
        for n, t in buffers.items():
            self.register_buffer(_mangle(n), t.detach().clone())
        self._keys = list(nets[0].state_dict().keys())
        self._channels_last = False
        # The architecture without tensors, kept outside the module tree so it adds no parameters.
        self._base = [copy.deepcopy(nets[0]).to("meta")]

    def forward(self, x: Tensor | Sequence[Tensor]) -> list[ModelOutput]:
        x, shared = self._split_input(x)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last) if shared else _cl_slices(x)
        base = self._base[0]
        base.train(self.training)
        params = {n: getattr(self, m) for n, m in self._params.items()}
        buffers = {n: getattr(self, m) for n, m in self._buffers_map.items()}

        def one(p: dict[str, Tensor], b: dict[str, Tensor], xi: Tensor) -> ModelOutput:
            return torch.func.functional_call(base, (p, b), (xi,))

        out: ModelOutput = torch.func.vmap(one, in_dims=(0, 0, None if shared else 0))(params, buffers, x)
        return [ModelOutput(out.logits[i], out.pooled[i], [s[i] for s in out.stages], [p[i] for p in out.preacts])
                for i in range(self.k)]

    def copy_state_dict(self, i: int) -> dict[str, Tensor]:
        names = {**self._params, **self._buffers_map}
        return {key: getattr(self, names[key])[i].detach().clone() for key in self._keys}

    def to_channels_last(self) -> VmapNets:
        """Each copy's 4-D conv weight channels-last inside its ``(k, O, I, kh, kw)`` stack (``Module.to`` cannot
        do this: it would read the 5-D stack as a 3-D volume); per-copy inputs get the same layout."""
        with torch.no_grad():
            for m in self._params.values():
                p = getattr(self, m)
                if p.dim() == 5:
                    p.data = _cl_slices(p.data)
        self._channels_last = True
        return self

    def stacked_parameters(self) -> dict[str, Tensor]:
        return {n: getattr(self, m) for n, m in self._params.items()}

    def part(self, stacked: Tensor, i: int) -> Tensor:
        return stacked[i]


__all__ = ["GROUPED_FAMILIES", "GroupedNets", "StackedNets", "Strategy", "VmapNets", "stack_networks", "stack_refusal"]
