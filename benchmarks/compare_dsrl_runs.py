"""Pool the ``eval.csv`` of several DSRL run directories and compare two methods, seed by seed.

Made for "is ``dsrl`` safer than ``ddpg-cbf`` under a shift?" when one preset run's 5 seeds are
too few: run the same preset again with ``experiment.seed_start`` moved on, then pool the runs.
A seed must appear only once per method across the runs (an error otherwise). For each
evaluation distribution it prints, as Markdown, the violation rate of both methods (mean and
Student-t 95% CI over seeds), the paired difference (method - baseline, over the seeds both
have), and the probability that a seed of the method violates less often than a seed of the
baseline (ties count half; percentile bootstrap CI, ``otsafe.experiments.stats``).

``--figure PATH`` also plots the metric against the shift δ/ρ for one direction (default the
worst one), both methods with their 95% CIs over the pooled seeds.

Run (docs/reproduction/dsrl.md)::

    python benchmarks/compare_dsrl_runs.py runs/dsrl-dubins runs/dsrl-dubins-s5 \\
        --method dsrl --baseline ddpg-cbf --metric violation_rate --figure fig.png
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from otsafe.experiments.dsrl_plots import COLOURS
from otsafe.experiments.stats import Estimate, mean_ci, probability_of_improvement

# Metrics where a lower value is better (the others: higher is better).
LOWER_IS_BETTER = {"violation_rate", "violation_steps", "slack_activations"}


def pooled(paths: list[Path], metric: str) -> dict[tuple[str, str], dict[str, dict[int, float]]]:
    """(distribution, δ/ρ) -> method -> seed -> value, pooled over the runs' ``eval.csv``."""
    out: dict[tuple[str, str], dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for path in paths:
        with (path / "eval.csv").open() as fh:
            for row in csv.DictReader(fh):
                key = (f"{row['distribution']}/{row['direction']}", row["delta_over_rho"])
                seeds = out[key][row["method"]]
                seed = int(row["seed"])
                if seed in seeds:
                    raise SystemExit(f"{path}: seed {seed} of {row['method']} is in two runs")
                seeds[seed] = float(row[metric])
    return out


def fmt(e: Estimate, clip: bool) -> str:
    if not (np.isfinite(e.ci_low) and np.isfinite(e.ci_high)):
        return f"{e.mean:.2f}"
    low, high = (max(0.0, e.ci_low), min(1.0, e.ci_high)) if clip else (e.ci_low, e.ci_high)
    if abs(high - low) < 1e-12:
        return f"{e.mean:.2f}"
    return f"{e.mean:.2f} [{low:.2f}, {high:.2f}]"


def plot(
    table: dict[tuple[str, str], dict[str, dict[int, float]]],
    methods: list[str],
    metric: str,
    direction: str,
    path: Path,
) -> None:
    """The metric against δ/ρ for ``direction``, one line with a 95% CI band per method."""
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for method in methods:
        points = sorted(
            (float(delta), mean_ci(list(by_method[method].values())))
            for (dist, delta), by_method in table.items()
            if dist == f"shift/{direction}" and by_method.get(method)
        )
        if not points:
            raise SystemExit(f"no shift/{direction} rows for {method!r}")
        x = np.array([p[0] for p in points])
        est = [p[1] for p in points]
        mean = np.array([e.mean for e in est])
        low, high = np.array([e.ci_low for e in est]), np.array([e.ci_high for e in est])
        # constant values have no interval: the band collapses onto the mean
        low, high = np.where(np.isfinite(low), low, mean), np.where(np.isfinite(high), high, mean)
        if metric.endswith("_rate"):
            low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
        n = est[0].n
        colour = COLOURS.get(method)
        ax.plot(x, mean, marker="o", color=colour, label=f"{method} ({n} seeds)")
        ax.fill_between(x, low, high, color=colour, alpha=0.2)
    ax.set_xlabel(f"mean shift δ/ρ ({direction} direction)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--method", default="dsrl")
    parser.add_argument("--baseline", default="ddpg-cbf")
    parser.add_argument("--metric", default="violation_rate")
    parser.add_argument("--figure", type=Path, help="also plot the metric against the shift")
    parser.add_argument("--direction", default="worst", help="shift direction of the figure")
    args = parser.parse_args()
    table = pooled(args.runs, args.metric)
    lower = args.metric in LOWER_IS_BETTER
    rate = args.metric.endswith("_rate")
    print(f"# {args.metric}: {args.method} vs {args.baseline}, runs {[str(p) for p in args.runs]}")
    print()
    print(
        f"| distribution | δ/ρ | seeds | {args.baseline} | {args.method} | paired difference | "
        f"P({args.method} better) |"
    )
    print("|---|---:|---:|---|---|---|---|")
    for (dist, delta), methods in sorted(table.items()):
        a, b = methods.get(args.method, {}), methods.get(args.baseline, {})
        common = sorted(set(a) & set(b))
        if not common:
            continue
        xa = np.array([a[s] for s in common])
        xb = np.array([b[s] for s in common])
        diff = mean_ci(xa - xb)
        prob = probability_of_improvement(xa, xb, higher_is_better=not lower)
        print(
            f"| {dist} | {delta} | {len(common)} | {fmt(mean_ci(xb), rate)} | "
            f"{fmt(mean_ci(xa), rate)} | {fmt(diff, False)} | {fmt(prob, True)} |"
        )

    if args.figure is not None:
        plot(table, [args.baseline, args.method], args.metric, args.direction, args.figure)
        print(f"\nwrote {args.figure}")


if __name__ == "__main__":
    main()
