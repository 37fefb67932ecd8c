"""Quick data-layer measurements: ``python -m kdlab.data.bench [--device cuda] [--archive PATH]``.

Prints augmentation throughput (images/s, batch 256, 32x32 uint8 -> normalised float) per policy, the
DeviceLoader's epoch throughput on that data, and, with ``--archive``, the cold (decode) and warm (cache)
load times of an image-folder archive. Ratios within one run are what to compare; absolute numbers depend
on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from .augment import build_augment
from .base import ArrayDataset
from .loader import DeviceLoader
from .sources import load_dataset

POLICIES = {
    "normalize only": [],
    "crop+flip": ["crop", "flip"],
    "crop+flip+cutout": ["crop", "flip", "cutout"],
    "simclr (rrc+flip+jitter+gray)": ["rrc", "flip", "color_jitter", "grayscale"],
    "all": ["rrc", "crop", "flip", "color_jitter", "grayscale", "blur", "cutout"],
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_augment(device: torch.device, batch: int = 256, size: int = 32, reps: int = 30) -> dict[str, float]:
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(device)
    out = {}
    for name, pol in POLICIES.items():
        aug = build_augment(pol, mean=(0.5,) * 3, std=(0.25,) * 3, image_size=size)
        for _ in range(3):
            aug(x, g)
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            aug(x, g)
        _sync(device)
        out[name] = batch * reps / (time.perf_counter() - t)
    return out


def bench_loader(ds: ArrayDataset, device: torch.device, batch: int = 256) -> float:
    aug = build_augment(["crop", "flip"], mean=ds.mean, std=ds.std, image_size=ds.image_shape[1:])
    dl = DeviceLoader(ds, batch_size=batch, device=device, augment=aug, shuffle=True, drop_last=True, seed=0)
    _sync(device)
    t = time.perf_counter()
    n = sum(len(b.index) for b in dl)
    _sync(device)
    return n / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archive", default=None, help="an image-folder archive, e.g. ../shared/data/cifar10-jpeg.tar.gz")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, intra-op threads {torch.get_num_threads()}")
    for name, ips in bench_augment(device).items():
        print(f"augment {name:32s} {ips:10.0f} img/s (batch 256, 32x32)")
    if args.archive:
        ds = None
        for w in args.workers:
            with tempfile.TemporaryDirectory() as d:
                t = time.perf_counter()
                ds, _ = load_dataset("imagefolder", args.archive, cache_dir=d, workers=w)
                cold = time.perf_counter() - t
                t = time.perf_counter()
                load_dataset("imagefolder", args.archive, cache_dir=d)
                warm = time.perf_counter() - t
            print(
                f"imagefolder {args.archive}: cold load (scan + decode {len(ds)} train + test) {cold:.1f}s with workers={w}; warm (cache) {warm:.2f}s"
            )
    else:
        ds = ArrayDataset(
            torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8),
            torch.arange(50000) % 10,
            [str(i) for i in range(10)],
            "synthetic",
            (0.5,) * 3,
            (0.25,) * 3,
        )
    print(f"DeviceLoader epoch (crop+flip, batch 256) {bench_loader(ds, device):10.0f} img/s")


if __name__ == "__main__":
    main()
