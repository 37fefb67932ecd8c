"""Config sections that do not depend on any method, and the YAML/override helpers under them.

The data, stage (architecture, epochs, optimizer) and runtime sections live here, below the core layer that
reads them. The whole experiment config, with one block per registered method, is assembled in
:mod:`kdlab.experiment.schema`. Errors are :class:`ConfigError` with one line that names the key, what is
wrong and the fix.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, with a one-line message that says how to fix it."""


class Strict(BaseModel):
    """Base of every config section: unknown keys are refused, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


AugmentName = Literal["crop", "flip", "rrc", "color_jitter", "grayscale", "blur", "cutout"]
DatasetName = Literal["digits", "cifar10", "cifar100", "tiny-imagenet", "imagefolder"]


# --------------------------------------------------------------------------------------------- data
class DataConfig(Strict):
    name: DatasetName = "digits"
    root: str | None = Field(None, description="dataset folder or archive; not needed for digits")
    download: bool = False
    subset: int | None = Field(None, ge=1, description="stratified train subset size (CPU-scale studies)")
    test_subset: int | None = Field(None, ge=1)
    split_seed: int = Field(0, ge=0, lt=2**31)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    augment: list[AugmentName] | None = Field(None, description="train augmentation; None = dataset default")
    view_augment: list[AugmentName] | None = Field(
        None, description="augmentation of the extra contrastive views; None = same as augment"
    )
    crop_padding: int | None = Field(None, ge=0, description="None = dataset default (4; 1 for digits)")
    streaming: bool = Field(False, description="imagefolder: decode in worker processes each epoch (ImageNet size)")
    image_size: int = Field(224, ge=8, description="streaming: decoded image side (shorter side resized, centre "
                            "crop; a train view with rrc crops the full-resolution image in the workers instead)")
    workers: int | None = Field(None, ge=0, description="streaming: decode processes (None = cores - 1)")

    @model_validator(mode="after")
    def _streaming_needs_folder(self) -> "DataConfig":
        if self.streaming and (self.name != "imagefolder" or not self.root):
            raise ValueError("data.streaming=true needs data.name=imagefolder and data.root=FOLDER")
        return self


# ------------------------------------------------------------------------------------------ stages
class OptimConfig(Strict):
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        "sgd", description="sgd (the field's CIFAR/ImageNet recipes), adam or adamw (betas 0.9/0.999; momentum "
        "and nesterov are SGD's); set lr to match (1e-3 is Adam's usual)")
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, description="L2 penalty for sgd/adam; decoupled decay for adamw")
    nesterov: bool = False
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[float] = Field(
        [0.625, 0.75, 0.875], description="step decay points as fractions of the epochs (150/180/210 of 240)"
    )
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _nesterov_is_sgd(self) -> "OptimConfig":
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError(f"nesterov applies to SGD only, got optimizer={self.optimizer}; set nesterov=false")
        return self


class StageConfig(Strict):
    arch: str
    epochs: int = Field(240, ge=1)
    optim: OptimConfig = OptimConfig()
    checkpoint: str | None = Field(
        None, description="weights to start from; for the teacher, distill and pipeline use it as the trained "
                          "teacher (no teacher training), train-teacher fine-tunes from it")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from kdlab.models import list_models

        names = list_models()
        if v not in names:
            close = difflib.get_close_matches(v, names, n=3, cutoff=0.4)
            hint = f" did you mean {' or '.join(close)}?" if close else f" choose one of {', '.join(names)}"
            raise ValueError(f"unknown architecture {v!r};{hint}")
        return v


class RuntimeConfig(Strict):
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False
    deterministic: bool = False
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    tensorboard: bool = Field(True, description="write TensorBoard event files when the package is installed")
    sync_bn: bool = Field(False, description="under torchrun on GPUs, BatchNorm statistics over the global batch "
                          "(SyncBatchNorm); a no-op in one process; refused on CPU ranks, which SyncBatchNorm "
                          "does not support")

    @field_validator("amp", "channels_last", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any, info) -> Any:
        """YAML (files and ``key=value`` overrides alike) reads on/off/yes/no as booleans: map them back."""
        if isinstance(v, bool):
            return "off" if not v else ("bf16" if info.field_name == "amp" else "on")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")


# ---------------------------------------------------------------------------------- load / override
def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(tree: dict, dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted='a.b.c'``; unknown keys are caught on validation."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"malformed override key {dotted!r}: expected dotted names like objective.intra.delta")
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found (pass a YAML file, or `kdlab configs` to list shipped ones)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def shipped_configs_dir() -> Path:
    return Path(__file__).parent / "configs"


def shipped_recipes() -> list[str]:
    """Names of the shipped recipes (``demo``, ``cifar100/resnet56_resnet20``, ...); reference tables excluded."""
    root = shipped_configs_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if p.name != "reference.yaml")


def resolve_config_path(name_or_path: str) -> Path:
    """A path, or the name of a shipped recipe (``demo``, ``cifar100/resnet56_resnet20``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = shipped_configs_dir() / (name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml")
    if shipped.is_file():
        return shipped
    names = shipped_recipes()
    close = difflib.get_close_matches(name_or_path, names, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"shipped recipes: {', '.join(names)} (`kdlab configs`)"
    raise ConfigError(f"config {name_or_path!r} not found: neither a file nor a shipped recipe; {hint}")


