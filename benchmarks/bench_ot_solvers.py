"""Benchmark: exact OT solvers on the built-in maps: POT's ``ot.emd``, tripartite, multiscale.

For each map, P^pi is the state distribution of an epsilon-greedy policy (epsilon = 0.3) of a
random Q-table and P^s the map's safety distribution; all solvers get the same problems, side by
side, and the table reports median times, the speed-ups over ``ot.emd`` and the largest relative
W2 difference from ``ot.emd``.

Usage: ``python benchmarks/bench_ot_solvers.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from otsafe.envs import GridWorld
from otsafe.markov import ChainModel, epsilon_greedy_policy
from otsafe.transport import ExactOT, GridExactOT, GridMultiscaleOT, sqeuclidean_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(
        "| map | cells | dense arcs | tripartite arcs | ot.emd (ms) | tripartite (ms) | "
        "multiscale (ms) | tripartite speed-up | multiscale speed-up | max rel. W2 diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("paper", "rooms30", "maze50"):
        env = GridWorld(name)
        support = np.flatnonzero(env.grid.reachable.ravel())
        cells = env.grid.coordinates[support]
        chain = ChainModel.from_grid(env.grid)
        solvers: dict[str, ExactOT | GridExactOT | GridMultiscaleOT] = {
            "dense": ExactOT(sqeuclidean_cost(cells)),
            "tripartite": GridExactOT(cells),
            "multiscale": GridMultiscaleOT(cells),
        }
        times: dict[str, list[float]] = {k: [] for k in solvers}
        dev = 0.0
        for _ in range(args.repeats):
            q = rng.normal(size=(env.grid.n_cells, 4))
            a = chain.state_distribution(epsilon_greedy_policy(q, 0.3))[support]
            b = env.risk_distribution[support]
            costs = {}
            for key, solver in solvers.items():
                t = time.perf_counter()
                costs[key] = solver.solve(a, b).cost
                times[key].append(time.perf_counter() - t)
            w2 = {k: np.sqrt(c) for k, c in costs.items()}
            dev = max(dev, *(abs(w2[k] - w2["dense"]) / w2["dense"] for k in w2))
        med = {k: statistics.median(v) for k, v in times.items()}
        tri = solvers["tripartite"]
        assert isinstance(tri, GridExactOT)
        print(
            f"| {name} | {support.size} | {support.size**2} | {tri.n_arcs} | "
            f"{1e3 * med['dense']:.1f} | {1e3 * med['tripartite']:.1f} | "
            f"{1e3 * med['multiscale']:.1f} | {med['dense'] / med['tripartite']:.1f}x | "
            f"{med['dense'] / med['multiscale']:.1f}x | {dev:.1e} |"
        )


if __name__ == "__main__":
    main()
