"""Loading released checkpoints into zoo models, and exporting weights in the same layout.

The RepDistiller / mdistiller CIFAR-100 teachers (``ckpt_epoch_240.pth``) are ``torch.save``-d
dicts ``{'model': state_dict, 'epoch': ..., 'best_acc': ..., 'optimizer': ...}``; the zoo's key
layouts match them, so :func:`load_weights` loads them with ``strict=True`` semantics.

Safety: files are always read with ``torch.load(..., map_location="cpu", weights_only=True)``.
Anything ``weights_only`` refuses (a pickled callable, a whole ``nn.Module``, numpy arrays, ...)
raises :class:`CheckpointError`; there is deliberately no fallback to ``weights_only=False``.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import IO, Any, Union

import torch
from torch import Tensor, nn

PathOrState = Union[str, "os.PathLike[str]", IO[bytes], Mapping[str, Any]]

#: Wrapper keys under which checkpoints commonly store the state dict, tried in this order.
WRAPPER_KEYS = ("model", "state_dict", "net")
#: Key prefixes added by ``nn.DataParallel`` / DDP (``module.``) and ``torch.compile`` (``_orig_mod.``).
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 5
_HINT = "Is this checkpoint for a different architecture or class count?"


class CheckpointError(ValueError):
    """The input is not a loadable checkpoint: unreadable/corrupt, holds no state dict, or was
    refused by ``torch.load(weights_only=True)``."""


class CheckpointMismatch(ValueError):
    """The checkpoint's keys or tensor shapes do not fit the model."""


