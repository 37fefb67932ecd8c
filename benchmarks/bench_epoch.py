"""Target 3: a kdlab training epoch against a reference epoch built the way the field's reference code
builds it, same model (resnet20), same data (the CIFAR-10 copy in ../shared/data), CPU, batch 64.

Reference: a torch DataLoader over PIL images (as torchvision's CIFAR10 dataset holds them) with per-sample
RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize in worker processes, the model in
the default memory format, plain SGD. ``--reference torchvision`` uses torchvision's own transforms (it
installs beside torch 2.14.1: ``pip install torch==2.14.1 torchvision==0.29.1``); ``--reference pil`` a
per-sample re-creation with PIL and NumPy (same operations, same order, same zero fill) for environments
without torchvision; ``auto`` (default) takes torchvision when it imports.

kdlab rows: uint8 data resident on the device, batched crop/flip/normalise, channels_last, kdlab's optimizer
(fused SGD), optionally torch.compile -- first as a bare loop over kdlab's loader, then as kdlab's real
Trainer (``run_teacher`` with the CE objective: schedule, per-step bookkeeping, TensorBoard off) on a
stratified subset of ``steps * 64`` images, timed on its second epoch. Figures are time per image.

    python benchmarks/bench_epoch.py --steps 150 [--compile]
    python benchmarks/bench_epoch.py --device cuda --arch resnet56 --amp bf16 --steps 300   # GPU target 6

A last row trains on one pre-normalised batch already on the device (no input path at all): kdlab's
img/s as a fraction of it says whether the input path is the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from _common import machine, md_table
from kdlab.experiment.schema import build_config
from kdlab.data import DeviceLoader, augment_for, load_dataset
from kdlab.experiment.stages import run_teacher
from kdlab.engine.trainer import build_optimizer
from kdlab.models import build_model

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CIFARReference(torch.utils.data.Dataset):
    """Images held as an (N, 32, 32, 3) uint8 array and turned into PIL images one at a time, as torchvision's
    CIFAR10 (which RepDistiller and mdistiller use) does; ``transform`` is applied to each."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def torchvision_transform():
    from torchvision import transforms as T

    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])


def pil_transform(img: Image.Image) -> torch.Tensor:
    """The same four transforms re-created with PIL and NumPy, for environments without torchvision."""
    padded = Image.new("RGB", (40, 40))  # RandomCrop(32, padding=4): zero-pad, then crop at a random offset
    padded.paste(img, (4, 4))
    x, y = random.randint(0, 8), random.randint(0, 8)
    img = padded.crop((x, y, x + 32, y + 32))
    if random.random() < 0.5:  # RandomHorizontalFlip
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)  # ToTensor
    return (t - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]  # Normalize


def reference_transform(kind: str):
    if kind in ("auto", "torchvision"):
        try:
            return "torchvision transforms", torchvision_transform()
        except ImportError:
            if kind == "torchvision":
                raise SystemExit("--reference torchvision: torchvision does not import here; "
                                 "pip install torch==2.14.1 torchvision==0.29.1, or use --reference pil")
    return "PIL/NumPy re-creation of torchvision's transforms", pil_transform


def train_steps(model, batches, steps: int, device: torch.device, opt, amp: bool = False) -> float:
    """Seconds per image over ``steps`` SGD steps (after 3 warm-up steps)."""
    model.train()
    it = iter(batches)
    start = None
    for step in range(steps + 3):
        if step == 3:  # warm-up done (worker start, first compiled graph)
            _sync(device)
            start = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - start) / (steps * 64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_epoch(a, device: torch.device) -> float:
    """Seconds per image of kdlab's own Trainer (CE teacher) on its second epoch of ``steps * 64`` images."""
    cfg = build_config(overrides=[
        "data.name=imagefolder", f"data.root={ARCHIVE}", f"data.subset={a.steps * 64}", "data.test_subset=512",
        "data.batch_size=64", f"teacher.arch={a.arch}", "teacher.epochs=2", "objective.kind=ce",
        f"runtime.device={a.device}", f"runtime.amp={a.amp}", f"runtime.compile={a.compile}",
        "runtime.progress=false", "runtime.tensorboard=false",
    ])
    with tempfile.TemporaryDirectory() as tmp:
        run_teacher(cfg, Path(tmp) / "run")
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    return records[1]["step_time_ms"] / 1000 / 64


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off", help="bf16 autocast for the kdlab rows")
    ap.add_argument("--reference", choices=["auto", "torchvision", "pil"], default="auto")
    a = ap.parse_args()
    device, amp = torch.device(a.device), a.amp == "bf16"
    train, _ = load_dataset("imagefolder", str(ARCHIVE))
    images = train.images.permute(0, 2, 3, 1).contiguous().numpy()
    labels = train.labels.numpy()
    ref_kind, transform = reference_transform(a.reference)

    rows = []
    torch.manual_seed(0)
    ref_loader = torch.utils.data.DataLoader(CIFARReference(images, labels, transform), batch_size=64, shuffle=True,
                                             num_workers=a.workers, drop_last=True, persistent_workers=True,
                                             pin_memory=device.type == "cuda")
    model = build_model(a.arch, 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    t_ref = train_steps(model, ((x, y) for x, y in ref_loader), a.steps, device, opt)
    del ref_loader  # stop its workers before timing kdlab
    rows.append(["reference: DataLoader + PIL per-sample, NCHW", 1 / t_ref, 1.0])

    def kdlab_batches():
        loader = DeviceLoader(train, batch_size=64, device=device, augment=augment_for(train), shuffle=True,
                              drop_last=True, seed=0, channels_last=True)
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for b in loader:
                yield b.views[0], b.labels
            epoch += 1

    def kdlab_model():
        torch.manual_seed(0)
        model = build_model(a.arch, 10).to(device, memory_format=torch.channels_last)
        opt = build_optimizer(list(model.parameters()), build_config().teacher.optim)
        return model, opt

    model, opt = kdlab_model()
    t = train_steps(torch.compile(model) if a.compile else model, kdlab_batches(), a.steps, device, opt, amp)
    rows.append([f"kdlab loop: device-resident batched aug, channels_last{' + compile' if a.compile else ''}",
                 1 / t, t / t_ref])
    t = trainer_epoch(a, device)
    rows.append([f"kdlab Trainer epoch (run_teacher, CE){' + compile' if a.compile else ''}", 1 / t, t / t_ref])
    # the model alone: one batch already normalised on the device, reused every step
    fixed = next(kdlab_batches())
    model, opt = kdlab_model()
    t_model = train_steps(torch.compile(model) if a.compile else model, iter(lambda: fixed, None), a.steps,
                          device, opt, amp)
    rows.append(["model only (no input path)", 1 / t_model, t_model / t_ref])
    print(f"machine: {machine()}; {a.arch}, batch 64, {a.steps} timed steps, {a.workers} reference workers "
          f"({ref_kind}), amp {a.amp}\n")
    print(md_table(["pipeline", "img/s", "time ratio vs reference"], rows))
    print(f"\nkdlab img/s as a fraction of the model alone: loop {rows[1][1] / rows[-1][1]:.2f}, "
          f"Trainer {rows[2][1] / rows[-1][1]:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    main()
