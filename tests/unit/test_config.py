"""Configs: typed, validated, overridable; each mistake gets one clear line."""

import pytest
import yaml

from kdlab.config import ConfigError

from kdlab.experiment.schema import build_config, load_config, parse_overrides, to_yaml


def test_overrides_are_typed_and_nested():
    cfg = load_config("demo", ["objective.intra.lambda_=0.03", "data.batch_size=128", "distill.methods=[kd,rkd]",
                               "objective.intra.cache.enabled=false", "data.view_augment=[rrc, color_jitter]"])
    assert cfg.objective.intra.lambda_ == 0.03 and cfg.data.batch_size == 128
    assert cfg.distill.methods == ["kd", "rkd"]
    assert cfg.objective.intra.cache.enabled is False
    assert cfg.data.view_augment == ["rrc", "color_jitter"]


@pytest.mark.parametrize("override,message", [
    ("objective.intra.lamda_=1", "unknown config key 'objective.intra.lamda_'; did you mean 'lambda_'?"),
    ("objectve.kind=ce", "did you mean 'objective'?"),
    ("objective.intra.lambda_=-0.1", "objective.intra.lambda_: input should be greater than or equal to 0"),
    ("objective.intra.delta=1.5", "objective.intra.delta: input should be less than or equal to 1"),
    ("objective.intra.delta=-2", "objective.intra.delta: input should be greater than or equal to -1"),
    ("objective.intra.tau=0", "objective.intra.tau: input should be greater than 0"),
    ("objective.intra.cache.size=0", "objective.intra.cache.size: input should be greater than or equal to 1"),
    ("data.batch_size=many", "data.batch_size: input should be a valid integer"),
    ("objective.kind=triplet", "objective.kind: input should be 'ce', 'intra', 'simclr' or 'supcon'"),
    ("teacher.arch=resnet21", "did you mean resnet"),
    ("runtime.device=tpu", "device must be auto, cpu, cuda or cuda:N"),
    ("runtime.sync_bn=maybe", "runtime.sync_bn: input should be a valid boolean"),
])
def test_bad_values_give_one_clear_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    text = str(err.value)
    assert message in text and "\n" not in text


def test_sync_bn_is_off_by_default_and_changes_the_run_identity_only_when_set():
    from kdlab.experiment.identity import identity_tree, run_identity

    cfg = load_config("demo")
    assert cfg.runtime.sync_bn is False and load_config("demo", ["runtime.sync_bn=true"]).runtime.sync_bn is True
    for stage in ("teacher", "student"):
        assert run_identity(load_config("demo", ["runtime.sync_bn=true"]), stage) != run_identity(cfg, stage)
    # a run folder written before the key existed (its config.yaml lacks it) is the same run, and resumes
    before = yaml.safe_load("\n".join(line for line in to_yaml(cfg).splitlines() if "sync_bn" not in line))
    assert before != yaml.safe_load(to_yaml(cfg)) and identity_tree(before) == identity_tree(cfg)


def test_contrastive_kind_needs_two_views():
    with pytest.raises(ConfigError, match="objective.views=2"):
        build_config({}, ["objective.kind=supcon", "objective.views=1"])
    cfg = build_config({}, ["objective.kind=intra", "objective.intra.positive=memory"])
    assert cfg.teacher_views() == 1


def test_malformed_overrides_and_files(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["objective.intra.lambda_"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_yaml_round_trip():
    cfg = load_config("demo", ["objective.intra.delta=0.25"])
    import yaml

    again = build_config(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


def test_ce_and_kd_weight_defaults_follow_repdistiller():
    assert build_config({}).distill.resolved_ce_weight() == 0.1
    assert build_config({}).distill.resolved("kd").weight == 0.9
    both = build_config({}, ["distill.methods=[kd,rkd]"]).distill
    assert (both.resolved_ce_weight(), both.resolved("kd").weight) == (1.0, 1.0)


def test_text_fields_keep_the_override_as_typed():
    cfg = load_config("demo", ["name=2024", "student.checkpoint=on.pt", "data.root=~/data/cifar"])
    assert (cfg.name, cfg.student.checkpoint, cfg.data.root) == ("2024", "on.pt", "~/data/cifar")
    assert load_config("demo", ["data.root=null"]).data.root is None
    assert load_config("demo", ["seed=7"]).seed == 7  # numbers stay numbers where the field is numeric


def test_on_off_runtime_values_survive_yaml_booleans(tmp_path):
    """YAML reads on/off as booleans; runtime.amp and runtime.channels_last still get the word that was meant."""
    cfg = build_config(overrides=["runtime.amp=off", "runtime.channels_last=off"])
    assert (cfg.runtime.amp, cfg.runtime.channels_last) == ("off", "off")
    cfg = build_config(overrides=["runtime.channels_last=on", "runtime.amp=yes"])
    assert (cfg.runtime.amp, cfg.runtime.channels_last) == ("bf16", "on")
    (tmp_path / "c.yaml").write_text("runtime:\n  amp: off\n  channels_last: on\n")
    cfg = load_config(str(tmp_path / "c.yaml"))
    assert (cfg.runtime.amp, cfg.runtime.channels_last) == ("off", "on")
