"""The ``otsafe`` command.

``otsafe run PRESET --out DIR``   run an experiment (``otsafe presets`` lists them)
``otsafe run PRESET --out DIR --resume``  continue an interrupted run from its checkpoints
``otsafe sweep FILE --out DIR``   a grid over config keys x methods x seeds (``otsafe sweeps``)
``otsafe report DIR... --out D``  Markdown + HTML report with bootstrap CIs
``otsafe reproduce otq|dsrl|all --out DIR [--quick]``  the papers' experiments and reports
``otsafe presets``                list the built-in presets
``otsafe render MAP --out FILE``  draw a map with its safety values

Bad input (unknown preset or key, out-of-range value, bad map, unusable output directory) prints
one line on stderr and exits with status 2; no traceback, no run directory that looks complete.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from otsafe import __version__
from otsafe.errors import OtsafeError

__all__ = ["main"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"otsafe: error: {message} (see `{self.prog} --help`)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="otsafe",
        description="Safe reinforcement learning with optimal transport.",
    )
    parser.add_argument("--version", action="version", version=f"otsafe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run an experiment preset", description="Run an experiment.")
    run.add_argument("preset", help="preset name (see `otsafe presets`)")
    run.add_argument("--out", required=True, type=Path, help="run directory to create")
    run.add_argument("--seeds", type=int, help="number of seeds (experiment.seeds)")
    run.add_argument("--episodes", type=int, help="episodes per run (experiment.episodes)")
    run.add_argument("--map", help="built-in map name or ASCII map file (env.map)")
    run.add_argument("--workers", type=int, help="parallel processes, 0 = one per core")
    run.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="device: DSRL networks and QP, or the OT-Q grid Sinkhorn solver (experiment.device)",
    )
    run.add_argument("--config", type=Path, help="YAML file of config overrides")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="sets",
        help="override any config value, e.g. --set agent.beta=50 (repeatable)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run of --out from its checkpoints (same preset and "
        "overrides)",
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("--no-figures", action="store_true", help="skip the figures")

    sweep = sub.add_parser(
        "sweep",
        help="run a sweep file: a grid over config keys x methods x seeds",
        description="Run every (point, method, seed) of a sweep file, each into its own run "
        "directory under --out; running it again skips finished runs and resumes the others.",
    )
    sweep.add_argument("file", help="sweep YAML file, or a built-in sweep name (`otsafe sweeps`)")
    sweep.add_argument("--out", required=True, type=Path, help="sweep directory")
    _add_backend_args(sweep)
    sweep.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sub.add_parser("sweeps", help="list the built-in sweeps")

    report = sub.add_parser(
        "report",
        help="Markdown + HTML report comparing the methods of runs and sweeps",
        description="Aggregate run and sweep directories into report.md and a self-contained "
        "report.html (tables with bootstrap CIs, learning and safety curves, configs).",
    )
    report.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    report.add_argument("--out", required=True, type=Path, help="directory for the report")
    report.add_argument("--title", help="report title")

    repro = sub.add_parser(
        "reproduce",
        help="reproduce a paper's experiments and sensitivity sweeps, with reports",
        description="Run the papers' experiments and their sensitivity sweeps (beta for OT-Q, "
        "rho for DSRL) as sweeps under --out, then write a report per paper.",
    )
    repro.add_argument("paper", choices=["otq", "dsrl", "all"], help="which paper")
    repro.add_argument("--out", required=True, type=Path, help="output directory")
    repro.add_argument("--seeds", type=int, help="seeds per method and point (default: presets')")
    repro.add_argument("--quick", action="store_true", help="small variant that runs in minutes")
    _add_backend_args(repro)
    repro.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    sub.add_parser("presets", help="list the built-in presets")

    render = sub.add_parser("render", help="draw a map with its safety values")
    render.add_argument("map", help="built-in map name or ASCII map file")
    render.add_argument("--out", required=True, type=Path, help="PNG file to write")
    render.add_argument("--safety-values", help="file of per-cell safety values (H x W table)")
    return parser


def _add_backend_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local process pool (default) or Ray (pip install 'otsafe[ray]')",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="runs at a time / Ray CPUs; 0 = one per core"
    )
    parser.add_argument(
        "--address", help="Ray: address of an existing cluster (host:port, ray://host:port)"
    )
    parser.add_argument(
        "--retries", type=int, default=1, help="retries of a run whose worker died (default 1)"
    )


def _cmd_sweep(args: argparse.Namespace) -> int:
    from otsafe.experiments.reproduce import resolve_sweep
    from otsafe.experiments.sweep_runner import run_sweep

    spec = resolve_sweep(args.file)
    outcome = run_sweep(
        spec,
        args.out,
        backend=args.backend,
        workers=args.workers,
        address=args.address,
        retries=args.retries,
        progress=not args.no_progress,
    )
    return _print_sweep(outcome)


def _print_sweep(outcome: Any) -> int:
    total = len(outcome.rows)
    print(
        f"sweep {outcome.sweep_dir}: {total} runs; ran {outcome.ran}, already done "
        f"{outcome.skipped}, failed {len(outcome.failed)}, worker retries {outcome.retried}; "
        f"index {outcome.sweep_dir / 'index.csv'}"
    )
    if outcome.failed:
        print(
            f"otsafe: {len(outcome.failed)} run(s) failed ({', '.join(outcome.failed[:3])}"
            f"{', ...' if len(outcome.failed) > 3 else ''}); see index.csv, fix, and run the "
            "same command again",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_sweeps() -> int:
    from otsafe.experiments.reproduce import list_sweeps

    return _print_listing(list_sweeps())


def _print_listing(entries: dict[str, str]) -> int:
    """Print ``name  description`` lines, names aligned."""
    width = max(len(name) for name in entries)
    for name, description in entries.items():
        print(f"{name:<{width}}  {description}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from otsafe.experiments.report import write_report

    result = write_report(args.dirs, args.out, title=args.title)
    print(f"wrote {result.markdown} and {result.html}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from otsafe.experiments.reproduce import reproduce

    result = reproduce(
        args.paper,
        args.out,
        seeds=args.seeds,
        quick=args.quick,
        backend=args.backend,
        workers=args.workers,
        address=args.address,
        retries=args.retries,
        progress=not args.no_progress,
    )
    for outcome in result.sweeps:
        _print_sweep(outcome)
    for path in result.reports:
        print(f"wrote {path}")
    return 1 if result.failed else 0


def _cmd_run(args: argparse.Namespace) -> int:
    from otsafe.experiments.config import resolve_config
    from otsafe.experiments.dsrl_config import DSRLConfig
    from otsafe.experiments.runner import run_experiment

    config = resolve_config(
        preset=args.preset,
        config_file=args.config,
        shortcuts={
            "experiment.seeds": args.seeds,
            "experiment.episodes": args.episodes,
            "env.map": args.map,
            "experiment.workers": args.workers,
            "experiment.device": args.device,
        },
        sets=args.sets,
    )
    if isinstance(config, DSRLConfig):
        return _run_dsrl(config, args)
    summary = run_experiment(
        config,
        args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
        figures=not args.no_figures,
    )
    print(f"wrote {args.out}/ (config.yaml, metrics.csv, summary.json, figures/)")
    for name, stats in summary["methods"].items():
        conv = stats["convergence_episode"]
        coll = stats["collisions_total"]
        print(
            f"  {name:>22}: convergence episode {_fmt(conv['mean'])}, "
            f"collisions {_fmt(coll['mean'])} per run"
        )
    for name, comp in summary["comparisons"].items():
        red = comp["collision_reduction"]
        print(
            f"  {name}: collision reduction {_fmt_pct(red['mean'])} "
            f"[95% CI {_fmt_pct(red['ci_low'])}, {_fmt_pct(red['ci_high'])}]"
        )
    return 0


def _run_dsrl(config: Any, args: argparse.Namespace) -> int:
    from otsafe.experiments.dsrl_runner import run_dsrl

    summary = run_dsrl(
        config,
        args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
        figures=not args.no_figures,
    )
    print(f"wrote {args.out}/ (config.yaml, metrics.csv, eval.csv, summary.json, figures/)")
    for method, stats in summary["methods"].items():
        worst = [v["violation_rate"]["mean"] for k, v in stats["eval"].items() if "worst" in k]
        nominal = stats["eval"].get("shift/fixed/0", {}).get("violation_rate", {}).get("mean")
        print(
            f"  {method:>9}: violation rate nominal {_fmt_rate(nominal)}, "
            f"worst-direction shifts up to {_fmt_rate(max(worst) if worst else None)}"
        )
    return 0


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _cmd_presets() -> int:
    from otsafe.experiments.config import list_presets

    return _print_listing(list_presets())


def _cmd_render(args: argparse.Namespace) -> int:
    from otsafe.envs.gridworld import GridWorld
    from otsafe.errors import RunDirectoryError
    from otsafe.experiments.config import load_safety_values
    from otsafe.experiments.plots import render_map_figure

    out: Path = args.out
    if out.suffix.lower() != ".png":
        raise RunDirectoryError(f"--out must be a .png file, got {str(out)!r}")
    if not out.resolve().parent.is_dir():
        raise RunDirectoryError(f"directory of --out {str(out.parent)!r} does not exist")
    env = GridWorld(args.map, safety_values=load_safety_values(args.safety_values))
    render_map_figure(env, out)
    print(f"wrote {out}")
    return 0


def _interrupted_message(args: argparse.Namespace) -> str:
    out = getattr(args, "out", None)
    if args.command == "run" and out is not None:
        from otsafe.experiments.rundir import staging_path

        staging = staging_path(Path(out).resolve())
        if (staging / "checkpoints").is_dir():
            return (
                f"interrupted; checkpoints kept in {staging}; continue with the same command "
                "and --resume"
            )
    if args.command in ("sweep", "reproduce"):
        return "interrupted; run the same command again to continue"
    return "interrupted; no run directory was written"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otsafe`` command; returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "presets":
            return _cmd_presets()
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "sweeps":
            return _cmd_sweeps()
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "reproduce":
            return _cmd_reproduce(args)
        return _cmd_render(args)
    except OtsafeError as exc:
        print(f"otsafe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"otsafe: {_interrupted_message(args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
