"""Data parallel on CPU: torchrun with 2 gloo processes, sharded device-resident data, gathered memories."""

import json
import os
import subprocess
import sys

import torch

from kdlab.data import DeviceLoader, augment_for, load_dataset

TINY = ["data.subset=240", "data.test_subset=100", "data.batch_size=32", "teacher.arch=resnet8",
        "student.arch=resnet8", "objective.intra.delta=-0.5", "objective.intra.cache.size=64",
        "runtime.progress=false", "runtime.threads=1", "runtime.tensorboard=false"]


def test_ranks_take_disjoint_slices_of_the_same_permutation():
    train, _ = load_dataset("digits", subset=200)
    whole = DeviceLoader(train, batch_size=32, device="cpu", augment=augment_for(train), shuffle=True,
                         drop_last=True, seed=3)
    ranks = [DeviceLoader(train, batch_size=32, device="cpu", augment=augment_for(train), shuffle=True,
                          drop_last=True, seed=3, rank=r, world_size=2) for r in range(2)]
    for full, a, b in zip(whole, *ranks):
        assert torch.equal(torch.cat([a.index, b.index]), full.index)
        assert a.views[0].shape[0] == 16


def test_torchrun_two_cpu_ranks_train_an_intra_teacher(tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "kdlab.cli", "train-teacher", *TINY, "objective.kind=intra", "teacher.epochs=2", "--run-dir", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 alone writes
    ckpt = torch.load(run / "checkpoints/last.pt", weights_only=True)
    # both ranks' anchors reach the cache: 2 ranks x 16 images x 7 steps x 2 epochs, 10 classes of 64 slots
    fill = ckpt["method"]["cache.fill"]
    assert int(fill.sum()) > 7 * 2 * 16  # more than one rank alone could have pushed
