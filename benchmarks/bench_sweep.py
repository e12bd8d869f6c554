"""Benchmark: a sweep of 20 OT-Q runs, one by one vs the local pool vs Ray.

Side by side in one invocation, repeated ``--repeats`` times (median reported):

1. ``one by one``: the 20 runs of the sweep, each with ``run_sweep_run`` in this process, one
   after the other (no process start-up at all: the fairest sequential anchor);
2. ``local pool``: ``otsafe sweep`` with the local backend and ``--workers`` processes;
3. ``ray``: the same sweep on a local Ray instance with ``--workers`` CPUs (start-up of the
   instance included, as a user pays it), if Ray is installed.

The sweep is ``preset: otq-paper`` with ``--episodes`` episodes, methods ``[ot-q]``, a grid
of 2 betas x 10 seeds. Every backend's metrics must equal the one-by-one run's, or the
benchmark fails.

Usage: ``python benchmarks/bench_sweep.py [--episodes 150] [--workers 2] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from otsafe.experiments.execution import default_workers
from otsafe.experiments.sweep import (
    SweepRun,
    expand_sweep,
    parse_sweep,
    prepare_sweep_dir,
    run_sweep_run,
)
from otsafe.experiments.sweep_runner import run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=150)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    spec = parse_sweep(
        {
            "name": "bench-sweep",
            "preset": "otq-paper",
            "set": {"experiment.episodes": args.episodes},
            "methods": ["ot-q"],
            "grid": {"agent.beta": [300, 1000]},
            "seeds": 10,
        }
    )
    runs = expand_sweep(spec)
    assert len(runs) == 20
    try:
        import ray  # noqa: F401

        have_ray = not args.no_ray
    except ImportError:
        have_ray = False
    times: dict[str, list[float]] = {"one by one": [], "local pool": []}
    if have_ray:
        times["ray"] = []
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        for rep in range(args.repeats):
            seq_dir = prepare_sweep_dir(root / f"seq{rep}", spec)
            t = time.perf_counter()
            for run in runs:
                run_sweep_run(run, seq_dir)
            times["one by one"].append(time.perf_counter() - t)

            t = time.perf_counter()
            local = run_sweep(spec, root / f"local{rep}", workers=args.workers, progress=False)
            times["local pool"].append(time.perf_counter() - t)
            _check_same(runs, seq_dir, local.sweep_dir)

            if have_ray:
                t = time.perf_counter()
                out = run_sweep(
                    spec, root / f"ray{rep}", backend="ray", workers=args.workers, progress=False
                )
                times["ray"].append(time.perf_counter() - t)
                _check_same(runs, seq_dir, out.sweep_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = statistics.median(times["one by one"])
    print(
        f"# 20 OT-Q runs (paper map, {args.episodes} episodes each), {args.workers} workers, "
        f"median of {args.repeats}; {platform.machine()}, {default_workers()} CPU cores, "
        f"Python {platform.python_version()}"
    )
    print("| how | median wall s | runs | ratio to one by one |")
    print("|---|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        spread = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {med:.1f} ({spread}) | 20 | {med / base:.2f} |")
    if have_ray:
        overhead = statistics.median(times["ray"]) - statistics.median(times["local pool"])
        print(f"\nRay overhead over the local pool: {overhead:+.1f} s per sweep (median)")


def _check_same(runs: list[SweepRun], a: Path, b: Path) -> None:
    for run in runs:
        x = (run.directory(a) / "metrics.csv").read_bytes()
        y = (run.directory(b) / "metrics.csv").read_bytes()
        if x != y:
            raise SystemExit(f"metrics of {run.run_id} differ between {a} and {b}")


if __name__ == "__main__":
    main()
