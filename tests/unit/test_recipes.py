"""Shipped recipes (configs/<dataset>/<teacher>_<student>.yaml) and their published reference numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from kdlab.config import shipped_configs_dir

from kdlab.experiment.schema import ExperimentConfig, load_config
from kdlab.engine.trainer import lr_at
from kdlab.models import build_model, list_models
from kdlab.recipes import (
    expected_vs_got,
    list_recipes,
    load_references,
    method_key,
    reference_for,
    rows_to_markdown,
)




# The CIFAR-100 pairs of the KD literature (RepDistiller / CRD table), teacher -> student.
CIFAR100_PAIRS = [
    ("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet110", "resnet20"), ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"),
    ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"),
    ("wrn_40_2", "ShuffleV1"),
]
MOBILE_STUDENTS = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}  # RepDistiller: student lr 0.01
CIFAR100 = [f"cifar100/{t}_{s}" for t, s in CIFAR100_PAIRS]
OTHERS = ["cifar10/resnet56_resnet20", "tiny_imagenet/resnet34_resnet18",
          "imagenet/resnet34_resnet18", "imagenet/resnet50_mobilenetv1"]
PAIR_RECIPES = CIFAR100 + OTHERS


@pytest.fixture(scope="module")
def configs() -> dict[str, ExperimentConfig]:
    return {name: load_config(name) for name in PAIR_RECIPES}


# --------------------------------------------------------------------------------------- loading
def test_every_pair_recipe_is_shipped():
    shipped = set(list_recipes())
    assert set(PAIR_RECIPES) <= shipped
    assert not any(n.endswith("/reference") for n in shipped)  # reference files are data, not recipes


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_loads_and_validates(name):
    cfg = load_config(name)
    assert isinstance(cfg, ExperimentConfig)
    models = set(list_models())
    assert cfg.teacher.arch in models and cfg.student.arch in models


@pytest.mark.parametrize("name", PAIR_RECIPES)
def test_recipe_says_how_to_run_it(name):
    text = (shipped_configs_dir() / f"{name}.yaml").read_text()
    header = text.split("\nname:")[0]
    assert f"kdlab pipeline {name} data.root=" in header
    assert f"kdlab distill {name} " in header and "teacher.checkpoint=" in header
    assert "0.01-0.03 per the paper" in text  # the lambda range of the intra objective


def test_recipe_file_names_are_teacher_underscore_student(configs):
    for name in CIFAR100 + ["cifar10/resnet56_resnet20"]:
        cfg = configs[name]
        assert name.split("/")[1] == f"{cfg.teacher.arch}_{cfg.student.arch}"


# ----------------------------------------------------------------------------- CIFAR-100 schedule
@pytest.mark.parametrize("name", CIFAR100)
def test_cifar100_standard_schedule(name, configs):
    cfg = configs[name]
    assert cfg.data.name == "cifar100" and cfg.data.root == "data/cifar100"
    assert cfg.data.batch_size == 64
    for stage in (cfg.teacher, cfg.student):
        assert stage.epochs == 240
        o = stage.optim
        assert o.schedule == "step" and o.milestones == [150, 180, 210] and o.gamma == pytest.approx(0.1)
        assert o.momentum == pytest.approx(0.9) and o.weight_decay == pytest.approx(5e-4)
        assert o.warmup_epochs == 0
    assert cfg.teacher.optim.lr == pytest.approx(0.05)
    want_student_lr = 0.01 if cfg.student.arch in MOBILE_STUDENTS else 0.05
    assert cfg.student.optim.lr == pytest.approx(want_student_lr)
    # the paper's objective for the teacher, Hinton KD for the student
    assert cfg.objective.kind == "intra"
    i = cfg.objective.intra
    assert (i.lambda_, i.delta, i.tau, i.cache.size) == (pytest.approx(0.02), 0.5, pytest.approx(0.1), 128)
    assert 0.01 <= i.lambda_ <= 0.03
    assert cfg.distill.methods == ["kd"] and cfg.distill.kd.T == 4.0
    assert cfg.distill.resolved_ce_weight() == pytest.approx(0.1)
    assert cfg.distill.resolved("kd").weight == pytest.approx(0.9)


def test_lr_at_on_recipes(configs):
    cfg = configs["cifar100/resnet56_resnet20"]
    t = cfg.teacher
    assert lr_at(t.optim, t.epochs, 0) == pytest.approx(0.05)
    assert lr_at(t.optim, t.epochs, 149.9) == pytest.approx(0.05)
    assert lr_at(t.optim, t.epochs, 150) == pytest.approx(0.005)
    assert lr_at(t.optim, t.epochs, 180) == pytest.approx(0.0005)
    assert lr_at(t.optim, t.epochs, 210) == pytest.approx(0.00005)
    assert lr_at(t.optim, t.epochs, 239.9) == pytest.approx(0.00005)
    s = configs["cifar100/vgg13_MobileNetV2"].student
    assert lr_at(s.optim, s.epochs, 0) == pytest.approx(0.01)
    assert lr_at(s.optim, s.epochs, 150) == pytest.approx(0.001)
    im = configs["imagenet/resnet34_resnet18"].student
    assert [lr_at(im.optim, im.epochs, e) for e in (29, 30, 60, 90)] == pytest.approx([0.2, 0.02, 0.002, 0.0002])
    ti = configs["tiny_imagenet/resnet34_resnet18"].student
    assert [lr_at(ti.optim, ti.epochs, e) for e in (59, 60, 120, 160)] == pytest.approx([0.2, 0.02, 0.002, 0.0002])


# -------------------------------------------------------------------------- the other datasets
def test_other_dataset_recipes(configs):
    c10 = configs["cifar10/resnet56_resnet20"]
    assert c10.data.name == "cifar10" and c10.teacher.epochs == c10.student.epochs == 240
    assert c10.student.optim.milestones == [150, 180, 210]

    tiny = configs["tiny_imagenet/resnet34_resnet18"]
    assert tiny.data.name == "tiny-imagenet"
    assert (tiny.teacher.arch, tiny.student.arch) == ("ResNet34", "ResNet18")
    assert tiny.teacher.epochs == 200 and tiny.data.batch_size == 256
    assert tiny.student.optim.lr == pytest.approx(0.2) and tiny.student.optim.milestones == [60, 120, 160]

    for name, pair in [("imagenet/resnet34_resnet18", ("imagenet_resnet34", "imagenet_resnet18")),
                       ("imagenet/resnet50_mobilenetv1", ("imagenet_resnet50", "imagenet_mobilenetv1"))]:
        cfg = configs[name]
        assert (cfg.teacher.arch, cfg.student.arch) == pair
        assert cfg.data.name == "imagefolder" and cfg.data.root == "data/imagenet"
        assert cfg.data.batch_size == 512
        for stage in (cfg.teacher, cfg.student):
            o = stage.optim
            assert stage.epochs == 100 and o.lr == pytest.approx(0.2) and o.milestones == [30, 60, 90]
            assert o.weight_decay == pytest.approx(1e-4) and o.momentum == pytest.approx(0.9)
        # mdistiller's ImageNet KD baseline: T = 1, 0.5 CE + 0.5 KL
        assert cfg.distill.kd.T == 1.0
        assert cfg.distill.resolved_ce_weight() == cfg.distill.resolved("kd").weight == pytest.approx(0.5)


def test_overrides_apply_on_top_of_a_recipe():
    cfg = load_config("cifar100/resnet32x4_resnet8x4",
                      ["data.root=/x/cifar-100-python", "teacher.checkpoint=ckpt_epoch_240.pth"])
    assert cfg.data.root == "/x/cifar-100-python" and cfg.teacher.checkpoint == "ckpt_epoch_240.pth"
    assert cfg.teacher.arch == "resnet32x4"


# ---------------------------------------------------------------------------------- model builds
def _recipe_archs() -> list[str]:
    archs = []
    for name in PAIR_RECIPES:
        cfg = load_config(name)
        for a in (cfg.teacher.arch, cfg.student.arch):
            if a not in archs:
                archs.append(a)
    return archs


@pytest.mark.parametrize("arch", _recipe_archs())
def test_recipe_models_build_and_run(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=100).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 100)
    assert torch.isfinite(out.logits).all()


# ------------------------------------------------------------------------------------ references
@pytest.mark.parametrize("name", PAIR_RECIPES)
def test_every_recipe_pair_has_a_reference(name, configs):
    cfg = configs[name]
    ref = reference_for(name)
    assert ref is not None, name
    assert (ref["teacher"], ref["student"]) == (cfg.teacher.arch, cfg.student.arch)
    assert reference_for(cfg) == ref  # by config too
    for key, value in ref["top1"].items():
        assert value is None or 0 < value < 100
        if value is not None:
            assert ref["sources"][key]["cite"] and ref["sources"][key]["protocol"]
            assert ref["sources"][key]["compare_with"] in ("top1", "top1_best")


def test_reference_files_are_consistent():
    models = set(list_models())
    for ref in load_references():
        assert ref["dataset"] in ("cifar10", "cifar100", "tiny-imagenet", "imagefolder")
        for pair, entry in ref["pairs"].items():
            assert entry["teacher"] in models and entry["student"] in models, pair
            for key in entry["top1"]:
                src = (entry.get("columns") or {}).get(key) or ref["columns"][key]
                assert src in ref["sources"], (pair, key)


@pytest.mark.parametrize("name", CIFAR100)
def test_cifar100_references_have_the_published_baselines(name):
    top1 = reference_for(name)["top1"]
    for key in ("teacher", "student", "kd", "rkd", "crd", "crd_kd", "cocord", "cocord_kd"):
        assert isinstance(top1[key], float), key
    assert top1["teacher"] > top1["kd"] > top1["student"]


def test_known_reference_numbers():
    ref = reference_for("cifar100/resnet32x4_resnet8x4")
    assert ref["top1"]["teacher"] == 79.42 and ref["top1"]["student"] == 72.50
    assert ref["top1"]["kd"] == 73.33 and ref["top1"]["crd"] == 75.51 and ref["top1"]["dkd"] == 76.32
    assert "last epoch" in ref["sources"]["crd"]["protocol"]
    assert "best epoch" in ref["sources"]["dkd"]["protocol"] and "5" in ref["sources"]["dkd"]["protocol"]
    assert "RepDistiller" in ref["sources"]["kd"]["cite"] and "mdistiller" in ref["sources"]["dkd"]["cite"]
    assert reference_for("cifar100/resnet110_resnet20")["top1"]["dkd"] is None  # not published
    im = reference_for("imagenet/resnet50_mobilenetv1")
    assert (im["top1"]["kd"], im["top1"]["dkd"], im["top1"]["student"]) == (70.50, 72.05, None)
    assert reference_for("imagenet/resnet34_resnet18")["top1"]["kd"] == 71.03


def test_reference_for_unmatched_and_other_inputs():
    assert reference_for("demo") is None  # digits: no published numbers
    swapped = load_config("cifar100/resnet56_resnet20", ["teacher.arch=resnet20", "student.arch=resnet56"])
    assert reference_for(swapped) is None
    other_data = load_config("cifar100/resnet56_resnet20", ["data.name=cifar10"])
    assert reference_for(other_data)["dataset"] == "cifar10"
    tree = load_config("cifar100/vgg13_vgg8").model_dump(mode="json")  # a run folder's config.yaml
    assert reference_for(tree)["pair"] == "vgg13_vgg8"


# ------------------------------------------------------------------------------ expected vs got
def test_expected_vs_got_follows_each_source_protocol():
    ref = reference_for("cifar100/resnet32x4_resnet8x4")
    metrics = {"top1": 73.0, "top1_best": 73.5}
    rows = expected_vs_got(metrics, ref, method="kd")
    main = rows[0]
    assert main["role"] == "compared" and main["column"] == "kd"
    assert (main["expected"], main["got"], main["got_metric"]) == (73.33, 73.0, "top1")  # RepDistiller: last
    assert main["delta"] == pytest.approx(-0.33)
    assert [r["column"] for r in rows[1:]] == ["teacher", "student"]
    assert all(r["role"] == "context" and r["got"] is None for r in rows[1:])

    dkd = expected_vs_got({"metrics": metrics}, ref, method=["dkd"])[0]  # summary.json shape accepted
    assert (dkd["expected"], dkd["got"], dkd["got_metric"]) == (76.32, 73.5, "top1_best")  # mdistiller: best

    crd_kd = expected_vs_got(metrics, ref, method=["crd", "kd"], context=False)
    assert len(crd_kd) == 1 and crd_kd[0]["column"] == "crd_kd" and crd_kd[0]["expected"] == 75.46

    only_last = expected_vs_got({"top1": 76.0}, ref, method="dkd")[0]  # no best-epoch value recorded
    assert (only_last["got"], only_last["got_metric"]) == (76.0, "top1")

    teacher = expected_vs_got({"top1": 78.9}, ref, method="teacher")
    assert teacher[0]["column"] == "teacher" and teacher[0]["got"] == 78.9
    assert [r["column"] for r in teacher] == ["teacher", "student"]


def test_expected_vs_got_edge_cases():
    assert expected_vs_got({"top1": 50.0}, None) == []
    ref = reference_for("cifar10/resnet56_resnet20")
    row = expected_vs_got({"top1": 91.0}, ref, "kd")[0]
    assert row["expected"] is None and row["got"] == 91.0 and row["delta"] is None
    row = expected_vs_got(None, reference_for("cifar100/resnet56_resnet20"), "kd")[0]
    assert row["got"] is None and row["expected"] == 70.66
    with pytest.raises(ValueError, match="no reference column"):
        expected_vs_got({}, reference_for("cifar100/resnet56_resnet20"), method=["fitnet"])


def test_method_key_aliases():
    assert method_key("kd") == method_key(["kd"]) == "kd"
    assert method_key("crd+kd") == method_key(["kd", "crd"]) == method_key("CRD_KD") == "crd_kd"
    assert method_key(["cocord", "kd"]) == "cocord_kd"
    assert method_key([]) == method_key("ce") == method_key(None) == "student"
    assert method_key("teacher") == "teacher"


def test_rows_to_markdown():
    ref = reference_for("cifar100/wrn_40_2_wrn_16_2")
    text = rows_to_markdown(expected_vs_got({"top1": 74.5, "top1_best": 74.9}, ref, "kd"))
    lines = text.splitlines()
    assert lines[0].startswith("| pair | row | expected top-1 | got | delta |")
    assert "| wrn_40_2_wrn_16_2 | KD | 74.92 | 74.50 (top1) | -0.42 |" in lines[2]
    assert "| teacher | 75.61 | - | - |" in lines[3]


# ------------------------------------------------------------ the numbers are those of ANCHORS.md
ANCHORS = Path(__file__).resolve().parents[2].parent / "shared" / "ANCHORS.md"


@pytest.mark.shared
def test_cifar100_reference_equals_anchors_table():
    """cifar100/reference.yaml holds exactly the numbers of ANCHORS.md section 8.2."""
    section = ANCHORS.read_text().split("### 8.2")[1].split("### 8.3")[0]
    cols = ["teacher", "student", "kd", "rkd", "crd", "crd_kd", "dkd", "cocord", "cocord_kd"]
    seen = 0
    for line in section.splitlines():
        if not line.startswith("| ") or "→" not in line or "Teacher" in line:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        teacher, student = (x.strip() for x in cells[0].split("→"))
        ref = reference_for(f"cifar100/{teacher}_{student}")
        for key, cell in zip(cols, cells[1:]):
            cell = cell.rstrip("*")
            want = None if re.fullmatch(r"[–-]", cell) else float(cell)
            assert ref["top1"][key] == want, (teacher, student, key)
        seen += 1
    assert seen == len(CIFAR100_PAIRS)


# ------------------------------------------------------------- the literature methods on the five pairs
LITERATURE_PAIRS = ["resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2", "resnet56_resnet20", "vgg13_vgg8",
                    "resnet32x4_ShuffleV2"]
NEW_COLUMNS = ["ab", "cc", "fsp", "ft", "kdsvd", "nst", "vid", "ofd", "reviewkd", "kd_ls", "dkd_ls", "ctkd"]


@pytest.mark.parametrize("pair", LITERATURE_PAIRS)
def test_every_literature_method_runs_on_the_pair_or_is_one_clear_error(pair):
    """Each new column's config validates on the recipe; its loss modules build at the CIFAR shapes, or the
    pair is refused with one ConfigError line, and then no published number is stored for it either."""
    from kdlab.config import ConfigError
    from kdlab.distillers import Distillation, DistillContext
    from kdlab.models import probe
    from kdlab.recipes import column_for, method_config

    name = f"cifar100/{pair}"
    ref = reference_for(name)
    base = load_config(name)
    torch.manual_seed(0)
    student, teacher = build_model(base.student.arch, 100), build_model(base.teacher.arch, 100)
    ctx = DistillContext(student_probe=probe(student, (3, 32, 32)), teacher_probe=probe(teacher, (3, 32, 32)),
                         num_classes=100, num_train=50000, input_shape=(3, 32, 32), epochs=240,
                         student_arch=base.student.arch)
    refused = []
    for column in NEW_COLUMNS:
        cfg = method_config(name, column, ["data.root=/x"])
        assert cfg.data.root == "/x" and cfg.student.epochs == 240  # the recipe underneath, overrides on top
        assert column_for(cfg) == column
        try:
            Distillation(student, teacher, cfg.distill, ctx)
        except ConfigError as err:
            assert "\n" not in str(err) and f"distill.{column}" in str(err)
            refused.append(column)
            assert ref["top1"].get(column) is None, column
    assert refused == (["fsp", "kdsvd"] if pair == "resnet32x4_ShuffleV2" else [])


def test_run_overrides_follow_each_source():
    from kdlab.recipes import method_config, run_overrides

    name = "cifar100/resnet32x4_resnet8x4"
    assert run_overrides(name, "ab") == ["distill.methods=[ab]", "distill.ab.init_epochs=30", "distill.ab.weight=0"]
    assert run_overrides(name, "fsp") == ["distill.methods=[fsp]", "distill.fsp.init_epochs=30",
                                          "distill.fsp.weight=0"]
    assert run_overrides(name, "ft") == ["distill.methods=[ft]", "distill.ft.init_epochs=30"]
    assert run_overrides(name, "nst") == ["distill.methods=[nst]"]
    assert run_overrides(name, ["crd", "kd"]) == ["distill.methods=[crd,kd]"]
    assert run_overrides(name, "student") == ["distill.methods=[]"]
    # the pair's own settings come after the global ones: the LS logs' base temperature 3 and KD weight 1
    assert run_overrides("cifar100/ResNet50_MobileNetV2", "kd_ls") == [
        "distill.methods=[kd]", "distill.kd.logit_std=true", "distill.kd.logit_std_T=3", "distill.kd.weight=1"]
    # mdistiller's per-pair DKD beta (configs/cifar100/dkd/*.yaml; 8 where unset)
    assert run_overrides("cifar100/vgg13_vgg8", "dkd") == ["distill.methods=[dkd]", "distill.dkd.beta=6"]
    assert run_overrides(name, "dkd") == ["distill.methods=[dkd]"]
    ab = method_config(name, "ab")
    assert (ab.distill.methods, ab.distill.ab.init_epochs, ab.distill.ab.weight) == (["ab"], 30, 0.0)
    ls = method_config("cifar100/vgg13_vgg8", "kd_ls")
    assert ls.distill.kd.logit_std is True and ls.distill.kd.logit_std_T == 3.0
    for bad in ("teacher", "kd_dot"):
        with pytest.raises(ValueError, match="not a distillation method"):
            run_overrides(name, bad)
    # a pair without published numbers still gets the column's settings
    assert run_overrides("cifar10/resnet56_resnet20", "ft") == ["distill.methods=[ft]", "distill.ft.init_epochs=30"]


def test_known_literature_numbers_and_their_sources():
    r8 = reference_for("cifar100/resnet32x4_resnet8x4")
    top1, src = r8["top1"], r8["sources"]
    # RepDistiller README, same-architecture table, resnet32x4 -> resnet8x4 column
    assert (top1["ab"], top1["cc"], top1["fsp"], top1["ft"], top1["nst"], top1["vid"]) == (
        73.17, 72.97, 72.62, 72.86, 73.30, 73.09)
    for k in ("ab", "cc", "fsp", "ft", "nst", "vid"):
        assert src[k]["name"] == "repdistiller" and src[k]["compare_with"] == "top1"
    assert (top1["kd_ls"], top1["dkd_ls"]) == (76.62, 77.01) and src["kd_ls"]["name"] == "ls"
    assert src["kd_ls"]["compare_with"] == "top1_best" and "CVPR 2024" in src["kd_ls"]["cite"]
    # CTKD: its own README has no resnet32x4 pair; this number is the LS README's CTKD row
    assert top1["ctkd"] == 73.39 and src["ctkd"]["name"] == "ls"
    wrn = reference_for("cifar100/wrn_40_2_wrn_16_2")
    assert wrn["top1"]["ctkd"] == 75.45 and wrn["sources"]["ctkd"]["name"] == "ctkd"
    assert "CTKD" in wrn["sources"]["ctkd"]["cite"]
    assert (top1["ofd"], top1["reviewkd"]) == (74.95, 75.63) and "secondary" in src["ofd"]["cite"]
    # absent where no source tables the pair
    assert "ofd" not in wrn["top1"] and "reviewkd" not in wrn["top1"]
    shv2 = reference_for("cifar100/resnet32x4_ShuffleV2")["top1"]
    assert "fsp" not in shv2 and shv2["ab"] == 74.31 and shv2["reviewkd"] == 77.78
    assert "fsp" not in reference_for("cifar100/wrn_40_2_wrn_40_1")["top1"]  # RepDistiller: N/A
    assert all("kdsvd" not in ref_pair["top1"] for ref in load_references() for ref_pair in ref["pairs"].values())


def test_expected_vs_got_for_the_new_columns():
    from kdlab.recipes import column_for, method_config

    ref = reference_for("cifar100/resnet56_resnet20")
    metrics = {"top1": 69.9, "top1_best": 70.2}
    ab = expected_vs_got(metrics, ref, method="ab")
    assert [r["column"] for r in ab] == ["ab", "teacher", "student"]
    assert (ab[0]["label"], ab[0]["expected"], ab[0]["got"], ab[0]["got_metric"]) == ("AB", 69.47, 69.9, "top1")
    assert ab[0]["delta"] == pytest.approx(69.9 - 69.47, abs=0.006)
    assert "last epoch" in ab[0]["protocol"]
    ls = expected_vs_got(metrics, ref, method=column_for(method_config("cifar100/resnet56_resnet20", "kd_ls")),
                         context=False)
    assert len(ls) == 1 and (ls[0]["column"], ls[0]["expected"], ls[0]["got"], ls[0]["got_metric"]) == (
        "kd_ls", 71.43, 70.2, "top1_best")
    assert method_key(["kd"]) == "kd" and method_key(["dkd"]) == "dkd"  # a switch is needed for *_ls
    assert method_key("kd_ls") == "kd_ls" and method_key(["reviewkd"]) == "reviewkd"
    row = expected_vs_got(metrics, reference_for("cifar100/vgg13_vgg8"), method="ofd", context=False)[0]
    # no published OFD there: nothing expected, and with no source to follow the last epoch is shown
    assert (row["expected"], row["delta"], row["got"], row["got_metric"]) == (None, None, 69.9, "top1")
    text = rows_to_markdown(ab)
    assert "| resnet56_resnet20 | AB | 69.47 | 69.90 (top1) | +0.43 |" in text
