"""Small stand-ins for on-disk datasets, written in their official formats (shared by unit and e2e tests)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_fake_cifar(root: Path, n_per_batch: int = 4, bad_label: bool = False) -> dict[str, np.ndarray]:
    """A CIFAR-10 python-pickle folder (5 train batches + test batch, ``n_per_batch`` images each) as the
    official files are written; ``bad_label`` puts an out-of-range label in data_batch_3."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        if bad_label and name == "data_batch_3":
            labels[0] = 10
        written[name] = (data, labels)
        # as the official files: a dict of bytes keys written with protocol 2
        with open(folder / name, "wb") as fh:
            pickle.dump(
                {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n_per_batch},
                fh,
                protocol=2,
            )
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, fh)
    return written