def read_checkpoint(path_or_state: PathOrState) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint and return ``(state_dict, metadata)``.

    Accepts a path / file object or an already-loaded mapping; a bare state dict or one wrapped as
    ``{'model': sd}``, ``{'state_dict': sd}`` or ``{'net': sd}`` (the other top-level entries, e.g.
    ``epoch`` and ``best_acc``, are returned as metadata). A leading ``module.`` (or ``_orig_mod.``)
    shared by every key is stripped. Raises :class:`CheckpointError` for anything else.
    """
    if isinstance(path_or_state, Mapping):
        obj: Any = path_or_state
        source = "the given checkpoint mapping"
    else:
        is_path = isinstance(path_or_state, (str, os.PathLike))
        source = f"checkpoint {os.fspath(path_or_state)!r}" if is_path else "checkpoint stream"
        obj = safe_torch_load(path_or_state, source)
    state, meta = _unwrap(obj, source)
    return _strip_prefixes(state), meta


def load_weights(model: nn.Module, path_or_state: PathOrState, *, model_name: str) -> nn.Module:
    """Load a checkpoint into ``model`` strictly (every key present, every shape equal).

    ``model`` may be wrapped in ``DataParallel`` / DDP or compiled. Missing ``num_batches_tracked``
    BatchNorm counters (absent from checkpoints saved by very old PyTorch) are tolerated; they do
    not affect inference. Returns ``model``.

    Raises :class:`CheckpointError` when the input is not a (safe) checkpoint and
    :class:`CheckpointMismatch` -- naming the model, the first offending key, missing/unexpected
    keys and shape mismatches -- when it does not fit.
    """
    try:
        state, _ = read_checkpoint(path_or_state)
    except CheckpointError as err:
        raise CheckpointError(f"cannot load weights for model {model_name!r}: {err}") from err.__cause__
    target = _unwrap_model(model)
    expected = target.state_dict()
    state = _fill_bn_counters(state, expected)
    message = _mismatch_message(state, expected, target, model_name)
    if message:
        raise CheckpointMismatch(message)
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:  # not expected after the checks above; keep the error type promise
        raise CheckpointMismatch(f"checkpoint does not fit model {model_name!r}: {err}. {_HINT}") from err
    return model


def state_dict_for_export(model: nn.Module) -> "OrderedDict[str, Tensor]":
    """Detached CPU copy of the weights, in the released layout (no ``module.``/``_orig_mod.``).

    Save it as ``torch.save({'model': state_dict_for_export(m), 'epoch': ...}, path)`` to get a
    RepDistiller-style checkpoint that both :func:`load_weights` and the reference code can read.
    """
    return OrderedDict(
        (k, v.detach().to("cpu", copy=True)) for k, v in _unwrap_model(model).state_dict().items()
    )


# --------------------------------------------------------------------------- helpers


def safe_torch_load(path_or_file: Any, source: str) -> Any:
    """``torch.load(weights_only=True)`` on CPU; anything refused or unreadable raises CheckpointError."""
    try:
        return torch.load(path_or_file, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f"it references the Python object {found.group(1)!r}" if found else "it is not a plain tensor pickle"
            raise CheckpointError(
                f"{source} was refused by torch.load(weights_only=True): {what}. Checkpoints must hold only "
                "tensors and plain containers/numbers; a pickled callable, class instance or whole nn.Module "
                "could run code when unpickled, so kdlab never retries with weights_only=False. If the file "
                "comes from a trusted source, re-save just its state dict: "
                "torch.save({'model': model.state_dict()}, path)."
            ) from err
        raise CheckpointError(f"{source} is not a valid PyTorch checkpoint ({type(err).__name__}: {text})") from err
    except Exception as err:  # corrupt / truncated / foreign files surface as many error types
        detail = str(err) or "no details"
        raise CheckpointError(f"{source} is not a valid PyTorch checkpoint ({type(err).__name__}: {detail})") from err


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _unwrap(obj: Any, source: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict or a dict wrapping one")
    if _is_state_dict(obj):
        return dict(obj), {}
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if _is_state_dict(inner):
            return dict(inner), {k: v for k, v in obj.items() if k != key}
    listed = ", ".join(repr(k) for k in list(obj)[:10]) or "none"
    raise CheckpointError(
        f"{source} holds no state dict: expected a mapping of parameter names to tensors, or one under "
        f"{', '.join(repr(k) for k in WRAPPER_KEYS)}; top-level keys: {listed}"
    )


def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def _unwrap_model(model: nn.Module) -> nn.Module:
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile wrapper
            model = model._orig_mod
        else:
            return model


def _fill_bn_counters(state: dict[str, Tensor], expected: Mapping[str, Tensor]) -> dict[str, Tensor]:
    missing = [k for k in expected if k.endswith("num_batches_tracked") and k not in state]
    if not missing:
        return state
    state = dict(state)
    for k in missing:
        state[k] = expected[k].detach().clone()
    return state


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _listing(items: list[str]) -> str:
    shown = "; ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f"; ... and {more} more" if more > 0 else "")


def _mismatch_message(state: Mapping[str, Tensor], expected: Mapping[str, Tensor], target: nn.Module,
                      model_name: str) -> str | None:
    """One human-readable message describing every way ``state`` misses ``expected``, or None."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and _shape(state[k]) != _shape(expected[k])]
    if not (missing or unexpected or reshaped):
        return None
    bad_in_model_order = [k for k in expected if k in missing or k in reshaped]
    first = bad_in_model_order[0] if bad_in_model_order else unexpected[0]
    lines = [f"checkpoint does not fit model {model_name!r} (first mismatching key: {first!r})"]
    if reshaped:
        lines.append(f"  shape mismatches ({len(reshaped)}): " + _listing(
            [f"{k}: checkpoint {_shape(state[k])} vs model {_shape(expected[k])}" for k in reshaped]))
    if missing:
        lines.append(f"  missing keys ({len(missing)}): " + _listing(missing))
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): " + _listing(unexpected))
    lines.append(_hint(state, expected, target, reshaped, missing, unexpected))
    return "\n".join(lines)


def _hint(state, expected, target, reshaped, missing, unexpected) -> str:
    """The generic hint, made specific when only the classifier's output size differs."""
    get_head = getattr(target, "get_classifier", None)
    if not callable(get_head) or missing or unexpected or not reshaped:
        return _HINT
    head = get_head()
    prefix = next((f"{name}." for name, m in target.named_modules() if m is head), None)
    if prefix is None or not all(k.startswith(prefix) for k in reshaped):
        return _HINT
    weight = next((k for k in reshaped if k.endswith("weight")), reshaped[0])
    ckpt_classes, model_classes = _shape(state[weight])[0], _shape(expected[weight])[0]
    return (f"{_HINT} Only the classifier differs: the checkpoint has {ckpt_classes} classes, the model "
            f"{model_classes}; build the model with num_classes={ckpt_classes}.")
