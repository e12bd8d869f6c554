"""Accuracy of the grid Sinkhorn solver against exact OT on OT-Q's own distributions.

For each map, an exact OT-Q agent (beta = 1000, seed 0) is trained and its P^pi is taken after a
few episode counts; each (P^pi, P^s) pair is solved exactly (the tripartite min-cost flow, the
multiscale solver, and POT's ``ot.emd`` on the dense cost up to 2,500 cells; above 2,500 cells the
multiscale plan is the reference) and by the grid Sinkhorn solver at several epsilons. Reported:

* W2^2 relative error of the Sinkhorn plan's transport cost against the exact optimum;
* the plan's marginal error (l1, relative to the mass);
* agreement of the OT-Q neighbour bonuses C(s, s') = T(s, s') c(s, s') over all moves:
  ``||C_sinkhorn - C_exact||_1 / ||C_exact||_1``. Exact optimal plans on grids are not unique,
  so the same number between the *exact* solvers is printed as the floor that any solver's
  agreement should be read against.

Run (docs/benchmarks.md)::

    python benchmarks/accuracy_grid_ot.py --maps paper rooms30 maze50 --epsilons 0.25 0.5 1 2
    python benchmarks/accuracy_grid_ot.py --maps rooms100 --episodes 1 20 --max-steps 20000 \
        --epsilons 0.25 1 4
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from numpy.typing import NDArray

from otsafe.agents.tabular import OTQLearning
from otsafe.envs.gridworld import GridWorld
from otsafe.transport import (
    TRIPARTITE_MAX_CELLS,
    ExactOT,
    GridExactOT,
    GridMultiscaleOT,
    GridSinkhorn,
    sqeuclidean_cost,
)


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
    parser.add_argument("--max-steps", type=int, default=5000)
    args = parser.parse_args()
    print(
        "| map | after episode | solver | eps | W2^2 | W2^2 rel. err | marginal err | "
        "bonus l1 diff vs the first exact plan |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.maps:
        env = GridWorld(name, max_steps=args.max_steps)
        support = np.flatnonzero(env.grid.reachable.ravel())
        cells = env.grid.coordinates[support]
        # The reference: the tripartite plan where it is affordable, else the multiscale one.
        small = support.size <= TRIPARTITE_MAX_CELLS
        reference_name = "tripartite" if small else "multiscale"
        agent = OTQLearning(env, seed=0, ot_method=reference_name)
        reference = GridExactOT(cells) if small else GridMultiscaleOT(cells)
        others: dict[str, Any] = (
            {"multiscale": GridMultiscaleOT(cells), "POT emd": ExactOT(sqeuclidean_cost(cells))}
            if small
            else {"tripartite": GridExactOT(cells)}
        )
        done = 0
        for target in sorted(args.episodes):
            agent.train(target - done)
            done = target
            p_pi = agent.last_state_distribution
            assert p_pi is not None
            p_s = env.risk_distribution
            exact = reference.solve(p_pi[support], p_s[support])
            c_exact = neighbour_bonus(env, exact.at, True)
            norm = np.abs(c_exact).sum()
            print(
                f"| {name} | {target} | exact {reference_name} | - | {exact.cost:.3f} | 0 | "
                "exact | 0 |"
            )
            for other_name, other_solver in others.items():
                other = other_solver.solve(p_pi[support], p_s[support])
                diff = np.abs(neighbour_bonus(env, other.at, True) - c_exact).sum() / norm
                print(
                    f"| {name} | {target} | exact {other_name} | - | {other.cost:.3f} | "
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
