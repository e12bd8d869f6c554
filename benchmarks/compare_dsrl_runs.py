"""Pool the ``eval.csv`` of several DSRL run directories and compare two methods, seed by seed.

Made for "is ``dsrl`` safer than ``ddpg-cbf`` under a shift?" when one preset run's 5 seeds are
too few: run the same preset again with ``experiment.seed_start`` moved on, then pool the runs.
A seed must appear only once per method across the runs (an error otherwise). For each
evaluation distribution it prints, as Markdown, the violation rate of both methods (mean and
Student-t 95% CI over seeds), the paired difference (method - baseline, over the seeds both
have), and the probability that a seed of the method violates less often than a seed of the
baseline (ties count half; percentile bootstrap CI, ``otsafe.experiments.stats``).

Run (docs/reproduction/dsrl.md)::

    python benchmarks/compare_dsrl_runs.py runs/dsrl-dubins runs/dsrl-dubins-s5 \\
        --method dsrl --baseline ddpg-cbf --metric violation_rate
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from otsafe.experiments.stats import Estimate, mean_ci, probability_of_improvement

# Metrics where a lower value is better (the others: higher is better).
LOWER_IS_BETTER = {"violation_rate", "violation_steps", "slack_activations"}


def pooled(
    paths: list[Path], metric: str
) -> dict[tuple[str, str], dict[str, dict[int, float]]]:
    """(distribution, δ/ρ) -> method -> seed -> value, pooled over the runs' ``eval.csv``."""
    out: dict[tuple[str, str], dict[str, dict[int, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--method", default="dsrl")
    parser.add_argument("--baseline", default="ddpg-cbf")
    parser.add_argument("--metric", default="violation_rate")
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


if __name__ == "__main__":
    main()
