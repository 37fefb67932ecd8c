"""Streaming training crops: the random-resized crop is taken in the decode workers from the full-resolution
image, with a box that is a pure function of (seed, epoch, index, view)."""

from __future__ import annotations


import numpy as np
import torch
from PIL import Image


SPEC = ((0.08, 1.0), (3 / 4, 4 / 3))


def _jpeg_folder(root):
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for c in ("cat", "dog"):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = int(rng.integers(20, 48)), int(rng.integers(20, 48))
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")


def test_streaming_loader_leaves_the_global_generator_alone(tmp_path):
    """A run's global random draws (CRD's negatives, dropout) must not depend on how its batches are read, or
    a student group (which reads the loader outside each member's random state) would differ from its runs."""
    from kdlab.data.streaming import StreamingImageFolder, StreamingLoader

    _jpeg_folder(tmp_path / "imgs")
    ds = StreamingImageFolder(tmp_path / "imgs", "train", image_size=16)
    for workers in (0, 1):
        loader = StreamingLoader(ds, batch_size=4, augment=None, shuffle=True, drop_last=True,
                                 device=torch.device("cpu"), channels_last=False, num_workers=workers, seed=0)
        torch.manual_seed(123)
        before = torch.get_rng_state()
        batches = sum(1 for _ in loader)
        assert batches == 4 and torch.equal(torch.get_rng_state(), before), workers


def test_streaming_jpeg_folder_trains_end_to_end(tmp_path):
    from kdlab.experiment.schema import load_config
    from kdlab.experiment.stages import run_teacher

    _jpeg_folder(tmp_path / "imgs")
    cfg = load_config(None, [f"data.root={tmp_path / 'imgs'}", "data.name=imagefolder", "data.streaming=true",
                             "data.image_size=16", "data.workers=0", "data.batch_size=8", "teacher.arch=resnet8",
                             "teacher.epochs=1", "objective.kind=intra", "runtime.progress=false"])
    summary = run_teacher(cfg, tmp_path / "t")
    assert summary["status"] == "done" and summary["metrics"]["epochs"] == 1
    ckpt = torch.load(tmp_path / "t/checkpoints/last.pt", weights_only=True)
    assert ckpt["input_shape"] == [3, 16, 16] and ckpt["num_classes"] == 2
