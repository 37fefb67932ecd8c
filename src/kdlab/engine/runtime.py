"""Device, precision, memory layout, seeding: resolved once from ``RuntimeConfig``."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from kdlab.config import ConfigError, RuntimeConfig
from kdlab.engine.distributed import DistInfo, init_distributed


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    compile: bool
    progress: bool
    dist: DistInfo = DistInfo()
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm (only ever true for several CUDA ranks)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model


def resolve_runtime(cfg: RuntimeConfig) -> Runtime:
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"runtime.device={cfg.device} but this machine has no usable CUDA device "
                "(use runtime.device=cpu or runtime.device=auto)"
            )
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"runtime.device={cfg.device} but only {torch.cuda.device_count()} CUDA device(s) exist")
    on_gpu = device.type == "cuda"
    if cfg.sync_bn and not on_gpu and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # refused before joining the process group: every rank has this config, so every rank stops here
        raise ConfigError(
            f"runtime.sync_bn=true needs CUDA ranks, but this {os.environ['WORLD_SIZE']}-rank run is on the CPU "
            "(PyTorch's SyncBatchNorm does not run on CPU); set runtime.sync_bn=false (BN statistics stay per "
            "rank) or run on GPUs"
        )
    dist = init_distributed(on_gpu)
    if dist.enabled and on_gpu:
        device = torch.device("cuda", dist.local_rank)
    amp = {"auto": torch.bfloat16 if on_gpu else None, "bf16": torch.bfloat16, "off": None}[cfg.amp]
    channels_last = {"auto": True, "on": True, "off": False}[cfg.channels_last]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Set both ways: several runs share one process (the demo, ablation workers).
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = on_gpu and not cfg.deterministic
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)  # peak_mem_mb is per run
    # sync_bn in a single process is a no-op: its batch already is the global batch
    sync_bn = cfg.sync_bn and dist.enabled and on_gpu
    return Runtime(device, amp, channels_last, cfg.compile, cfg.progress and dist.is_main, dist, sync_bn)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on GPU (reset at the start of each run); on CPU the process's max RSS, which also
    counts earlier runs of the same process (the demo, ablation workers)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
