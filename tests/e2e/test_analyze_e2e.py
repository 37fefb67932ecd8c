"""Feature geometry and soft-label statistics against answers computed independently here, and the
``analyze`` report end to end on a one-epoch digits teacher."""

import json
import math
from pathlib import Path

import pytest



# ------------------------------------------------------------------------------------------- helpers


def test_analyze_a_tiny_intra_teacher(tmp_path):
    from kdlab.experiment.schema import load_config
    from kdlab.experiment.stages import run_teacher
    from kdlab.report.analyze import analyze_checkpoint, main_analyze, plot_ratio_vs, write_analysis

    cfg = load_config("demo", ["data.subset=200", "data.test_subset=100", "teacher.arch=resnet8", "teacher.epochs=1",
                               "objective.kind=intra", "runtime.progress=false"])
    summary = run_teacher(cfg, tmp_path / "teacher_intra")
    assert summary["status"] == "done"
    ckpt = Path(summary["checkpoint"])

    res = analyze_checkpoint(ckpt, T=4.0)
    assert res["arch"] == "resnet8" and res["stage"] == "teacher" and res["objective"] == "intra"
    assert res["dataset"] == "digits" and res["split"] == "test" and res["num_samples"] == 100
    assert res["head"] == "mlp2" and res["lambda"] == pytest.approx(0.02)
    assert res["top1"] == pytest.approx(summary["metrics"]["top1"], abs=1e-6)  # same data, same eval
    soft = res["soft_labels"]
    for key in ("entropy", "entropy_T1", "off_true_mass", "confidence", "accuracy"):
        assert math.isfinite(soft[key]), key
    assert 0 <= soft["entropy"] <= math.log(10) + 1e-9 and sum(soft["margin"]["hist_counts"]) == 100
    for space, dim in (("pooled", None), ("pooled_l2", None), ("embedding", 128)):
        g = res["geometry"][space]
        assert g["num_samples"] == 100 and (dim is None or g["dim"] == dim)
        for key in ("intra", "inter_centroid", "inter_pairwise", "ratio_centroid", "ratio_pairwise"):
            assert math.isfinite(g[key]) and g[key] > 0, (space, key)
        assert len(g["per_class"]["ratio"]) == 10
    json.dumps(res, allow_nan=False)

    out = write_analysis({"intra": res}, tmp_path / "single")
    assert {"analysis.json", "analysis.md", "ratio_per_class.png", "margin_cdf.png"} <= {p.name for p in out.iterdir()}

    md = main_analyze([tmp_path / "teacher_intra", ckpt], tmp_path / "report", max_samples=60, T=2.0)
    report = md.parent
    assert md == tmp_path / "report" / "analysis.md"
    data = json.loads((report / "analysis.json").read_text())
    assert list(data) == ["teacher_intra", "teacher_intra#2"]
    assert data["teacher_intra"]["num_samples"] == 60 and data["teacher_intra"]["soft_labels"]["T"] == 2.0
    for png in ("tsne.png", "ratio_per_class.png", "margin_cdf.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    text = md.read_text()
    assert "## Feature geometry" in text and "teacher (intra" in text

    # an export card (network only): the same penultimate geometry, no projection head
    from kdlab.runs import export_run

    card = analyze_checkpoint(export_run(tmp_path / "teacher_intra", tmp_path / "export"))
    assert card["geometry"]["embedding"] is None and card["top1"] == res["top1"]
    assert card["geometry"]["pooled"]["intra"] == pytest.approx(res["geometry"]["pooled"]["intra"], rel=1e-9)

    sweep = plot_ratio_vs([0.0, 0.02, 0.05], {"pooled": [1.0, 1.1, None], "embedding": [0.9, 1.2, 1.3]}, "λ",
                          tmp_path / "ratio_vs_lambda.png")
    assert sweep.read_bytes()[:4] == b"\x89PNG"
