"""Crash safety: SIGKILL at random points, corrupted checkpoints, full disks, unwritable folders."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdlab.cli import main
from kdlab.experiment.schema import load_config
from kdlab.engine import checkpoint as ckpt_mod
from kdlab.experiment.stages import run_teacher

TINY = ["data.subset=240", "data.test_subset=100", "data.batch_size=32", "teacher.arch=resnet8",
        "student.arch=resnet8", "objective.intra.delta=-0.5", "objective.intra.cache.size=8",
        "runtime.progress=false", "runtime.threads=1", "runtime.deterministic=true", "runtime.tensorboard=false"]


def _kdlab(args, **kw):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "kdlab.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _epochs_done(run_dir: Path) -> int:
    p = run_dir / "metrics.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


def _kill_then_finish(args, run_dir: Path, kills: int, rng: random.Random) -> tuple[dict, int]:
    """SIGKILL the command ``kills`` times at random moments, then let it finish; (summary, kills landed)."""
    landed = 0
    for _ in range(kills):
        proc = _kdlab(args)
        target = _epochs_done(run_dir) + rng.choice([0, 1])
        deadline = time.time() + 120
        while proc.poll() is None and _epochs_done(run_dir) < target and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere inside the next epoch, or during a checkpoint write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.communicate(timeout=60)
    proc = _kdlab(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads((run_dir / "summary.json").read_text()), landed


STAGES = {
    "intra-teacher": ["train-teacher", "objective.kind=intra", "teacher.epochs=5"],
    "crd-student": ["distill", "distill.methods=[crd,kd]", "distill.crd.nce_k=64", "student.epochs=4"],
    "cocord-student": ["distill", "distill.methods=[cocord]", "distill.cocord.queue_size=64",
                       "distill.cocord.proj_dim=32", "distill.cocord.proj_hidden=32", "student.epochs=4"],
}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher") / "t"
    summary = run_teacher(load_config("demo", TINY + ["teacher.epochs=1", "objective.kind=ce"]), run)
    return summary["checkpoint"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STAGES))
def test_sigkill_at_random_points_then_rerun_matches_uninterrupted(tmp_path, name, teacher_ckpt):
    args = [*STAGES[name], *TINY, f"teacher.checkpoint={teacher_ckpt}"]
    straight = _kdlab([*args, "--run-dir", str(tmp_path / "straight")])
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err
    expected = json.loads((tmp_path / "straight" / "summary.json").read_text())

    got, landed = _kill_then_finish([*args, "--run-dir", str(tmp_path / "killed")], tmp_path / "killed", kills=3,
                                    rng=random.Random(7))
    assert landed >= 2  # the kills hit a running process, not one that had already finished
    for key in ("top1", "top5", "loss", "test_loss"):
        assert got["metrics"][key] == pytest.approx(expected["metrics"][key], rel=1e-6, abs=1e-9), key
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)["method"]
    b = torch.load(tmp_path / "killed/checkpoints/last.pt", weights_only=True)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()]
    assert epochs == sorted(set(epochs)) == list(range(1, len(epochs) + 1))


def test_corrupted_last_checkpoint_falls_back_to_previous(tmp_path, capsys):
    cfg = load_config("demo", TINY + ["teacher.epochs=2"])
    run_teacher(cfg, tmp_path / "t")
    (tmp_path / "t" / "summary.json").unlink()  # pretend the run was interrupted after epoch 2
    last = tmp_path / "t" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: len(last.read_bytes()) // 2])  # torn file
    cfg3 = load_config("demo", TINY + ["teacher.epochs=2"])
    summary = run_teacher(cfg3, tmp_path / "t")
    err = capsys.readouterr().err
    assert "resuming from the previous checkpoint last.prev.pt" in err
    assert summary["status"] == "done" and summary["metrics"]["epochs"] == 2


def test_disk_full_while_writing_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    ckpt_mod.atomic_write_json(target, {"status": "done"})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        ckpt_mod.atomic_write_json(target, {"status": "half"})
    assert json.loads(target.read_text()) == {"status": "done"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left behind


def test_disk_full_during_training_is_one_line_and_nonzero(tmp_path, monkeypatch, capsys):
    real = ckpt_mod.atomic_write_bytes

    def full_on_checkpoint(path, data):
        if path.suffix == ".pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(ckpt_mod, "atomic_write_bytes", full_on_checkpoint)
    code = main(["train-teacher", *TINY, "teacher.epochs=1", "--run-dir", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: No space left on device") and len(err.splitlines()) == 1


def test_unwritable_output_folder_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["train-teacher", *TINY, "teacher.epochs=1", "--run-dir", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot create run folder" in err


def test_refuses_to_mix_configs_in_one_run_folder(tmp_path, capsys):
    assert main(["train-teacher", *TINY, "teacher.epochs=1", "--run-dir", str(tmp_path / "t")]) == 0
    (tmp_path / "t" / "summary.json").unlink()
    code = main(["train-teacher", *TINY, "teacher.epochs=1", "objective.kind=supcon", "--run-dir", str(tmp_path / "t")])
    assert code == 2 and "different config" in capsys.readouterr().err


def test_checkpoint_with_pickled_callable_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Evil()}, path)
    with pytest.raises(ckpt_mod.CheckpointError):
        ckpt_mod.load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_cifar_pickle_names_the_file(tmp_path):
    from fakedata import write_fake_cifar

    from kdlab.data import DataError, load_dataset

    write_fake_cifar(tmp_path)
    batch = next(tmp_path.rglob("data_batch_2"))
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset("cifar10", tmp_path)


def test_teacher_with_another_class_count_is_one_clear_error(tmp_path, capsys):
    from kdlab.models import build_model

    foreign = tmp_path / "ckpt_epoch_240.pth"  # a RepDistiller-style teacher for CIFAR-100
    torch.save({"model": build_model("resnet8", num_classes=100, in_channels=1).state_dict()}, foreign)
    code = main(["distill", *TINY, f"teacher.checkpoint={foreign}", "student.epochs=1",
                 "--run-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "fc.weight" in err and len(err.splitlines()) == 1


def test_sigint_stops_cleanly_with_a_checkpoint_and_the_rerun_finishes(tmp_path):
    run = tmp_path / "t"
    args = ["train-teacher", *TINY, "objective.kind=intra", "teacher.epochs=8", "--run-dir", str(run)]
    proc = _kdlab(args)
    deadline = time.time() + 120
    while _epochs_done(run) < 1 and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again to resume" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and (run / "checkpoints" / "last.pt").exists()
    assert 1 <= _epochs_done(run) < 8
    rerun = _kdlab(args)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert json.loads((run / "summary.json").read_text())["status"] == "done"
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 9))


def test_finished_folder_of_another_config_or_stage_is_refused(tmp_path, capsys):
    assert main(["train-teacher", *TINY, "teacher.epochs=1", "--run-dir", str(tmp_path / "t")]) == 0
    assert main(["train-teacher", *TINY, "teacher.epochs=2", "--run-dir", str(tmp_path / "t")]) == 2
    assert "finished teacher run of a different config" in capsys.readouterr().err
    assert main(["distill", *TINY, "distill.methods=[]", "teacher.epochs=1", "--run-dir", str(tmp_path / "t")]) == 2


def test_student_checkpoint_initialises_the_student(tmp_path, capsys):
    assert main(["train-teacher", *TINY, "teacher.epochs=1", "--run-dir", str(tmp_path / "t")]) == 0
    start = tmp_path / "t" / "checkpoints" / "last.pt"
    code = main(["distill", *TINY, "distill.methods=[]", f"student.checkpoint={start}", "student.epochs=1",
                 "student.optim.lr=1e-12", "--run-dir", str(tmp_path / "s")])
    assert code == 0
    before = torch.load(start, weights_only=True)["model"]
    after = torch.load(tmp_path / "s" / "checkpoints" / "last.pt", weights_only=True)["model"]
    # with a vanishing learning rate the student's weights are the checkpoint's (BN statistics move)
    assert torch.allclose(before["conv1.weight"], after["conv1.weight"], atol=1e-6)
    code = main(["distill", *TINY, "distill.methods=[]", "student.checkpoint=/no/such.pt", "--run-dir",
                 str(tmp_path / "s2")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_fitnet_hint_layer_out_of_range_is_one_clear_line(tmp_path, capsys):
    ckpt = run_teacher(load_config("demo", TINY + ["teacher.epochs=1"]), tmp_path / "t")["checkpoint"]
    code = main(["distill", *TINY, "distill.methods=[fitnet]", "distill.fitnet.hint_layer=9",
                 f"teacher.checkpoint={ckpt}", "--run-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "stage index 9 is out of range" in err and len(err.splitlines()) == 1
