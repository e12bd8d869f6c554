"""Benchmark: exact OT solvers on the built-in maps, POT's dense ``ot.emd`` vs otsafe's tripartite.

For each map, P^pi is the state distribution of an epsilon-greedy policy (epsilon = 0.3) of a
random Q-table and P^s the map's safety distribution; both solvers get the same problems, side by
side, and the table reports median times, their ratio and the largest relative W2 difference.

Usage: ``python benchmarks/bench_ot_solvers.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from otsafe.envs import GridWorld
from otsafe.markov import ChainModel, epsilon_greedy_policy
from otsafe.transport import ExactOT, GridExactOT, sqeuclidean_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(
        "| map | cells | dense arcs | tripartite arcs | ot.emd (ms) | tripartite (ms) | ratio |"
        " max rel. W2 diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("paper", "rooms30", "maze50"):
        env = GridWorld(name)
        support = np.flatnonzero(env.grid.reachable.ravel())
        cells = env.grid.coordinates[support]
        chain = ChainModel.from_grid(env.grid)
        dense, tri = ExactOT(sqeuclidean_cost(cells)), GridExactOT(cells)
        t_dense, t_tri, dev = [], [], 0.0
        for _ in range(args.repeats):
            q = rng.normal(size=(env.grid.n_cells, 4))
            a = chain.state_distribution(epsilon_greedy_policy(q, 0.3))[support]
            b = env.risk_distribution[support]
            t = time.perf_counter()
            c1 = dense.solve(a, b).cost
            t_dense.append(time.perf_counter() - t)
            t = time.perf_counter()
            c2 = tri.solve(a, b).cost
            t_tri.append(time.perf_counter() - t)
            dev = max(dev, abs(np.sqrt(c1) - np.sqrt(c2)) / np.sqrt(c1))
        md, mt = statistics.median(t_dense), statistics.median(t_tri)
        print(
            f"| {name} | {support.size} | {support.size**2} | {tri.n_arcs} | {1e3 * md:.1f} | "
            f"{1e3 * mt:.1f} | {md / mt:.1f}x | {dev:.1e} |"
        )


if __name__ == "__main__":
    main()
