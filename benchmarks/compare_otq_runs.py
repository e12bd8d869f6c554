"""Compare the OT-Q learning curves of two run directories over their first N episodes, by seed.

Made for "does OT-Q learn the same with the grid Sinkhorn plan as with the exact one?": two runs
of the same preset and seeds that differ only in ``agent.ot_method``. Seed k of both runs draws
the same uniforms, so the differences are paired by seed. Prints a Markdown table of per-run
means with Student-t 95% CIs over seeds, and the paired difference (B - A).

Run (docs/reproduction/otq.md)::

    python benchmarks/compare_otq_runs.py runs/otq-rooms100 runs/otq-rooms100-exact \\
        --episodes 100 --method ot-q
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from otsafe.experiments.stats import mean_ci

METRICS = {
    "collisions per run": ("collisions", "sum"),
    "risky visits per run": ("risky_visits", "sum"),
    "mean episode length": ("length", "mean"),
    "OT bonus paid per run": ("bonus", "sum"),
    "W2(P^pi, P^s) at the last episode": ("w2", "last"),
}


def per_seed(path: Path, method: str, episodes: int) -> dict[str, dict[int, float]]:
    """For each metric of :data:`METRICS`: seed -> value over the first ``episodes`` episodes."""
    rows: dict[int, list[dict[str, str]]] = defaultdict(list)
    with (path / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row["method"] == method and int(row["episode"]) <= episodes:
                rows[int(row["seed"])].append(row)
    if not rows:
        raise SystemExit(f"{path}: no {method!r} rows")
    out: dict[str, dict[int, float]] = {}
    for name, (column, how) in METRICS.items():
        values = {}
        for seed, seed_rows in rows.items():
            if len(seed_rows) < episodes:
                raise SystemExit(f"{path}: seed {seed} has only {len(seed_rows)} episodes")
            x = np.array([float(r[column]) for r in seed_rows])
            values[seed] = float(x.sum() if how == "sum" else x.mean() if how == "mean" else x[-1])
        out[name] = values
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--method", default="ot-q")
    args = parser.parse_args()
    a = per_seed(args.run_a, args.method, args.episodes)
    b = per_seed(args.run_b, args.method, args.episodes)
    seeds = sorted(set(next(iter(a.values()))) & set(next(iter(b.values()))))
    print(f"{args.method}, first {args.episodes} episodes, seeds {seeds}\n")
    print(f"| | {args.run_a.name} | {args.run_b.name} | paired difference (B - A) |")
    print("|---|---|---|---|")

    def num(v: float) -> str:
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"

    def fmt(x: list[float]) -> str:
        est = mean_ci(x)
        return f"{num(est.mean)} [{num(est.ci_low)}, {num(est.ci_high)}]"

    for name in METRICS:
        xa = [a[name][s] for s in seeds]
        xb = [b[name][s] for s in seeds]
        diff = [y - x for x, y in zip(xa, xb, strict=True)]
        print(f"| {name} | {fmt(xa)} | {fmt(xb)} | {fmt(diff)} |")


if __name__ == "__main__":
    main()
