"""How the sweep forms student groups (kdlab.sweep.groups): pure functions, no training."""

import pytest

from kdlab.experiment.schema import load_config
from kdlab.sweep.groups import activation_bytes, auto_group_size, form_groups, member_bytes


def _key(item):
    return item[0]


def test_groups_follow_the_key_and_the_cap():
    items = [("a", 1), ("b", 2), ("a", 3), ("", 4), ("a", 5), ("b", 6), ("", 7)]
    groups = form_groups(items, key=_key, cap=lambda members: 2, free=0)
    assert sorted(sorted(n for _, n in g) for g in groups) == [[1, 3], [2, 6], [4], [5], [7]]


def test_groups_are_split_to_fill_idle_workers_and_never_mixed():
    items = [("a", i) for i in range(6)]
    assert [len(g) for g in form_groups(items, key=_key, cap=lambda members: 10, free=1)] == [6]
    halves = form_groups(items, key=_key, cap=lambda members: 10, free=2)
    assert sorted(len(g) for g in halves) == [3, 3]
    assert sorted(len(g) for g in form_groups(items, key=_key, cap=lambda members: 10, free=4)) == [1, 1, 2, 2]
    single = form_groups([("a", 0)], key=_key, cap=lambda members: 10, free=8)
    assert single == [[("a", 0)]]  # nothing to split


def test_member_state_and_step_activations_grow_as_they_should():
    base = load_config("demo", ["student.arch=resnet8", "data.batch_size=64"])
    wide = load_config("demo", ["student.arch=resnet8x4", "data.batch_size=64"])
    assert member_bytes(wide) > 10 * member_bytes(base)  # about 16 x the parameters
    n_params = sum(p.numel() for p in __import__("kdlab.models", fromlist=["build_model"]).build_model(
        "resnet8", num_classes=1000).parameters())
    assert member_bytes(base) == 4 * 4 * n_params
    doubled = load_config("demo", ["student.arch=resnet8", "data.batch_size=128"])
    assert activation_bytes(doubled) == 2 * activation_bytes(base)
    three_views = load_config("demo", ["student.arch=resnet8", "data.batch_size=64", "distill.methods=[cocord]"])
    assert activation_bytes(three_views) == 3 * activation_bytes(base)
    assert member_bytes(three_views) == member_bytes(base)  # state does not grow with the batch


def test_auto_size_is_set_by_the_largest_member_and_shrinks_with_jobs_per_device():
    small = load_config("demo", ["student.arch=resnet8"])
    large = load_config("demo", ["student.arch=resnet8x4"])
    assert auto_group_size([small], 1) >= auto_group_size([small, large], 1) == auto_group_size([large], 1) >= 1
    assert auto_group_size([small], 1) >= auto_group_size([small], 64) >= 1


@pytest.mark.parametrize("size", [0, -2])
def test_group_size_below_one_is_one_clear_error(tmp_path, size):
    from kdlab.sweep import load_grid
    from kdlab.sweep.execute import execute
    from kdlab.sweep.grid import SweepError
    from kdlab.sweep.store import Store
    from pathlib import Path

    grid = load_grid(Path(__file__).resolve().parents[1] / "grids" / "kd_group.yaml")
    with pytest.raises(SweepError, match="--group-size must be >= 1"):
        execute(grid, Store(tmp_path), group_size=size, echo=lambda s: None)
