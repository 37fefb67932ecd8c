"""What a new user meets first: overrides anywhere, progress lines, readable and honest run folders, messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdlab.cli import build_parser, main, parse_args

PLANS = Path(__file__).resolve().parent / "plans"


# ------------------------------------------------------------------------------ overrides anywhere
@pytest.mark.parametrize("argv,config,overrides", [
    (["ablate", "plan.md", "--seeds", "1", "teacher.epochs=2"], None, ["teacher.epochs=2"]),
    (["ablate", "plan.md", "a=1", "--base", "my.yaml", "teacher.epochs=30"], None, ["a=1", "teacher.epochs=30"]),
    (["train-teacher", "demo", "--run-dir", "X", "k=v"], "demo", ["k=v"]),
    (["train-teacher", "--run-dir", "X", "demo", "k=v", "j=w"], "demo", ["k=v", "j=w"]),
    (["pipeline", "demo", "a.b=1", "--run-dir", "X", "c.d=[x,y]"], "demo", ["a.b=1", "c.d=[x,y]"]),
])
def test_overrides_are_taken_after_options(argv, config, overrides):
    args = parse_args(build_parser(), argv)
    assert getattr(args, "config", None) == config and args.overrides == overrides


def test_ablate_override_after_an_option_reaches_the_base(monkeypatch, capsys):
    import kdlab.ablation

    real, seen = kdlab.ablation.run_plan, {}

    def recording(*args, **kw):
        seen["result"] = real(*args, **kw)
        return seen["result"]

    monkeypatch.setattr(kdlab.ablation, "run_plan", recording)
    code = main(["ablate", str(PLANS / "tiny.jsonl"), "--dry-run", "--seeds", "1", "teacher.epochs=7"])
    assert code == 0 and "dry run" in capsys.readouterr().out
    grid = seen["result"].grid
    assert grid.base.teacher.epochs == 7 and len(grid.seeds) == 1


@pytest.mark.parametrize("argv,usage", [
    (["ablate", "plan.md", "--seeds", "1", "oops"], "usage: kdlab ablate"),
    (["train-teacher", "demo", "--run-dir", "X", "--no-such-option"], "usage: kdlab train-teacher"),
    (["runs", "runs/", "stage=student"], "usage: kdlab runs"),  # runs takes --filter, not overrides
])
def test_leftover_arguments_get_the_commands_own_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(build_parser(), argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and usage in err and "unrecognized arguments" in err
