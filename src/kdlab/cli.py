"""The ``kdlab`` command: a thin layer over ``kdlab.experiment.stages``, ``kdlab.demo`` and ``kdlab.ablation``.

Every training command takes an optional YAML config (a path or a shipped recipe name) followed by
dotted overrides ``key=value``. Known errors print one line and exit 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path

EXAMPLES = {
    "demo": "kdlab demo\n  kdlab demo objective.intra.lambda_=0.05 teacher.epochs=20",
    "train-teacher": "kdlab train-teacher demo objective.kind=intra objective.intra.delta=0.3\n"
                     "  kdlab train-teacher my.yaml data.batch_size=128 runtime.device=cuda",
    "distill": "kdlab distill demo teacher.checkpoint=runs/t/checkpoints/last.pt distill.methods=[kd,rkd]\n"
               "  kdlab distill cifar100/resnet56_resnet20 teacher.checkpoint=ckpt_epoch_240.pth",
    "pipeline": "kdlab pipeline demo objective.kind=intra",
    "ablate": "kdlab ablate plan.md --dry-run\n  kdlab ablate plan.md --seeds 3 --map \"Ablation A=objective.intra.delta\"",
    "report": "kdlab report runs/ablate-plan",
    "sweep": "kdlab ablate plan.md --dry-run --write-grid grid.yaml\n  kdlab sweep grid.yaml --jobs 2",
    "runs": "kdlab runs runs/\n  kdlab runs runs/ --filter stage=student --filter status=done",
    "compare": "kdlab compare runs/a/student runs/b/student --out cmp.png",
    "table": "kdlab table runs/grid-a runs/grid-b --where distill.methods=kd --base objective.intra.lambda_=0.02",
    "export": "kdlab export runs/demo-1234abcd/teacher_intra --out exported/",
    "capacity-gap": "kdlab capacity-gap runs/capgap-intra runs/capgap-ce --out runs/capgap",
    "models": "kdlab models",
    "methods": "kdlab methods",
    "configs": "kdlab configs\n  kdlab show-config cifar100/resnet56_resnet20",
    "show-config": "kdlab show-config demo objective.kind=supcon data.batch_size=128",
    "analyze": "kdlab analyze runs/x/teacher_ce/checkpoints/last.pt runs/x/teacher_intra/checkpoints/last.pt",
}


OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=.*", re.S)  # a dotted key=value override


def _plain_parser(sub, name: str, help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_, epilog="examples:\n  " + EXAMPLES[name],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(subparser=p)  # so that a misplaced argument is reported with this command's usage
    return p


def _stage_parser(sub, name: str, help_: str) -> argparse.ArgumentParser:
    p = _plain_parser(sub, name, help_)
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config file or shipped recipe name (default: built-in defaults); "
                        "a first argument containing '=' is taken as an override")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. objective.intra.lambda_=0.03")
    p.add_argument("--run-dir", type=Path, default=None, help="run folder (default: OUT/NAME-HASH[/stage])")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdlab",
        description="Knowledge-distillation research toolkit: intra-class contrastive teachers, "
                    "KD/RKD/CRD/DKD/CoCoRD students, ablation plans end to end.",
        epilog="examples:\n  " + "\n  ".join(EXAMPLES[k] for k in ("demo", "pipeline", "ablate")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = _stage_parser(sub, "demo", "train CE and intra teachers, distil a student from each, compare")
    demo.set_defaults(func=cmd_demo)
    _stage_parser(sub, "train-teacher", "train a teacher with its objective (ce | intra | supcon | simclr)") \
        .set_defaults(func=cmd_train_teacher)
    _stage_parser(sub, "distill", "distil a student from a teacher checkpoint").set_defaults(func=cmd_distill)
    _stage_parser(sub, "pipeline", "train a teacher, then distil the student from it").set_defaults(func=cmd_pipeline)

    ab = _plain_parser(sub, "ablate", "run an AblationBench plan (markdown or JSONL) end to end")
    ab.add_argument("plan", type=Path)
    ab.add_argument("overrides", nargs="*", help="dotted overrides applied to the base config")
    ab.add_argument("--base", default=None, help="base experiment config (default: chosen from the plan)")
    ab.add_argument("--seeds", type=int, default=3)
    ab.add_argument("--map", action="append", default=[], metavar="ABLATION=PATH",
                    help="place an ablated part by hand, e.g. \"Ablation A=objective.intra.delta\"")
    ab.add_argument("--out", type=Path, default=None)
    ab.add_argument("--executor", choices=["local", "submitit"], default="local")
    ab.add_argument("--jobs", type=int, default=None, help="parallel runs (default: sized to the machine)")
    ab.add_argument("--dry-run", action="store_true", help="resolve the plan and print the grid; run nothing")
    ab.add_argument("--write-grid", type=Path, default=None, metavar="GRID.yaml",
                    help="save the resolved grid as a file to review, edit and run with `kdlab sweep`")
    ab.add_argument("--explain", action="store_true",
                    help="per ablation: the knob chosen and the words that chose it, the runners-up with their "
                         "scores, the values as read, the warnings; run nothing")
    ab.add_argument("--strict", action="store_true",
                    help="run nothing unless every ablation resolves (default: run those that do, list the others)")
    _executor_options(ab)
    ab.set_defaults(func=cmd_ablate)

    sw = _plain_parser(sub, "sweep", "run a grid file (base config, seeds, variants as overrides) end to end")
    sw.add_argument("grid", type=Path)
    sw.add_argument("--out", type=Path, default=None, help="results folder (default: out/sweep-<grid name>)")
    sw.add_argument("--dry-run", action="store_true", help="check the grid file and list its runs; run nothing")
    sw.add_argument("--jobs", type=int, default=None, help="parallel runs (default: sized to the machine)")
    sw.add_argument("--executor", choices=["local", "submitit"], default="local")
    _executor_options(sw)
    sw.set_defaults(func=cmd_sweep)

    rep = _plain_parser(sub, "report", "rebuild an ablation's tables and plots from its results store")
    rep.add_argument("dir", type=Path)
    rep.set_defaults(func=cmd_report)

    tab = _plain_parser(sub, "table", "one paired table (mean ± std, Δ with 95 % CI) from the runs of several "
                        "sweep/ablate folders")
    tab.add_argument("stores", type=Path, nargs="+", help="--out folders of kdlab sweep / ablate runs")
    tab.add_argument("--base", action="append", default=[], metavar="KEY=VALUE",
                     help="the base group's config (repeat for more keys; default: the first store's base run)")
    tab.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                     help="keep only runs with this config value, e.g. distill.methods=kd")
    tab.add_argument("--metric", action="append", default=[], metavar="STAGE.KEY",
                     help="a column, e.g. student.top1 or teacher.intra_inter_ratio (default: the first store's)")
    tab.add_argument("--by", action="append", default=[], metavar="KEY",
                     help="group by these config keys only (default: by whole config)")
    tab.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    tab.add_argument("--json", type=Path, default=None, help="also write the table with per-seed values as JSON")
    tab.set_defaults(func=cmd_table)

    runs = _plain_parser(sub, "runs", "list the runs under a folder (method, knobs, seed, status, top-1, time)")
    runs.add_argument("root", type=Path)
    runs.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")
    runs.set_defaults(func=cmd_runs)
    cmp_ = _plain_parser(sub, "compare", "show runs' metrics side by side and plot their curves")
    cmp_.add_argument("runs", type=Path, nargs="+")
    cmp_.add_argument("--out", type=Path, default=None, help="PNG path (default: beside the first run)")
    cmp_.set_defaults(func=cmd_compare)
    exp = _plain_parser(sub, "export", "write a run's network as a plain state dict (+ safetensors) with a JSON card")
    exp.add_argument("run", type=Path)
    exp.add_argument("--out", type=Path, default=None)
    exp.add_argument("--which", choices=["last", "best"], default="last")
    exp.set_defaults(func=cmd_export)
    ana = _plain_parser(sub, "analyze", "feature geometry, soft-label entropy and t-SNE of one or two checkpoints")
    ana.add_argument("checkpoints", type=Path, nargs="+")
    ana.add_argument("--out", type=Path, default=Path("analysis"))
    ana.add_argument("--max-samples", type=int, default=None)
    ana.add_argument("--T", type=float, default=4.0, help="temperature for soft-label statistics")
    ana.set_defaults(func=cmd_analyze)

    gap = _plain_parser(sub, "capacity-gap", "gain of the intra teacher over a CE teacher against student size")
    gap.add_argument("intra_dir", type=Path, help="ablation folder of a student.arch sweep with the intra teacher")
    gap.add_argument("ce_dir", type=Path, help="the same sweep run with objective.kind=ce")
    gap.add_argument("--out", type=Path, default=Path("capacity_gap"))
    gap.set_defaults(func=cmd_capacity_gap)

    _plain_parser(sub, "models", "list the registered architectures").set_defaults(func=cmd_models)
    _plain_parser(sub, "methods", "list the registered teacher objectives and distillers (the plugins)") \
        .set_defaults(func=cmd_methods)
    _plain_parser(sub, "configs", "list the shipped recipes").set_defaults(func=cmd_configs)
    show = _plain_parser(sub, "show-config", "print the resolved config (YAML) for a config and overrides")
    show.add_argument("config", nargs="?", default=None)
    show.add_argument("overrides", nargs="*")
    show.set_defaults(func=cmd_show_config)
    return parser


def _executor_options(p) -> None:
    p.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    p.add_argument("--group-size", type=int, default=None, metavar="N",
                   help="train at most N student runs that share a teacher and a seed as one program "
                        "(default: as many as memory allows)")
    p.add_argument("--no-group", dest="group_size", action="store_const", const=1,
                   help="train every run in its own process (the same results, more teacher forwards)")
    p.add_argument("--teacher-group-size", type=int, default=None, metavar="N",
                   help="train at most N teachers that differ only in their objective (same seed, network, data "
                        "and optimizer) as one stacked network (default: each alone; on CPU a stacked step is slower, "
                        "benchmarks/BENCHMARKS.md section 7.1)")
    p.add_argument("--executor-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit option, e.g. slurm_partition=gpu gpus_per_node=1 timeout_min=600 "
                        "(cluster=local runs submitit's local executor)")


# ----------------------------------------------------------------------------------------- commands
def _config(args):
    from kdlab.experiment import build_config, load_config, parse_overrides

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:
        config, overrides = None, [config, *overrides]
    teacher = dict(parse_overrides(overrides)).get("teacher.checkpoint")
    if config is None and str(teacher).endswith(".json"):  # an export card brings the recipe it was trained with
        from kdlab.runs import card_recipe

        cfg = build_config(card_recipe(Path(teacher)), overrides)
        print(f"note: no config given: the recipe stored in {teacher} (data {cfg.data.name}, teacher "
              f"{cfg.teacher.arch}, student {cfg.student.arch} for {cfg.student.epochs} epochs)", file=sys.stderr)
        return cfg
    return load_config(config, overrides)


def _default_dir(cfg, stage: str, suffix: str = "") -> Path:
    from kdlab.experiment.stages import default_run_dir

    return default_run_dir(cfg, stage, suffix)


def _finish(summary: dict, label: str) -> int:
    m = summary.get("metrics") or {}
    if summary["status"] == "done":
        print(f"{label}: top-1 {m.get('top1', float('nan')):.2f} (best {m.get('top1_best', float('nan')):.2f} "
              f"at epoch {m.get('best_epoch')}), run folder {summary.get('run_dir', '')}")
        return 0
    print(f"error: {label} {summary['status']}: {summary.get('error')}", file=sys.stderr)
    return 1


def cmd_demo(args) -> int:
    from kdlab.experiment import load_config
    from kdlab.demo import run_demo

    config, overrides = args.config, list(args.overrides)
    if config is None or "=" in config:
        overrides = ([config] if config else []) + overrides
        config = "demo"
    cfg = load_config(config, overrides)
    root, table, ok = run_demo(cfg, args.run_dir)
    print(table)
    print(f"\nrun folder: {root}\nreport: {root / 'report.md'}")
    return 0 if ok else 1


def cmd_train_teacher(args) -> int:
    from kdlab.experiment.stages import run_teacher

    cfg = _config(args)
    return _finish(run_teacher(cfg, args.run_dir or _default_dir(cfg, "teacher", "-teacher")), "teacher")


def cmd_distill(args) -> int:
    from kdlab.experiment.stages import run_student

    cfg = _config(args)
    return _finish(run_student(cfg, args.run_dir or _default_dir(cfg, "student", "-student")), "student")


def cmd_pipeline(args) -> int:
    from kdlab.experiment.stages import run_pipeline

    cfg = _config(args)
    result = run_pipeline(cfg, args.run_dir or _default_dir(cfg, "student"))
    code = _finish(result["teacher"], "teacher") if result["teacher"].get("run_dir") else 0
    return code | _finish(result["student"], "student") if result["student"] else 1


def cmd_ablate(args) -> int:
    from kdlab.ablation import run_plan

    result = run_plan(args.plan, base=args.base, seeds=args.seeds, maps=tuple(args.map), out=args.out,
                      executor=args.executor, jobs=args.jobs, dry_run=args.dry_run, overrides=tuple(args.overrides),
                      retry_failed=args.retry_failed, executor_options=_parse_executor_opts(args.executor_opt),
                      write_grid_to=args.write_grid, strict=args.strict, explain=args.explain,
                      group_size=args.group_size, teacher_group_size=args.teacher_group_size)
    return getattr(result, "exit_code", 0)


def _parse_executor_opts(items: list[str]) -> dict | None:
    from kdlab.config import ConfigError
    from kdlab.experiment import parse_overrides

    try:
        return dict(parse_overrides(items)) or None
    except ConfigError:
        raise ConfigError("--executor-opt takes KEY=VALUE, e.g. --executor-opt slurm_partition=gpu") from None


def cmd_sweep(args) -> int:
    from kdlab.sweep import load_grid, run_sweep
    from kdlab.sweep.run import grid_record, run_keys

    grid = load_grid(args.grid)
    out = args.out or Path(grid.base.out) / f"sweep-{_slug(grid.name)}"
    record = grid_record(grid)
    n_runs = len({k for keys in run_keys(record).values() for k in keys})
    print(f"Grid {args.grid}: {grid.name}; {len(grid.ablations)} ablations, seeds {grid.seeds}, {n_runs} student runs")
    for a in grid.ablations:
        print(f"  {a.name}: {a.knob} = " + ", ".join(v.label for v in a.variants))
    if args.dry_run:
        print(f"(dry run: nothing was run; output would go to {out})")
        return 0
    result = run_sweep(grid, out, executor=args.executor, jobs=args.jobs, retry_failed=args.retry_failed,
                       executor_options=_parse_executor_opts(args.executor_opt), record=record,
                       group_size=args.group_size, teacher_group_size=args.teacher_group_size)
    return result.exit_code


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower() or "grid"


def cmd_report(args) -> int:
    from kdlab.ablation import rebuild_report

    print(rebuild_report(args.dir))
    return 0


def cmd_table(args) -> int:
    from kdlab.engine.checkpoint import atomic_write_json, atomic_write_text
    from kdlab.sweep.pooled import pooled_table, render_pooled

    table = pooled_table(args.stores, base=args.base, where=args.where, metrics=args.metric, by=args.by)
    text = render_pooled(table)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    if args.json:
        atomic_write_json(args.json, table.to_dict())
    print(text)
    return 0


def cmd_runs(args) -> int:
    from kdlab.runs import format_runs, list_runs

    print(format_runs(list_runs(args.root, args.filter)))
    return 0


def cmd_compare(args) -> int:
    from kdlab.runs import compare_runs

    table, png = compare_runs(args.runs, args.out)
    print(table)
    print(f"\ncurves: {png}")
    return 0


def cmd_export(args) -> int:
    from kdlab.runs import export_run

    card = export_run(args.run, args.out, which=args.which)
    print(f"card: {card}")
    return 0


def cmd_analyze(args) -> int:
    from kdlab.report.analyze import main_analyze

    out = main_analyze(args.checkpoints, args.out, max_samples=args.max_samples, T=args.T)
    print(f"analysis: {out}")
    return 0


def cmd_capacity_gap(args) -> int:
    from kdlab.report.capacity import capacity_gap

    table, png = capacity_gap(args.intra_dir, args.ce_dir, args.out)
    print(table)
    print(f"\nplot: {png}")
    return 0


def cmd_models(args) -> int:
    from kdlab.models import list_models

    print("\n".join(list_models()))
    return 0


def cmd_methods(args) -> int:
    from kdlab import registry

    for role, specs in (("teacher objectives (objective.kind)", registry.objectives()),
                        ("distillers (distill.methods)", registry.distillers())):
        print(f"{role}:")
        for s in specs:
            print(f"  {s.name:<10} {s.summary}")
    return 0


def cmd_configs(args) -> int:
    from kdlab.config import shipped_recipes

    print("\n".join(shipped_recipes()))
    return 0


def cmd_show_config(args) -> int:
    from kdlab.experiment import to_yaml

    print(to_yaml(_config(args)), end="")
    return 0


# --------------------------------------------------------------------------------------------- main
def _known_errors() -> tuple[type[BaseException], ...]:
    from kdlab.config import ConfigError
    from kdlab.data.base import DataError
    from kdlab.engine.checkpoint import CheckpointError

    errors: list[type[BaseException]] = [ConfigError, DataError, CheckpointError]
    try:
        from kdlab.models.checkpoint import CheckpointError as ModelCkptError, CheckpointMismatch

        errors += [ModelCkptError, CheckpointMismatch]
    except ImportError:
        pass
    try:
        from kdlab.sweep import SweepError

        errors.append(SweepError)  # plan, store and grid-file errors
    except ImportError:
        pass
    return tuple(errors)


def _error_text(exc: BaseException) -> str:
    """One line; a plan that does not resolve lists its problems under it, one per line."""
    lines = [part.rstrip() for part in str(exc).splitlines() if part.strip()]
    try:
        from kdlab.ablation import ResolveError

        listed = isinstance(exc, ResolveError)
    except ImportError:
        listed = False
    return "\n".join(lines) if listed else "; ".join(part.strip() for part in lines)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, taking ``key=value`` overrides anywhere among a command's options.

    argparse fills the ``overrides`` positional from the first run of positionals only, so overrides after
    an option (``ablate plan.md --seeds 1 teacher.epochs=2``) come back unrecognised: they are appended here,
    in the order given. Anything else left over is an error shown with the command's own usage.
    """
    args, extra = parser.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides")
    wrong = [a for a in extra if not (takes_overrides and OVERRIDE.fullmatch(a))]
    if wrong:
        getattr(args, "subparser", parser).error(f"unrecognized arguments: {' '.join(wrong)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    rank = int(os.environ.get("RANK") or 0)  # set by torchrun
    if rank == 0:
        return _run(args, sys.stderr)
    # Every rank meets the same results and errors; rank 0, the one that writes the run's files, reports them.
    # Another rank speaks only of an unexpected error, which may be its own, and names itself.
    stderr = sys.stderr
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        return _run(args, stderr, f"rank {rank}: ")


def _run(args: argparse.Namespace, unexpected_to, prefix: str = "") -> int:
    from kdlab.engine.trainer import Interrupted

    try:
        return args.func(args)
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, _known_errors()):
            print(f"error: {_error_text(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError):
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
            return 2
        print(f"{prefix}error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=unexpected_to)
        return 1
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun, leave the process group before the interpreter exits: a rank torn down while its gloo
    threads still hold connections to a rank that already exited can abort (SIGABRT) instead of exiting with
    its own code."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - leaving is best effort; the run's result is already decided
            pass


if __name__ == "__main__":
    sys.exit(main())
