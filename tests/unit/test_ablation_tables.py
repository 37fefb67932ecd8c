"""`kdlab ablate`: honest tables (n=1, paired-seed CIs), loss terms as metrics, warnings for values meaningless on
the base's data, partial execution of plans and ``--explain``.

Expected numbers are computed here by hand (t quantiles from a printed table) or read back from the run records,
never from the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kdlab.ablation import ResolveError, build_report, parse_plan, resolve_plan, run_plan
from kdlab.sweep.run import grid_record
from kdlab.ablation.checks import config_warnings
from kdlab.ablation.plan import parse_plan_text
from kdlab.ablation.resolve import fit_metric, load_base, map_metric, rank_knobs
from kdlab.experiment.terms import run_terms
from kdlab.sweep.stats import paired_delta, summarize_values, t_quantile
from kdlab.sweep.store import Store
from kdlab.cli import main
from kdlab.experiment.schema import build_config
from kdlab.engine.metrics import summarize

PLANS = Path(__file__).resolve().parents[1] / "plans"
FAKE = "fakestages"
TINY = ("teacher.epochs=2", "student.epochs=2")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 30: 2.042}  # Student's t, 0.975 quantile (printed tables)


def plan_file(tmp_path: Path, *objs: dict) -> Path:
    p = tmp_path / "plan.jsonl"
    p.write_text("\n".join(json.dumps(o) for o in objs) + "\n")
    return p


def ablation(name: str, part: str, action: str = "REPLACE", values=(), metrics=("Top-1 accuracy",)) -> dict:
    return {"name": name, "ablated_part": part, "action": action, "replacement": list(values), "metrics": list(metrics)}


# ------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("dof", sorted(T975))
def test_t_quantiles_match_the_printed_table(dof):
    assert t_quantile(0.975, dof) == pytest.approx(T975[dof], abs=1e-3)


def test_paired_delta_by_hand():
    base = {0: 90.0, 1: 91.0, 2: 92.0}
    # diffs 1, 2, 3: mean 2, sd 1, half-width 4.303 / sqrt(3) = 2.484
    d = paired_delta({0: 91.0, 1: 93.0, 2: 95.0}, base)
    assert (d.mean, d.pairs) == (pytest.approx(2.0), 3)
    assert (d.lo, d.hi) == (pytest.approx(2 - 2.4843, abs=1e-3), pytest.approx(2 + 2.4843, abs=1e-3))
    assert not d.excludes_zero
    # diffs 2, 3, 4: the same interval shifted by 1 no longer contains 0
    d = paired_delta({0: 92.0, 1: 94.0, 2: 96.0}, base)
    assert d.lo == pytest.approx(0.5157, abs=1e-3) and d.excludes_zero
    # seed 2 is missing on the variant side, seed 5 on the base side: two pairs, diffs 3, 5 -> mean 4, sd sqrt(2),
    # half-width 12.706 * sqrt(2) / sqrt(2) = 12.706
    d = paired_delta({0: 93.0, 1: 96.0, 5: 50.0}, base)
    assert d.pairs == 2 and d.mean == pytest.approx(4.0)
    assert (d.lo, d.hi) == (pytest.approx(4 - 12.706, abs=1e-2), pytest.approx(4 + 12.706, abs=1e-2))
    # one pair: a difference but no interval; none: nothing
    one = paired_delta({1: 95.0}, base)
    assert (one.mean, one.lo, one.hi, one.pairs) == (pytest.approx(4.0), None, None, 1) and not one.excludes_zero
    assert paired_delta({7: 1.0}, base).mean is None
    # a non-finite value (a diverged run's metric) leaves its seed out of the pairing
    assert paired_delta({0: float("nan"), 1: 93.0, 2: 95.0}, base).pairs == 2


def test_sample_std_is_undefined_for_one_value():
    assert summarize_values([5.0]) == summarize_values([5.0, None, float("nan")])
    assert summarize_values([5.0]).std is None
    s = summarize_values([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (pytest.approx(2.0), pytest.approx(1.0), 3)


def _store_with(tmp_path: Path, values: dict[str, dict[int, float]], seeds=(0, 1, 2)) -> Path:
    """An output folder whose records carry chosen student.top1 values (label -> seed -> value)."""
    p = plan_file(tmp_path, ablation("Margin", "margin threshold delta", values=["0.1", "0.9"]))
    grid = resolve_plan(parse_plan(p), seeds=list(seeds))
    record = grid_record(grid.to_sweep())
    out = tmp_path / "out"
    store = Store(out)
    store.write_grid(record)
    runs = {"base": record["base_runs"], **{v["label"]: v["runs"] for v in record["ablations"][0]["variants"]}}
    for label, per_seed in values.items():
        for seed, v in per_seed.items():
            store.write_record(store.run_dir(runs[label][str(seed)]),
                               {"status": "done", "seed": seed, "metrics": {"student.top1": v}})
    return out


def test_table_shows_paired_intervals_the_mark_and_the_pairs(tmp_path):
    out = _store_with(tmp_path, {"base": {0: 90.0, 1: 91.0, 2: 92.0},
                                 "0.1": {0: 91.0, 1: 93.0, 2: 95.0},    # diffs 1, 2, 3
                                 "0.9": {0: 92.0, 1: 94.0}})             # seed 2 missing: diffs 2, 3
    report = build_report(out)
    _, v1, v9 = report.tables[0].rows
    assert v1.pairs == 3 and v9.pairs == 2 and v9.n_missing == 1
    md = (out / "report.md").read_text()
    assert "| base (0.5) | 91.00 ± 1.00 |  |" in md
    # 2 ± 2.484; diffs 2, 3: mean 2.5, sd 0.7071, half-width 12.706 * 0.7071 / sqrt(2) = 6.353
    assert "| 0.1 | 93.00 ± 2.00 | +2.00 [-0.48, +4.48] |" in md
    assert "| 0.9 | 93.00 ± 1.41 | +2.50 [-3.85, +8.85] |" in md
    assert "pairs − 1 degrees of freedom" in md and "* marks an interval that excludes 0" in md
    # machine-readable: per-seed values and the paired interval, written atomically next to report.md
    rows = json.loads((out / "tables.json").read_text())[0]["rows"]
    assert rows[1]["metrics"]["student.top1"]["per_seed"] == {"0": 91.0, "1": 93.0, "2": 95.0}
    ci = rows[1]["delta_ci95"]["student.top1"]
    assert ci["pairs"] == 3 and ci["ci95"] == pytest.approx([2 - 2.4843, 2 + 2.4843], abs=1e-3)
    assert not ci["excludes_zero"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_interval_that_excludes_zero_is_marked(tmp_path):
    out = _store_with(tmp_path, {"base": {0: 90.0, 1: 91.0, 2: 92.0}, "0.1": {0: 92.0, 1: 94.0, 2: 96.0},
                                 "0.9": {0: 80.0, 1: 81.5, 2: 82.0}})
    md = build_report(out).report_path.read_text()
    # diffs 2, 3, 4: 3 ± 2.484
    assert "| 0.1 | 94.00 ± 2.00 | +3.00 [+0.52, +5.48]* |" in md
    # diffs -10, -9.5, -10: mean -9.833, sd 0.2887, half-width 4.303 * 0.2887 / sqrt(3) = 0.717
    assert "| 0.9 | 81.17 ± 1.04 | -9.83 [-10.55, -9.12]* |" in md


def test_one_seed_tables_have_no_spread_and_say_so(tmp_path):
    out = _store_with(tmp_path, {"base": {0: 90.0}, "0.1": {0: 91.5}, "0.9": {0: 89.0}}, seeds=(0,))
    md = build_report(out).report_path.read_text()
    table = md[md.index("| variant"):md.index("n=1:")]
    assert "±" not in table and "[" not in table.replace("[95 % CI]", "")
    assert "| base (0.5) | 90.00 |  |" in table and "| 0.1 | 91.50 | +1.50 |" in table
    assert "n=1: one seed per row" in md


# ------------------------------------------------------------------------------------------ loss terms
@pytest.mark.parametrize("name, keys, stage", [
    ("contrastive loss", ("contrastive_loss",), None), ("Contrastive Loss (L_ctr)", ("contrastive_loss",), None),
    ("KD loss", ("kd_loss",), None), ("KL divergence", ("kd_loss",), None), ("CE loss", ("ce_loss",), None),
    ("Cross-entropy loss", ("ce_loss",), None), ("prediction loss", ("prediction_loss",), None),
    ("L_pred", ("prediction_loss",), None), ("teacher contrastive loss", ("contrastive_loss",), "teacher"),
    ("RKD loss", ("rkd_loss",), None), ("training loss", ("loss",), None), ("Total loss", ("loss",), None),
    ("feature alignment loss", (), None), ("Top-1/Top-5 accuracy", ("top1", "top5"), None),
])
def test_loss_terms_are_metrics_by_name_and_never_the_total(name, keys, stage):
    m = map_metric(name)
    assert (m.keys, m.stage) == (keys, stage)


def test_loss_term_metrics_follow_the_runs_that_log_them():
    _, intra = load_base(None, "intra", [])
    _, cocord = load_base(None, "cocord", [])
    assert fit_metric(map_metric("contrastive loss"), [intra]).stage == "teacher"  # L_intra of the teacher
    assert fit_metric(map_metric("contrastive loss"), [cocord]).stage == "student"  # L_ctr of the student
    assert fit_metric(map_metric("KD loss"), [intra]).stage == "student"
    missing = fit_metric(map_metric("prediction loss"), [intra])
    assert missing.keys == () and "no cocord_pred term" in missing.note
    assert fit_metric(map_metric("teacher KD loss"), [intra]).keys == ()
    # top-5 of 10 classes: left out unless the plan names it
    assert fit_metric(map_metric("Top-k accuracy"), [intra]).keys == ("top1",)
    assert fit_metric(map_metric("Top-5 accuracy"), [intra]).keys == ("top5",)
    c100 = build_config(intra, ["data.name=cifar100"])
    assert fit_metric(map_metric("Top-k accuracy"), [c100]).keys == ("top1", "top5")


def test_summary_keeps_the_last_epochs_loss_terms():
    hist = [{"epoch": e, "test_top1": 50.0 + e, "test_top5": 90.0, "train_loss": 3.0 / e, "train_top1": 40.0,
             "train_ce": 1.0 / e, "train_kd": 2.0 / e, "test_loss": 1.0, "loss_steps": 2, "loss_sum": 2.0,
             "loss_sqsum": 2.0, "loss_spikes": 0, "epoch_time_s": 1.0, "step_time_ms": 1.0} for e in (1, 2)]
    s = summarize(hist)
    assert (s["train_ce"], s["train_kd"]) == (0.5, 1.0)
    assert "train_loss" not in s and "train_top1" not in s and s["loss"] == 1.5


def test_loss_terms_reach_the_tables_from_the_records(tmp_path):
    p = plan_file(tmp_path, ablation("Loss", "contrastive learning method", values=["SupCon"],
                                     metrics=["contrastive loss", "KD loss", "prediction loss"]))
    out = tmp_path / "o"
    r = run_plan(p, seeds=2, out=out, stages=FAKE, jobs=1, echo=None, overrides=TINY)
    assert r.exit_code == 0
    t = r.report.tables[0]
    assert [c for c, _ in t.columns] == ["teacher.contrastive_loss", "student.kd_loss"]
    assert t.not_measured == ["prediction loss"]
    grid = json.loads((out / "grid.json").read_text())
    recs = Store(out).records()
    base_runs, sup_runs = grid["base_runs"], grid["ablations"][0]["variants"][0]["runs"]
    # the base teacher's contrastive term is L_intra, the variant's L_supcon; each read from its own record
    for row, runs, term in ((t.rows[0], base_runs, "train_intra"), (t.rows[1], sup_runs, "train_supcon")):
        want = {int(s): recs[k]["metrics"][f"teacher.{term}"] for s, k in runs.items()}
        assert row.cells["teacher.contrastive_loss"].per_seed == pytest.approx(want)
        assert row.cells["student.kd_loss"].per_seed == pytest.approx(
            {int(s): recs[k]["metrics"]["student.train_kd"] for s, k in runs.items()})
    md = (out / "report.md").read_text()
    assert "prediction loss: not recorded: these runs log no cocord_pred term" in md


# -------------------------------------------------------------------------------------------- warnings
@pytest.mark.parametrize("scope, overrides, needle", [
    ("cocord", ["distill.cocord.queue_size=2048"], "distill.cocord.queue_size=2048 >= the 1437 training images"),
    ("cocord", ["distill.cocord.queue_size=1437"], "queue_size=1437 >= the 1437"),
    ("cocord", ["data.subset=300"], "queue_size=512 >= the 300 training images (digits, data.subset)"),
    ("cocord", ["distill.cocord.memory=bank", "distill.cocord.queue_size=4096"], "negatives per sample >= the memory bank"),
    ("intra", ["distill.methods=[kd,crd]"], "distill.crd.nce_k=16384 negatives per sample"),
    ("intra", ["data.batch_size=2000"], "data.batch_size=2000 > the 1437 training images"),
    ("intra", ["objective.intra.delta=1"], "objective.intra.delta=1 is its maximum"),
    ("intra", ["objective.intra.cache.size=144"], "144 x 10 classes = 1440 cached entries >= the 1437"),
])
def test_values_meaningless_on_the_data_warn(scope, overrides, needle):
    _, base = load_base(None, scope, overrides)
    assert any(needle in w for w in config_warnings(base)), config_warnings(base)


@pytest.mark.parametrize("scope, overrides", [
    ("cocord", []), ("intra", []), ("cocord", ["distill.cocord.queue_size=1436"]),
    ("intra", ["objective.intra.delta=0.99"]), ("intra", ["objective.intra.delta=1", "objective.intra.margin=false"]),
    ("intra", ["objective.intra.cache.size=143"]), ("intra", ["objective.intra.cache.size=500", "objective.intra.cache.enabled=false"]),
    ("intra", ["data.batch_size=1437"]), ("intra", ["objective.kind=supcon", "objective.intra.delta=1"]),
    ("cocord", ["data.name=imagefolder", "data.root=/nowhere", "distill.cocord.queue_size=100000"]),  # size unknown
])
def test_meaningful_values_do_not_warn(scope, overrides):
    _, base = load_base(None, scope, overrides)
    assert config_warnings(base) == []


def test_warnings_reach_the_dry_run_and_the_report(tmp_path, capsys):
    p = plan_file(tmp_path, ablation("N", "dictionary size N", values=["256", "4096"]))
    r = run_plan(p, seeds=1, out=tmp_path / "o", stages=FAKE, jobs=1, echo=print, overrides=TINY)
    out = capsys.readouterr().out
    assert len(r.grid.ablations[0].warnings) == 1
    dry = out[:out.index("Running")]
    assert "warning: 4096: distill.cocord.queue_size=4096 >= the 1437 training images" in dry
    assert "256: distill" not in out
    assert "- Warning: 4096: distill.cocord.queue_size=4096 >= the 1437" in (tmp_path / "o" / "report.md").read_text()


# ---------------------------------------------------------------------------------- partial execution
def test_a_plan_runs_what_resolves_and_lists_what_does_not(tmp_path, capsys):
    out = tmp_path / "o"
    r = run_plan(PLANS / "partial.md", seeds=1, out=out, stages=FAKE, jobs=1, echo=print, overrides=TINY)
    text = capsys.readouterr().out
    assert r.exit_code == 0
    assert [a.ablation.name for a in r.grid.ablations] == ["Dictionary size sweep"]
    assert len(Store(out).records()) == 3  # base + 256 + 2048, one seed
    # first in the output (after the smoke-test note of the embedded digits default), and again at the end
    assert text.split("\n", 1)[0].startswith("note: the embedded default")
    assert text.split("\n", 1)[1].lstrip("\n").startswith("NOT RUN: 1 of 2 ablations could not be resolved")
    assert "- ablation #2 'Classifier dropout' (line 17): cannot place the ablated part" in text
    assert text.rstrip().splitlines()[-1].startswith("NOT RUN: 1 ablation of the plan (#2 'Classifier dropout')")
    md = (out / "report.md").read_text()
    section = md[md.index("## Not run"):md.index("## 1. Dictionary size sweep")]
    assert "**#2 Classifier dropout**" in section and "cannot place the ablated part" in section
    assert 'fix: --map "Classifier dropout=' in section
    assert json.loads((out / "grid.json").read_text())["unresolved"][0]["name"] == "Classifier dropout"


def test_cli_exit_codes_for_partial_strict_and_empty_plans(tmp_path, capsys):
    assert main(["ablate", str(PLANS / "partial.md"), "--dry-run", "--out", str(tmp_path / "d")]) == 0
    assert "NOT RUN: 1 of 2" in capsys.readouterr().out
    assert main(["ablate", str(PLANS / "partial.md"), "--dry-run", "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--strict" in err and "Classifier dropout" in err
    # nothing resolves: non-zero, every problem on a line of its own
    assert main(["ablate", str(PLANS / "out_of_range.md"), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "no ablation resolves (2 problems)" in lines[0]
    assert [ln.split("'")[1] for ln in lines if ln.startswith("- ")] == ["Margin too large", "Negative weight"]
    assert not (tmp_path / "d").exists()


def test_nothing_resolves_raises_with_every_reason():
    with pytest.raises(ResolveError) as err:
        resolve_plan(parse_plan(PLANS / "out_of_range.md"))
    assert "no ablation resolves" in str(err.value) and str(err.value).count("\n- ablation #") == 2


# --------------------------------------------------------------------------------------------- --explain
def test_explain_shows_knob_words_runners_up_values_and_warnings(tmp_path, capsys):
    text = ("# x/Enriching_Knowledge_Distillation_with_Intra_Class_Contrastive_Learning\n## Ablation Plan\n"
            "### Margin\n- **Ablated Part**: Margin threshold (δ) for applying intra-class contrastive loss\n"
            "- **Action**: REPLACE\n- **Replacement**: δ = 0.2; 1.0\n"
            "- **Metrics**: accuracy, contrastive loss\n"
            "### Clip\n- **Ablated Part**: gradient clipping\n- **Action**: REMOVE\n")
    p = tmp_path / "plan.md"
    p.write_text(text)
    assert main(["ablate", str(p), "--explain", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    _, base = load_base(None, "intra", [])
    (k1, s1, _), (k2, s2, _), (k3, s3, _) = rank_knobs(parse_plan_text(text, str(p)).ablations[0], "intra", base)[:3]
    assert k1.name == "intra.delta" and "knob:        intra.delta = objective.intra.delta" in out
    assert "chosen by:   the alias 'margin threshold', on the words: margin, threshold (score" in out
    # the runners-up are the next best knobs with their scores
    assert f"runners-up:  {k2.name} {s2:.2f} ({100 * s2 / s1:.0f} % of the chosen); {k3.name} {s3:.2f}" in out
    assert f"{'0.2':<22} objective.intra.delta=0.2  <- 'δ = 0.2'" in out
    assert "warning:     1: objective.intra.delta=1 is its maximum" in out
    assert "contrastive loss -> contrastive_loss (teacher)" in out
    assert "[2] Clip (line 8): REMOVE 'gradient clipping'" in out and "NOT RESOLVED (not run)" in out
    assert "kdlab does not clip gradients" in out
    assert not (tmp_path / "o").exists()  # runs nothing
    # a plan where nothing resolves is still explained (--strict does not stop an explanation)
    assert main(["ablate", str(PLANS / "out_of_range.md"), "--explain", "--strict"]) == 0
    assert capsys.readouterr().out.count("NOT RESOLVED") == 2


def test_run_terms_match_what_the_teacher_objective_logs():
    """The loss terms the metric mapping expects of a teacher are those the real objective returns."""
    import torch

    from kdlab.experiment.schema import ObjectiveConfig
    from kdlab.data.base import Batch
    from kdlab.models import build_model, probe
    from kdlab.objectives.teacher import TeacherObjective

    net = build_model("resnet8", 3, in_channels=1)
    dim = probe(net, (1, 8, 8)).pooled_dim
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 8, 8, generator=g)
    batch = Batch([x, x + 0.1], torch.arange(6) % 3, torch.arange(6))
    for kind in ("ce", "intra", "supcon", "simclr"):
        cfg = build_config(overrides=[f"objective.kind={kind}"])
        obj = TeacherObjective(net, ObjectiveConfig(kind=kind), views=2, num_classes=3, feature_dim=dim, num_train=6)
        _, terms = obj.forward_train(batch, 0.0)
        assert set(terms) == set(run_terms(cfg, "teacher")), kind
        assert all(math.isfinite(float(v.detach())) for v in terms.values())
