"""Target 3: a kdlab training epoch against a reference epoch built the way the field's reference code
builds it, same model (resnet20), same data (the CIFAR-10 copy in ../shared/data), CPU, batch 64.

Reference: a torch DataLoader over PIL images with per-sample RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor and Normalize in worker processes, the model in the default memory
format. torchvision does not install beside this machine's PyTorch build, so the transforms are a
faithful per-sample re-creation with PIL and NumPy (same operations, same order, same fill).
kdlab: uint8 data resident on the device, batched crop/flip/normalise, channels_last, optionally
torch.compile. Both train the same number of steps with SGD; the figure is time per image.

    python benchmarks/bench_epoch.py --steps 150 [--compile]
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


def train_steps(model, batches, steps: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    it = iter(batches)
    start = None
    for step in range(steps + 3):
        if step == 3:  # warm-up done (worker start, first compiled graph)
            start = time.perf_counter()
        x, y = next(it)
        loss = F.cross_entropy(model(x).logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / (steps * 64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    train, _ = load_dataset("imagefolder", str(ARCHIVE))
    images = train.images.permute(0, 2, 3, 1).contiguous().numpy()
    labels = train.labels.numpy()

    rows = []
    torch.manual_seed(0)
    ref_loader = torch.utils.data.DataLoader(PILReference(images, labels), batch_size=64, shuffle=True,
                                             num_workers=a.workers, drop_last=True, persistent_workers=True)
    t_ref = train_steps(build_model("resnet20", 10), ((x, y) for x, y in ref_loader), a.steps)
    rows.append(["reference: DataLoader + PIL per-sample, NCHW", 1 / t_ref, 1.0])

    def kdlab_batches():
        loader = DeviceLoader(train, batch_size=64, device="cpu", augment=augment_for(train), shuffle=True,
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
        model = build_model("resnet20", 10).to(memory_format=torch.channels_last)
        if comp:
            model = torch.compile(model)
        t = train_steps(model, kdlab_batches(), a.steps)
        rows.append([name, 1 / t, t / t_ref])
    print(f"machine: {machine()}; resnet20, batch 64, {a.steps} timed steps, {a.workers} reference workers\n")
    print(md_table(["pipeline", "img/s", "time ratio vs reference"], rows))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    main()
