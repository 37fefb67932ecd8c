"""Plans written as other authors would (tables, prose, JSONL, other wordings and layouts, missing fields) for
both papers, each with its expected grid: per ablation the config paths and values every variant sets, or
the reason it is refused. Refused ablations must never run; a plan none of whose ablations resolves runs
nothing. Expectations are written out by hand from what each plan says (ranges computed here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kdlab.ablation import ResolveError, parse_plan, resolve_plan
from kdlab.ablation.knobs import knob_by_name
from kdlab.ablation.plan import parse_plan_text
from kdlab.ablation.resolve import load_base, parse_value

PLANS = Path(__file__).resolve().parents[1] / "plans"
COCORD = load_base(None, "cocord", [])[1]
INTRA = load_base(None, "intra", [])[1]


def log_points(lo: float, hi: float, n: int) -> list[float]:
    """n points from lo to hi, evenly spaced on a log scale, to 3 significant digits (as the reader writes them)."""
    return [float(f"{lo * (hi / lo) ** (i / (n - 1)):.3g}") for i in range(n)]


def ov(path: str, *values) -> list[dict]:
    return [{path: v} for v in values]


def objective(kind: str) -> dict:
    return {"objective.kind": kind, f"objective.{kind}.lambda_": INTRA.objective.intra.lambda_,
            f"objective.{kind}.tau": INTRA.objective.intra.tau}


# plan -> {ablation name: (knob, [overrides per variant])} for what runs, {name: words of the reason} for refusals
EXPECTED: dict[str, tuple[dict[str, tuple[str, list[dict]]], dict[str, str]]] = {
    # ----------------------------------------------------------------------------------------------- CoCoRD
    "outside_cocord_heads.md": ({
        # linear = 1-layer perceptron (one run), MLP with BN = the release's 2 layers, 3-layer perceptron
        "Projection head architecture": ("cocord.proj_layers", ov("distill.cocord.proj_layers", 1, 2, 3)),
        "Linear predictor": ("cocord.pred_layers", ov("distill.cocord.pred_layers", 1)),
        "No BN in the projectors": ("cocord.proj_bn", ov("distill.cocord.proj_bn", False)),
    }, {}),
    "outside_cocord_memory.md": ({
        "Queue vs bank": ("cocord.memory", ov("distill.cocord.memory", "queue", "bank")),
        "No dictionary": ("cocord.queue_size", ov("distill.cocord.memory", "batch")),  # in-batch negatives only
    }, {}),
    "outside_cocord_dictionary.jsonl": ({
        "Dictionary size": ("cocord.queue_size", ov("distill.cocord.queue_size", 1024, 4096)),
    }, {"Dictionary encoder": '--map "NAME=teacher.arch"'}),
    "outside_cocord_prose.md": ({
        "1. Temperature of InfoNCE (tau)": ("cocord.tau", ov("distill.cocord.tau", 0.01, 0.1, 1.0)),  # a decade each
        "2. Slow-moving student momentum": ("cocord.m_r", ov("distill.cocord.m_r", COCORD.distill.cocord.m_r, 0.99)),
    }, {}),
    "outside_cocord_teacher_head.jsonl": ({
        "Linear teacher head": ("cocord.teacher_proj_layers", ov("distill.cocord.teacher_proj_layers", 1)),
        "Teacher head width": ("cocord.teacher_proj_hidden", ov("distill.cocord.teacher_proj_hidden", 256, 1024)),
        "Teacher head BN": ("cocord.teacher_proj_bn", ov("distill.cocord.teacher_proj_bn", False)),
    }, {}),
    "outside_cocord_augment.md": ({
        "Positive-pair augmentation": ("view_augment", ov("data.view_augment", ["crop"], ["crop", "flip", "color_jitter"])),
    }, {}),
    "outside_cocord_losses.jsonl": ({
        "No InfoNCE": ("cocord.ctr_weight", ov("distill.cocord.ctr_weight", 0.0)),
        "No consistency": ("cocord.pred_weight", ov("distill.cocord.pred_weight", 0.0)),
        "Lambda pred": ("cocord.pred_weight", ov("distill.cocord.pred_weight", COCORD.distill.cocord.pred_weight, 1.0, 8.0)),
    }, {}),
    "outside_cocord_refused.md": ({}, {"Gradient clipping": "does not clip gradients",
                                       "Dictionary built by another network": "has no architecture of its own"}),
    "outside_cocord_momentum_table.md": ({
        "momentum coefficient of the teacher proj": ("cocord.m_c", ov("distill.cocord.m_c", 0.99, 0.999, 1.0)),
        "momentum of the slow-moving student (m_r": ("cocord.m_r", ov("distill.cocord.m_r", 0.0)),
    }, {}),
    "outside_cocord_predictor.md": ({
        "Predictor depth": ("cocord.pred_layers", ov("distill.cocord.pred_layers", 1, 2, 3)),
        "Predictor width": ("cocord.pred_hidden", ov("distill.cocord.pred_hidden", 128, 2048)),
    }, {}),
    "outside_cocord_missing_fields.md": ({
        "In-batch negatives": ("cocord.memory", ov("distill.cocord.memory", "batch")),
        "Teacher head frozen": ("cocord.m_c", ov("distill.cocord.m_c", 1.0)),
    }, {}),
    # ------------------------------------------------------------------------------------ intra-class teacher
    "outside_intra_table.md": ({
        "1": ("intra.delta", ov("objective.intra.delta", 0.2, 0.6)),
        "2": ("intra.lambda", ov("objective.intra.lambda_", 0.01, 0.1)),  # "0.01 (default)": the number as written
        "3": ("intra.margin", ov("objective.intra.margin", False)),
    }, {}),
    "outside_intra_prose.md": ({
        "Loss weight sweep": ("intra.lambda", ov("objective.intra.lambda_", *log_points(1e-3, 1e-1, 5))),
        "Temperature": ("intra.tau", ov("objective.intra.tau", 0.1, 0.5)),
    }, {}),
    "outside_intra_objective.jsonl": ({
        "Other contrastive losses": ("objective.kind", [objective("supcon"), objective("simclr")]),
        "Cache size": ("intra.cache_size", ov("objective.intra.cache.size", 16, 128)),
    }, {}),
    "outside_intra_head.md": ({
        "Projection head of the teacher": ("head.kind", ov("objective.head.kind", "linear", "mlp3", "none")),
        "Embedding size": ("head.dim", ov("objective.head.dim", 64, 256)),
    }, {}),
    "outside_intra_refused.jsonl": ({}, {"Mixup": "no mixup", "Dropout": "cannot place the ablated part"}),
    "outside_intra_views.md": ({
        "Augmentation of the positive pairs": ("view_augment", ov("data.view_augment", ["rrc", "color_jitter"])),
        "Views per image": ("views", ov("objective.views", 4)),
    }, {}),
    "outside_intra_defaults.md": ({
        "Margin": ("intra.delta", ov("objective.intra.delta", INTRA.objective.intra.delta, 0.3)),
        "Lambda": ("intra.lambda", ov("objective.intra.lambda_", INTRA.objective.intra.lambda_, 0.05)),
    }, {}),
    "outside_intra_methods.md": ({
        "Ours + RKD": ("distill.methods", ov("distill.methods", ["kd", "rkd"])),
        "No KD at all": ("distill.methods", ov("distill.methods", [])),
    }, {}),
    "outside_intra_unreadable.md": ({
        "Temperature": ("intra.tau", ov("objective.intra.tau", 0.2)),
    }, {"Margin (typo)": "unexpected bananas"}),
    "outside_intra_schedule.jsonl": ({
        "LR sweep": ("lr", [{"teacher.optim.lr": v, "student.optim.lr": v} for v in (0.01, 0.055, 0.1)]),
        "Longer training": ("epochs", [{"teacher.epochs": n, "student.epochs": n} for n in (2, 8)]),
    }, {}),
    "outside_intra_head_on_ce.md": ({
        "Projection head depth": ("head.kind", ov("objective.head.kind", "linear", "mlp3")),
    }, {"Batch norm in the head": "every variant equals the base run (objective.head.bn=on)"}),  # BN is on already
}


def test_there_are_twenty_outside_plans_for_both_papers():
    files = sorted(p.name for p in [*PLANS.glob("outside_cocord_*"), *PLANS.glob("outside_intra_*")])
    assert files == sorted(EXPECTED) and len(files) >= 20
    assert sum("cocord" in f for f in files) >= 10 and sum("intra" in f for f in files) >= 10
    assert {Path(f).suffix for f in files} == {".md", ".jsonl"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_outside_plan_resolves_to_its_expected_grid(name):
    runs, refused = EXPECTED[name]
    plan = parse_plan(PLANS / name)
    if not runs:  # nothing resolves: the plan runs nothing and says why, for every ablation
        with pytest.raises(ResolveError) as err:
            resolve_plan(plan)
        text = str(err.value)
        assert "no ablation resolves" in text and "nothing was run" in text
        for ab_name, why in refused.items():
            assert f"'{ab_name}'" in text and why in text
        return
    grid = resolve_plan(plan)
    got = {a.ablation.name: (a.knob.name, [v.overrides for v in a.variants]) for a in grid.ablations}
    assert got == runs
    reasons = {u.ablation.name: "\n".join(u.lines()) for u in grid.unresolved}
    assert set(reasons) == set(refused)
    for ab_name, why in refused.items():
        assert why in reasons[ab_name]
    # the grid runs exactly the resolved variants (plus the base): nothing of a refused ablation
    ran = {v.label for a in grid.ablations for v in a.variants}
    assert len(grid.configs()) >= 1 and all(a.ablation.name not in refused for a in grid.ablations) and ran


def test_a_head_ablation_on_a_ce_teacher_is_refused_not_run_identically():
    """The case seen: the teacher objective's projection head on a base whose teacher is CE-trained (no head is
    built) would train the same teacher and student under other names."""
    with pytest.raises(ResolveError) as err:
        resolve_plan(parse_plan(PLANS / "outside_intra_head_on_ce.md"), overrides=["objective.kind=ce"])
    text = str(err.value)
    assert text.count("has no effect on this base run: it needs objective.kind to be one of intra, simclr, supcon (base: ce)") == 2
    assert "nothing was run" in text


def test_mapping_a_cocord_plan_onto_the_teacher_objective_head_is_refused(tmp_path):
    p = tmp_path / "heads.jsonl"
    p.write_text(json.dumps({"name": "Heads", "ablated_part": "projection heads (CoCoRD)", "action": "REPLACE",
                             "replacement": ["linear", "3-layer MLP"], "metrics": ["top-1"]}) + "\n")
    assert COCORD.objective.kind == "ce"
    with pytest.raises(ResolveError, match=r"head.kind \(objective.head.kind\) has no effect on this base run"):
        resolve_plan(parse_plan(p), maps=["Heads=objective.head.kind"])
    grid = resolve_plan(parse_plan(p))  # unmapped: CoCoRD's own projectors
    assert [v.overrides for v in grid.ablations[0].variants] == ov("distill.cocord.proj_layers", 1, 3)


def test_add_brings_the_distiller_whose_knob_it_sets(tmp_path):
    """ADD onto a knob the base does not use is allowed when kdlab can add the component: the distiller."""
    p = tmp_path / "add.jsonl"
    p.write_text(json.dumps({"name": "Add pred", "ablated_part": "CoCoRD prediction loss weight", "action": "ADD",
                             "replacement": ["4"], "metrics": []}) + "\n")
    grid = resolve_plan(parse_plan(p), base="ablation/intra_digits")
    assert [v.overrides for v in grid.ablations[0].variants] == [
        {"distill.methods": ["kd", "cocord"], "distill.cocord.pred_weight": 4.0}]


# ------------------------------------------------------------------------------------- values as prose
@pytest.mark.parametrize("knob, text, value", [
    ("cocord.memory", "fixed-size teacher queue (CoCoRD)", "queue"),
    ("cocord.memory", "full dataset memory bank", "bank"),
    ("cocord.memory", "in-batch negatives only (no queue, no bank)", "batch"),
    ("cocord.memory", "queue (current)", "queue"),
    ("cocord.proj_layers", "two-layer perceptron", 2),
    ("cocord.proj_layers", "linear", 1),
    ("cocord.proj_layers", "MLP with BN", 2),
    ("cocord.tau", "the default", COCORD.distill.cocord.tau),
    ("cocord.queue_size", "baseline (current)", COCORD.distill.cocord.queue_size),
    ("cocord.tau", "0.2 [CoCoRD paper]", 0.2),
])
def test_prose_values(knob, text, value):
    assert parse_value(knob_by_name(knob), text, COCORD) == value


@pytest.mark.parametrize("knob, text, message", [
    ("cocord.tau", "0.05 to 0.2", "gives no number of points"),
    ("cocord.tau", "0.05 to 0.2, 4 points on a banana scale", "cannot read banana"),
    ("cocord.proj_layers", "MLP without BN", "batch norm"),
    ("cocord.memory", "teacher queue or memory bank", "names more than one of queue, bank, batch"),
    ("cocord.memory", "dictionary with a different architecture", '--map "NAME=teacher.arch"'),
])
def test_prose_values_that_cannot_be_read_say_which_words(knob, text, message):
    with pytest.raises(ValueError) as err:
        parse_value(knob_by_name(knob), text, COCORD)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_ranges_are_written_out():
    from kdlab.ablation.resolve import expand_values

    assert expand_values(knob_by_name("cocord.queue_size"), ["256 to 4096, log scale, 5 points"], COCORD) == \
        ["256", "512", "1024", "2048", "4096"]
    assert expand_values(knob_by_name("intra.delta"), ["0.1 to 0.9, 5 values"], INTRA) == \
        ["0.1", "0.3", "0.5", "0.7", "0.9"]


def test_dictionary_size_does_not_act_without_a_dictionary(tmp_path):
    """With in-batch negatives there is no queue: its size would change nothing, so the ablation is refused."""
    p = tmp_path / "n.jsonl"
    p.write_text(json.dumps({"name": "N", "ablated_part": "dictionary size N (CoCoRD)", "action": "REPLACE",
                             "replacement": ["1024"], "metrics": []}) + "\n")
    with pytest.raises(ResolveError) as err:
        resolve_plan(parse_plan(p), overrides=["distill.cocord.memory=batch"])
    assert ("cocord.queue_size (distill.cocord.queue_size) has no effect on this base run: it needs "
            "distill.cocord.memory to be one of queue, bank (base: batch)") in str(err.value)
    assert "add the override distill.cocord.memory=queue after the plan" in str(err.value)


def test_between_is_a_range_and_a_bare_and_is_not():
    from kdlab.ablation.resolve import expand_values

    tau = knob_by_name("cocord.tau")
    assert expand_values(tau, ["between 0.1 and 0.3, 3 points"], COCORD) == ["0.1", "0.2", "0.3"]
    with pytest.raises(ValueError, match="expected one number, found 2"):
        parse_value(tau, "0.1 and 0.5", COCORD)


def test_a_method_knob_acts_only_where_the_method_is_used(tmp_path):
    """The ratio schedule's target acts on an intra-class teacher with the ratio schedule: on a SupCon teacher
    both conditions fail, and the refusal names both overrides that would make it act."""
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"name": "R", "ablated_part": "target intra inter ratio", "action": "REPLACE",
                             "replacement": ["0.5"], "metrics": []}) + "\n")
    with pytest.raises(ResolveError) as err:
        resolve_plan(parse_plan(p), maps=["R=intra.target_ratio"], overrides=["objective.kind=supcon"])
    text = str(err.value)
    assert ("it needs objective.kind=intra (base: supcon) and objective.intra.lambda_schedule=ratio "
            "(base: constant)") in text
    assert "add the override objective.kind=intra objective.intra.lambda_schedule=ratio after the plan" in text
    grid = resolve_plan(parse_plan(p), maps=["R=intra.target_ratio"], overrides=["objective.intra.lambda_schedule=ratio"])
    assert [v.overrides for v in grid.ablations[0].variants] == [{"objective.intra.target_ratio": 0.5}]


def test_every_method_knob_in_its_own_block_requires_the_method():
    from kdlab import registry
    from kdlab.ablation.knobs import KNOBS

    by_name = {k.name: k for k in KNOBS}
    for spec in registry.all_specs():
        for k in spec.knobs:
            if k.path.startswith(spec.section + "."):
                assert spec.requirement in (by_name[k.name].requires or ""), k.name


def test_explain_says_which_runs_the_knob_acts_on():
    from kdlab.ablation.explain import format_explain

    text = format_explain(resolve_plan(parse_plan(PLANS / "outside_intra_head.md")))
    assert "    acts on:     teacher runs where objective.kind=intra|simclr|supcon" in text
    text = format_explain(resolve_plan(parse_plan(PLANS / "outside_cocord_memory.md")))
    assert "    acts on:     student runs where distill.methods~cocord" in text


def test_explain_names_a_reading_beyond_the_alias_and_keeps_its_knobs_out_of_the_runners_up():
    from kdlab.ablation.explain import format_explain

    text = ("# lm-planner/m/Enriching_Knowledge_Distillation_with_Intra_Class_Contrastive_Learning\n\n"
            "### Cache sizes\n- **Ablated Part**: Per-class cache\n- **Action**: REPLACE\n- **Replacement**: 0, 128\n"
            "- **Metrics**: accuracy\n\n"
            "### Neither\n- **Ablated Part**: margin filter and per-class cache (both)\n- **Action**: REMOVE\n"
            "- **Metrics**: accuracy\n")
    out = format_explain(resolve_plan(parse_plan_text(text, "explain.md")))
    sizes, both = out.split("[2]")
    assert "numbers for the switch intra.cache set intra.cache_size, whose REMOVE turns it off" in sizes
    assert "knob:        intra.cache_size" in sizes
    assert "removed together" in both
    for block in (sizes, both):  # the knobs the reading used are not its competitors (no "101 % of the chosen")
        runners = next(line for line in block.splitlines() if "runners-up:" in line)
        assert "intra.cache " not in runners and "intra.margin " not in runners
        assert all(int(p) < 100 for p in re.findall(r"\((\d+) % of the chosen\)", runners))
