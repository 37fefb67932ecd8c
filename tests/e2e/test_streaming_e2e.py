"""Streaming training crops: the random-resized crop is taken in the decode workers from the full-resolution
image, with a box that is a pure function of (seed, epoch, index, view)."""

from __future__ import annotations


import numpy as np
import torch
from PIL import Image


SPEC = ((0.08, 1.0), (3 / 4, 4 / 3))


def test_streaming_jpeg_folder_trains_end_to_end(tmp_path):
    from kdlab.experiment.schema import load_config
    from kdlab.experiment.stages import run_teacher

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for c in ("cat", "dog"):
            folder = tmp_path / "imgs" / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = int(rng.integers(20, 48)), int(rng.integers(20, 48))
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    cfg = load_config(None, [f"data.root={tmp_path / 'imgs'}", "data.name=imagefolder", "data.streaming=true",
                             "data.image_size=16", "data.workers=0", "data.batch_size=8", "teacher.arch=resnet8",
                             "teacher.epochs=1", "objective.kind=intra", "runtime.progress=false"])
    summary = run_teacher(cfg, tmp_path / "t")
    assert summary["status"] == "done" and summary["metrics"]["epochs"] == 1
    ckpt = torch.load(tmp_path / "t/checkpoints/last.pt", weights_only=True)
    assert ckpt["input_shape"] == [3, 16, 16] and ckpt["num_classes"] == 2
