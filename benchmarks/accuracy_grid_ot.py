"""Accuracy of the grid Sinkhorn solver against exact OT on OT-Q's own distributions.

For each map, an exact OT-Q agent (beta = 1000, seed 0) is trained and its P^pi is taken after a
few episode counts; each (P^pi, P^s) pair is solved exactly (tripartite min-cost flow, and POT's
``ot.emd`` on the dense cost) and by the grid Sinkhorn solver at several epsilons. Reported:

* W2^2 relative error of the Sinkhorn plan's transport cost against the exact optimum;
* the plan's marginal error (l1, relative to the mass);
* agreement of the OT-Q neighbour bonuses C(s, s') = T(s, s') c(s, s') over all moves:
  ``||C_sinkhorn - C_exact||_1 / ||C_exact||_1``. Exact optimal plans on grids are not unique,
  so the same number between the two *exact* solvers (tripartite vs POT) is printed as the floor
  that any solver's agreement should be read against.

Run (docs/benchmarks.md)::

    python benchmarks/accuracy_grid_ot.py --maps paper rooms30 maze50 --epsilons 0.25 0.5 1 2
"""

from __future__ import annotations

import argparse

import numpy as np
from numpy.typing import NDArray

from otsafe.agents.tabular import OTQLearning
from otsafe.envs.gridworld import GridWorld
from otsafe.transport import ExactOT, GridExactOT, GridSinkhorn, sqeuclidean_cost


def neighbour_bonus(env: GridWorld, at: object, support_positions: bool) -> NDArray[np.float64]:
    """C(s, s') for every move that changes cell, in a fixed order."""
    grid = env.grid
    table = env.transitions
    n = grid.n_cells
    s_idx, a_idx = np.nonzero(
        (table.next_state != np.arange(n)[:, None]) & grid.reachable.ravel()[:, None]
    )
    s2 = table.next_state[s_idx, a_idx]
    cost = np.sum((grid.coordinates[s_idx] - grid.coordinates[s2]) ** 2, axis=1)
    if support_positions:
        pos = np.full(n, -1, dtype=np.int64)
        support = np.flatnonzero(grid.reachable.ravel())
        pos[support] = np.arange(support.size)
        s_idx, s2 = pos[s_idx], pos[s2]
    return np.asarray(at(s_idx, s2) * cost, dtype=np.float64)  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", nargs="+", default=["paper", "rooms30", "maze50"])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--episodes", type=int, nargs="+", default=[1, 100, 400])
    parser.add_argument("--tol", type=float, default=1e-3)
    args = parser.parse_args()
    print(
        "| map | after episode | solver | eps | W2^2 | W2^2 rel. err | marginal err | "
        "bonus l1 diff vs tripartite |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.maps:
        env = GridWorld(name, max_steps=5000)
        agent = OTQLearning(env, seed=0)
        support = np.flatnonzero(env.grid.reachable.ravel())
        cells = env.grid.coordinates[support]
        tripartite = GridExactOT(cells)
        dense = ExactOT(sqeuclidean_cost(cells)) if support.size <= 2500 else None
        done = 0
        for target in sorted(args.episodes):
            agent.train(target - done)
            done = target
            p_pi = agent.last_state_distribution
            assert p_pi is not None
            p_s = env.risk_distribution
            exact = tripartite.solve(p_pi[support], p_s[support])
            c_exact = neighbour_bonus(env, exact.at, True)
            norm = np.abs(c_exact).sum()
            row = f"| {name} | {target} | exact tripartite | - | {exact.cost:.3f} | 0 | exact | 0 |"
            print(row)
            if dense is not None:
                other = dense.solve(p_pi[support], p_s[support])
                diff = np.abs(neighbour_bonus(env, other.at, True) - c_exact).sum() / norm
                print(
                    f"| {name} | {target} | exact POT emd | - | {other.cost:.3f} | "
                    f"{(other.cost - exact.cost) / exact.cost:+.1e} | exact | {diff:.3f} |"
                )
            for eps in args.epsilons:
                solver = GridSinkhorn(env.grid.shape, epsilon=eps, tol=args.tol, strict=False)
                plan = solver.solve(p_pi.reshape(env.grid.shape), p_s.reshape(env.grid.shape))
                diff = np.abs(neighbour_bonus(env, plan.at, False) - c_exact).sum() / norm
                rel = (plan.cost - exact.cost) / exact.cost
                print(
                    f"| {name} | {target} | grid Sinkhorn | {eps:g} | {plan.cost:.3f} | "
                    f"{rel:+.2%} | {plan.info.marginal_error:.1e} | {diff:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
