"""Target 3: a kdlab training epoch against a reference epoch built the way the field's reference code
builds it, same model (resnet20), same data (the CIFAR-10 copy in ../shared/data), CPU, batch 64.

Reference: a torch DataLoader over PIL images with per-sample RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor and Normalize in worker processes, the model in the default memory
format. torchvision does not install beside this machine's PyTorch build, so the transforms are a
faithful per-sample re-creation with PIL and NumPy (same operations, same order, same fill).
kdlab: uint8 data resident on the device, batched crop/flip/normalise, channels_last, optionally
torch.compile. Both train the same number of steps with SGD; the figure is time per image.

    python benchmarks/bench_epoch.py --steps 150 [--compile]
    python benchmarks/bench_epoch.py --device cuda --arch resnet56 --amp bf16 --steps 300   # GPU target 6

A last row trains on one pre-normalised batch already on the device (no input path at all): kdlab's
img/s as a fraction of it says whether the input path is the bottleneck.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from _common import machine, md_table
from kdlab.data import DeviceLoader, augment_for, load_dataset
from kdlab.models import build_model

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PILReference(torch.utils.data.Dataset):
    """Per-sample PIL pipeline, as RepDistiller/mdistiller's CIFAR datasets and torchvision transforms do it."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels  # (N, 32, 32, 3) uint8, like torchvision's CIFAR10.data

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        # RandomCrop(32, padding=4): zero-pad, then crop at a random offset
        padded = Image.new("RGB", (40, 40))
        padded.paste(img, (4, 4))
        x, y = random.randint(0, 8), random.randint(0, 8)
        img = padded.crop((x, y, x + 32, y + 32))
        if random.random() < 0.5:  # RandomHorizontalFlip
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)  # ToTensor
        t = (t - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]  # Normalize
        return t, int(self.labels[i])


def train_steps(model, batches, steps: int, device: torch.device, amp: bool = False) -> float:
    """Seconds per image over ``steps`` SGD steps (after 3 warm-up steps)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off", help="bf16 autocast for the kdlab rows")
    a = ap.parse_args()
    device, amp = torch.device(a.device), a.amp == "bf16"
    train, _ = load_dataset("imagefolder", str(ARCHIVE))
    images = train.images.permute(0, 2, 3, 1).contiguous().numpy()
    labels = train.labels.numpy()

    rows = []
    torch.manual_seed(0)
    ref_loader = torch.utils.data.DataLoader(PILReference(images, labels), batch_size=64, shuffle=True,
                                             num_workers=a.workers, drop_last=True, persistent_workers=True,
                                             pin_memory=device.type == "cuda")
    t_ref = train_steps(build_model(a.arch, 10).to(device), ((x, y) for x, y in ref_loader), a.steps, device)
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

    variants = [("kdlab: device-resident batched aug, channels_last", False)]
    if a.compile:
        variants.append(("kdlab + torch.compile", True))
    for name, comp in variants:
        torch.manual_seed(0)
        model = build_model(a.arch, 10).to(device, memory_format=torch.channels_last)
        if comp:
            model = torch.compile(model)
        t = train_steps(model, kdlab_batches(), a.steps, device, amp)
        rows.append([name, 1 / t, t / t_ref])
    # the model alone: one batch already normalised on the device, reused every step
    fixed = next(kdlab_batches())
    model = build_model(a.arch, 10).to(device, memory_format=torch.channels_last)
    t_model = train_steps(model, iter(lambda: fixed, None), a.steps, device, amp)
    rows.append(["model only (no input path)", 1 / t_model, t_model / t_ref])
    kd_rate = rows[1][1]
    print(f"machine: {machine()}; {a.arch}, batch 64, {a.steps} timed steps, {a.workers} reference workers, "
          f"amp {a.amp}\n")
    print(md_table(["pipeline", "img/s", "time ratio vs reference"], rows))
    print(f"\nkdlab img/s as a fraction of the model alone: {kd_rate / rows[-1][1]:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    main()
