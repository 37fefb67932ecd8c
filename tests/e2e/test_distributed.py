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
    # printed once (rank 0), and the figure printed is the one recorded: rank 0's network on the whole test split
    assert proc.stdout.count("teacher: top-1") == 1, proc.stdout
    assert f"teacher: top-1 {summary['metrics']['top1']:.2f}" in proc.stdout
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 alone writes
    ckpt = torch.load(run / "checkpoints/last.pt", weights_only=True)
    # both ranks' anchors reach the cache: 2 ranks x 16 images x 7 steps x 2 epochs, 10 classes of 64 slots
    fill = ckpt["method"]["term.cache.fill"]
    assert int(fill.sum()) > 7 * 2 * 16  # more than one rank alone could have pushed


# ------------------------------------------------------------------ ranks stop together (NaN, signal)
# Each rank is started directly (no torchrun agent, which would kill the other workers as soon as one
# fails and so hide a rank that hangs). The production CLI runs unchanged; only the training loader is
# wrapped so that rank 1 alone meets a fault at one (epoch, step): a batch of NaNs, or a real SIGTERM
# sent to itself while it trains.
RANK_RUNNER = r"""
import os, signal, sys
import torch
from kdlab import cli
from kdlab.experiment import stages

fault, at = sys.argv[1], (int(sys.argv[2]), int(sys.argv[3]))
rank = int(os.environ["RANK"])


class FaultyLoader:
    def __init__(self, inner):
        self.inner, self.epoch = inner, 0

    def __len__(self):
        return len(self.inner)

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self):
        for step, batch in enumerate(self.inner):
            if rank == 1 and (self.epoch, step) == at:
                if fault == "nan":
                    batch = batch._replace(views=[torch.full_like(v, float("nan")) for v in batch.views])
                elif fault == "sigterm":
                    os.kill(os.getpid(), signal.SIGTERM)
            yield batch


real_loaders = stages.DataBundle.loaders


def loaders(self, cfg, rt, views):
    train, test = real_loaders(self, cfg, rt, views)
    return FaultyLoader(train), test


stages.DataBundle.loaders = loaders
sys.exit(cli.main(sys.argv[4:]))
"""

