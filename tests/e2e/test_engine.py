"""The trainer and stages end to end on the embedded digits data, at a tiny size."""

import json

import pytest
import torch

from kdlab.cli import main
from kdlab.experiment.schema import load_config
from kdlab.experiment.stages import DataBundle, run_pipeline, run_teacher
from kdlab.engine.trainer import Interrupted, lr_at
from tests.e2e.test_groups import stop_trainers_at


def test_demo_end_to_end_tiny(tmp_path, tiny_overrides, capsys):
    code = main(["demo", *tiny_overrides, "objective.intra.delta=-0.5", "--run-dir", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert code == 0
    for run in ("teacher_ce", "teacher_intra", "student_alone", "student_kd_ce", "student_kd_intra"):
        assert run in out
        summary = json.loads((tmp_path / "demo" / run / "summary.json").read_text())
        assert summary["status"] == "done" and 0 <= summary["metrics"]["top1"] <= 100
        folder = tmp_path / "demo" / run
        for name in ("config.yaml", "env.json", "metrics.jsonl", "metrics.csv", "checkpoints/last.pt",
                     "checkpoints/best.pt"):
            assert (folder / name).exists(), name
    assert (tmp_path / "demo" / "report.md").read_text().startswith("# kdlab demo")
    assert (tmp_path / "demo" / "curves.png").stat().st_size > 1000
    intra = json.loads((tmp_path / "demo" / "teacher_intra" / "summary.json").read_text())["metrics"]
    assert 0 <= intra["margin_pass_frac"] <= 1 and intra["cache_fill"] > 0
    env = json.loads((tmp_path / "demo" / "teacher_ce" / "env.json").read_text())
    assert env["torch"] == torch.__version__


def test_resume_after_interruption_gives_identical_metrics(tmp_path, tiny_overrides, monkeypatch):
    cfg = load_config("demo", tiny_overrides + ["teacher.epochs=3", "objective.kind=intra"])
    data = DataBundle(cfg)
    straight = run_teacher(cfg, tmp_path / "straight", data)

    stop_trainers_at(monkeypatch, epoch=2, step=1, why="simulated kill during epoch 3")
    with pytest.raises(Interrupted):
        run_teacher(cfg, tmp_path / "resumed", data)
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    resumed = run_teacher(cfg, tmp_path / "resumed", data)

    assert resumed["status"] == "done"
    for key in ("top1", "top5", "loss", "test_loss", "ece", "margin_pass_frac"):
        assert resumed["metrics"][key] == pytest.approx(straight["metrics"][key], rel=1e-6, abs=1e-9), key
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)
    for k, v in a["method"].items():
        assert torch.equal(v, b["method"][k]), k  # weights, heads and the intra cache
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_finished_run_is_not_trained_again(tmp_path, tiny_overrides):
    cfg = load_config("demo", tiny_overrides + ["teacher.epochs=1"])
    first = run_teacher(cfg, tmp_path / "t")
    again = run_teacher(cfg, tmp_path / "t")
    assert again == first


def test_divergence_is_recorded_with_its_step(tmp_path, tiny_overrides):
    cfg = load_config("demo", tiny_overrides + ["teacher.epochs=2", "teacher.optim.lr=1e30", "objective.kind=ce"])
    summary = run_teacher(cfg, tmp_path / "nan")
    assert summary["status"] == "failed"
    assert "loss became" in summary["error"] and "epoch 1, step" in summary["error"]


def test_pipeline_and_distill_cli(tmp_path, tiny_overrides, capsys):
    cfg = load_config("demo", tiny_overrides + ["distill.methods=[kd,rkd]"])
    result = run_pipeline(cfg, tmp_path / "p")
    assert result["status"] == "done"
    first_epoch = json.loads((tmp_path / "p/student/metrics.jsonl").read_text().splitlines()[0])
    assert {"train_ce", "train_kd", "train_rkd_dist", "train_rkd_angle"} <= set(first_epoch)
    teacher_ckpt = tmp_path / "p/teacher/checkpoints/last.pt"
    code = main(["distill", *tiny_overrides, f"teacher.checkpoint={teacher_ckpt}", "--run-dir", str(tmp_path / "s")])
    assert code == 0 and "student: top-1" in capsys.readouterr().out


def test_student_with_wrong_teacher_arch_is_one_clear_error(tmp_path, tiny_overrides, capsys):
    cfg = load_config("demo", tiny_overrides + ["teacher.epochs=1"])
    t = run_teacher(cfg, tmp_path / "t")
    code = main(["distill", *tiny_overrides, "teacher.arch=resnet14", f"teacher.checkpoint={t['checkpoint']}",
                 "--run-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "holds a resnet8, but teacher.arch=resnet14" in err and "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["train-teacher", "objective.intra.lamda_=1"], "did you mean 'lambda_'?"),
    (["train-teacher", "objective.intra.delta=3"], "objective.intra.delta"),
    (["distill", "student.epochs=1"], "needs a teacher: pass teacher.checkpoint=PATH"),
    (["distill", "teacher.checkpoint=/nonexistent/t.pt"], "does not exist"),
    (["train-teacher", "runtime.device=cuda:7"], "CUDA"),
    (["train-teacher", "data.batch_size=5000"], "larger than the training set"),
])
def test_cli_errors_exit_nonzero_with_one_line(tmp_path, args, message, capsys):
    code = main([*args, f"out={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1


def test_learning_rate_schedules():
    from kdlab.config import OptimConfig

    step = OptimConfig(lr=0.05)
    assert [lr_at(step, 240, e) for e in (0, 149.9, 150, 180, 210, 239)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.0005, 0.00005, 0.00005])
    cos = OptimConfig(lr=0.1, schedule="cosine")
    assert lr_at(cos, 10, 0) == pytest.approx(0.1) and lr_at(cos, 10, 5) == pytest.approx(0.05)


def test_empty_view_augmentation_means_plain_views(tiny_overrides):
    from kdlab.data import normalize
    from kdlab.engine.runtime import resolve_runtime

    cfg = load_config("demo", tiny_overrides + ["data.view_augment=[]", "objective.kind=intra"])
    data = DataBundle(cfg)
    train, _ = data.loaders(cfg, resolve_runtime(cfg.runtime), views=2)
    batch = next(iter(train))
    plain = normalize(data.train.images[batch.index], data.train.mean, data.train.std)
    assert torch.allclose(batch.views[1], plain) and not torch.allclose(batch.views[0], plain)


def test_expected_calibration_error_on_a_hand_case():
    """Four predictions with confidences 0.9, 0.9, 0.65, 0.55 (two-class softmax of log-probabilities):
    bin (13/15, 14/15] holds the two 0.9s, one right -> |0.5 - 0.9|; bin (9/15, 10/15] holds 0.65, right ->
    |1 - 0.65|; bin (8/15, 9/15] holds 0.55, wrong -> |0 - 0.55|. ECE = 2/4*0.4 + 1/4*0.35 + 1/4*0.55."""
    from kdlab.engine.metrics import calibration_sums, expected_calibration_error

    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.35, 0.65], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 1, 1])
    expected = 100 * (2 / 4 * 0.4 + 1 / 4 * 0.35 + 1 / 4 * 0.55)
    sums = calibration_sums(probs.log(), labels)
    assert expected_calibration_error(sums) == pytest.approx(expected, abs=1e-4)
    # batches add up: the same four predictions split in two give the same sums
    halves = calibration_sums(probs[:2].log(), labels[:2]) + calibration_sums(probs[2:].log(), labels[2:])
    assert torch.allclose(halves, sums)
    # a perfectly calibrated bin: confidence 0.75 with three of four right
    assert expected_calibration_error(calibration_sums(torch.tensor([[0.75, 0.25]] * 4).log(),
                                                       torch.tensor([0, 0, 0, 1]))) == pytest.approx(0, abs=1e-4)