# 448 images at a global batch of 16: 28 steps an epoch, so step 25 (index 24) is a mid-epoch sync point
SYNCED = [*TINY, "data.subset=448", "data.batch_size=16", "objective.kind=intra", "teacher.epochs=3"]
HANG_S = 300  # far above a healthy run (a few seconds an epoch); only a rank stuck in a collective gets here


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(run, fault: str, epoch: int, step: int) -> list[tuple[int, str]]:
    """Run ``train-teacher`` on 2 gloo ranks; each rank's (exit code, stderr). Fails the test on a hang."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        cmd = [sys.executable, "-c", RANK_RUNNER, fault, str(epoch), str(step),
               "train-teacher", *SYNCED, "--run-dir", str(run)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=HANG_S)
            results.append((p.returncode, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        outs = [p.communicate()[1][-1500:] for p in procs]
        raise AssertionError(f"a rank hung for {HANG_S} s (fault={fault}); stderr of each rank: {outs}") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def _epochs(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_nan_on_one_rank_stops_both_ranks_with_the_divergence_error(tmp_path):
    run = tmp_path / "nan"
    (code0, err0), (code1, err1) = _two_ranks(run, "nan", epoch=1, step=24)  # rank 1, epoch 2, step 25
    # rank 1 saw the NaN itself; rank 0's own loss was finite at that step, and it stopped with it anyway;
    # rank 0 alone reports it, once
    assert code1 == 1 and code0 == 1
    assert "loss became non-finite on another rank by epoch 2, step 25" in err0, err0[-2000:]
    assert "the checkpoint of epoch 1 is kept" in err0 and err0.count("error:") == 1
    assert "error" not in err1 and "Traceback" not in err0 + err1, err1[-2000:]
    summary = json.loads((run / "summary.json").read_text())  # rank 0's view
    assert summary["status"] == "failed" and "another rank" in summary["error"]
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] == 1
    assert _epochs(run) == [1]
    assert all(torch.isfinite(v).all() for v in torch.load(run / "checkpoints/last.pt",
                                                           weights_only=True)["model"].values()
               if v.is_floating_point())


def test_sigterm_to_one_rank_stops_both_then_the_rerun_resumes_and_finishes(tmp_path):
    run = tmp_path / "sig"
    # rank 1 alone gets SIGTERM at epoch 2, step 4; the ranks agree at the sync point of step 25
    (code0, err0), (code1, err1) = _two_ranks(run, "sigterm", epoch=1, step=3)
    assert code1 == 130 and code0 == 130
    assert "stopped by a signal to another rank during epoch 2" in err0, err0[-2000:]
    assert "run the same command again to resume from epoch 1" in err0 and "interrupted" not in err1, err1[-2000:]
    for err in (err0, err1):
        assert "Traceback" not in err
        assert "FutureWarning" not in err  # DDP's broadcast_buffers notice is not shown to users
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    ckpts = run / "checkpoints"
    assert torch.load(ckpts / "last.pt", weights_only=True)["epoch"] == 1  # the last completed epoch
    assert not (ckpts / "last.prev.pt").exists()  # written once: one epoch ended, only rank 0 wrote it
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]  # no stray temporary files
    assert _epochs(run) == [1]

    (code0, err0), (code1, err1) = _two_ranks(run, "none", epoch=0, step=0)
    assert code0 == 0 and code1 == 0, err0[-2000:] + err1[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "done"
    assert _epochs(run) == [1, 2, 3]  # each epoch once: resumed after epoch 1, not restarted
    assert torch.load(ckpts / "last.pt", weights_only=True)["epoch"] == 3


# --------------------------------------------------------------------------------------------- SyncBN
# PyTorch's SyncBatchNorm raises in training mode on CPU tensors once a process group exists, so on CPU
# we test what decides and wires it: the clear refusal, the single-process no-op, and the conversion.
def test_sync_bn_on_cpu_ranks_is_refused_before_joining_the_group(tmp_path, monkeypatch, capsys):
    import torch.distributed as dist

    from kdlab.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before any rendezvous is tried
    monkeypatch.setenv("RANK", "0")
    for device in ("cpu", "auto"):  # auto is the CPU here
        run = tmp_path / device
        code = main(["train-teacher", *TINY, "runtime.sync_bn=true", f"runtime.device={device}",
                     "--run-dir", str(run)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("error: runtime.sync_bn=true needs CUDA ranks") and "set runtime.sync_bn=false" in err
        assert not dist.is_initialized() and not run.exists()  # nothing joined, nothing written


def _distillation(tmp_path, rt):
    """A KD + FitNet student (FitNet's regressor holds a BatchNorm) with a frozen resnet8 teacher."""
    from kdlab.experiment.schema import load_config
    from kdlab.distillers import Distillation
    from kdlab.distillers.base import DistillContext
    from kdlab.experiment.stages import DataBundle
    from kdlab.engine.trainer import StageInfo, Trainer
    from kdlab.models import build_model, probe

    cfg = load_config("demo", [*TINY, "data.subset=64", "data.test_subset=32", "distill.methods=[kd,fitnet]",
                               "student.epochs=1"])
    data = DataBundle(cfg)
    shape, k = data.train.image_shape, data.train.num_classes
    student, teacher = build_model("resnet8", num_classes=k, in_channels=shape[0]), build_model(
        "resnet8", num_classes=k, in_channels=shape[0])
    teacher.eval().requires_grad_(False)
    ctx = DistillContext(student_probe=probe(student, shape), teacher_probe=probe(teacher, shape), num_classes=k,
                         num_train=len(data.train), input_shape=shape, epochs=1)
    method = Distillation(student, teacher, cfg.distill, ctx)
    keys = list(method.state_dict())
    train, test = data.loaders(cfg, rt, method.views)
    info = StageInfo("student", "resnet8", k, shape, data.train.name, {})
    trainer = Trainer(method, train, test, epochs=1, optim=cfg.student.optim, runtime=rt, run_dir=tmp_path,
                      info=info, tensorboard=False)
    return trainer, method, teacher, keys


def test_sync_bn_converts_the_trained_networks_and_leaves_the_teacher_alone(tmp_path):
    from torch import nn

    from kdlab.engine.distributed import convert_sync_bn
    from kdlab.engine.runtime import Runtime
    from kdlab.models import build_model

    # the Runtime resolve_runtime gives several CUDA ranks with runtime.sync_bn=true (its only way to be true)
    rt = Runtime(torch.device("cpu"), None, channels_last=False, compile=False, progress=False, sync_bn=True)
    trainer, method, teacher, keys = _distillation(tmp_path, rt)
    bns = [m for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) > 1 and all(isinstance(m, nn.SyncBatchNorm) for m in bns)  # student and FitNet's head
    assert any(isinstance(m, nn.SyncBatchNorm) for m in method.terms["fitnet"].modules())
    teacher_bns = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert teacher_bns and all(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in teacher_bns)
    assert method.teacher is teacher
    # same parameters (the optimizer built before still steps them) and the same checkpoint keys
    trained = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in method.trainable_parameters()}
    assert list(method.state_dict()) == keys
    build_model("resnet8", num_classes=method.model.fc.out_features,
                in_channels=method.model.conv1.in_channels).load_state_dict(method.model.state_dict())

    # a step in one process (SyncBatchNorm falls back to BatchNorm without a process group): the student's
    # statistics move, the teacher stays in eval mode with its statistics untouched
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_s = method.model.state_dict()["bn1.running_mean"].clone()
    trainer.fit()
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(torch.equal(before_t[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(before_s, method.model.state_dict()["bn1.running_mean"])
    assert convert_sync_bn(method) == 0  # already converted: nothing more to do


def test_sync_bn_in_one_process_is_a_no_op(tmp_path):
    from torch import nn

    from kdlab.config import RuntimeConfig
    from kdlab.engine.runtime import resolve_runtime

    rt = resolve_runtime(RuntimeConfig(device="cpu", sync_bn=True, progress=False))
    assert rt.sync_bn is False and not rt.dist.enabled
    _, method, _, _ = _distillation(tmp_path, rt)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in method.modules())
