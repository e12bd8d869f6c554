"""A literal implementation of OT-Q, the baseline of ``benchmarks/bench_otq.py``.

Written the way the paper describes Algorithm 1, with no attention to speed:

* a per-step Python loop through the Gymnasium environment (``gymnasium.make``);
* after every episode, a dense transition matrix built state by state and action by action, and a
  dense linear solve (``numpy.linalg.solve``) for the expected visits P^pi;
* POT's ``ot.emd`` on a dense cost matrix precomputed once, and the bonus C = T* * c as a dense
  matrix.

It follows the same conventions as ``otsafe.agents.QLearning`` (DESIGN §1): the same random
draws per episode, uniform greedy tie-breaking, C zero in the first episode and zeroed after use,
epsilon decayed after the plan. With the same OT solver (``ot_method="dense"``) otsafe must
reproduce its metrics; ``benchmarks/bench_otq.py`` checks that.
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import ot

import otsafe  # noqa: F401  (registers otsafe/GridWorld-v0)
from otsafe.envs import GridWorld


def run_literal(
    seed: int,
    episodes: int,
    map_name: str = "paper",
    max_steps: int = 500,
    alpha: float = 0.1,
    gamma: float = 0.99,
    beta: float = 1000.0,
    epsilon: float = 1.0,
    epsilon_decay: float = 0.99,
    epsilon_min: float = 0.01,
    timings: dict[str, float] | None = None,
) -> list[dict[str, float]]:
    """Train literal OT-Q for ``episodes`` episodes; ``timings`` accumulates seconds per phase."""
    clock = timings if timings is not None else {}
    for phase in ("step loop", "P^pi (chain)", "OT plan"):
        clock.setdefault(phase, 0.0)
    env = gym.make("otsafe/GridWorld-v0", map=map_name, max_steps=max_steps)
    base = env.unwrapped
    assert isinstance(base, GridWorld)
    grid = base.grid
    n_cells = grid.n_cells
    states = [s for s in range(n_cells) if grid.reachable.ravel()[s]]  # the free cells
    coords = grid.coordinates[states]
    M = ot.dist(coords, coords)  # squared Euclidean cost, dense
    p_s = base.risk_distribution[states]
    risky = base.risky
    table = base.transitions
    goal = grid.goal_index
    start = grid.start_index

    Q = np.zeros((n_cells, 4))
    C = np.zeros((len(states), len(states)))  # bonus matrix, zero during the first episode
    index = {s: k for k, s in enumerate(states)}
    out = []
    for episode in range(episodes):
        t0 = time.perf_counter()
        rng = np.random.default_rng(np.random.SeedSequence([seed, episode]))
        s, _ = env.reset(seed=seed)
        s = int(s)
        ret = bonus_paid = 0.0
        collisions = risky_visits = length = 0
        success = False
        for _ in range(max_steps):
            u_explore = rng.random()
            u_action = rng.random()
            if u_explore < epsilon:
                a = int(u_action * 4.0)
            else:
                ties = np.flatnonzero(Q[s] == Q[s].max())
                a = int(ties[int(u_action * len(ties))])
            s2, r, terminated, truncated, info = env.step(a)
            s2 = int(s2)
            i, j = index[s], index[s2]
            bonus = beta * C[i, j]
            if terminated:
                Q[s, a] += alpha * (r - Q[s, a] + bonus)
            else:
                Q[s, a] += alpha * (r + gamma * Q[s2].max() - Q[s, a] + bonus)
            if bonus != 0.0:
                C[i, j] = 0.0
                bonus_paid += bonus
            ret += float(r)
            collisions += int(info["collision"])
            risky_visits += int(risky[s2])
            length += 1
            s = s2
            if terminated:
                success = True
                break
            if truncated:
                break

        t1 = time.perf_counter()
        # P^pi: expected visits of the epsilon-greedy policy, dense transition matrix + solve.
        P = np.zeros((n_cells, n_cells))
        for x in states:
            if x == goal:
                continue
            greedy = np.flatnonzero(Q[x] == Q[x].max())
            for act in range(4):
                prob = epsilon / 4 + (1 - epsilon) * (act in greedy) / len(greedy)
                P[x, table.next_state[x, act]] += prob
        transient = [x for x in states if x != goal]
        Qt = P[np.ix_(transient, transient)]
        e0 = np.zeros(len(transient))
        e0[transient.index(start)] = 1.0
        visits = np.linalg.solve((np.eye(len(transient)) - Qt).T, e0)
        goal_visits = visits @ P[np.ix_(transient, [goal])][:, 0]
        p_pi = np.zeros(len(states))
        for k, x in enumerate(transient):
            p_pi[index[x]] = visits[k]
        p_pi[index[goal]] = goal_visits
        p_pi /= p_pi.sum()

        t2 = time.perf_counter()
        # Exact OT plan (Eq. 3) and W2 (Eq. 4); the bonus C = T* * c (Eq. 5).
        T = ot.emd(p_pi, p_s, M)
        w2 = float(np.sqrt(np.sum(T * M)))
        C = T * M
        t3 = time.perf_counter()
        clock["step loop"] += t1 - t0
        clock["P^pi (chain)"] += t2 - t1
        clock["OT plan"] += t3 - t2
        out.append(
            {
                "episode": episode + 1,
                "env_return": ret,
                "length": length,
                "collisions": collisions,
                "risky_visits": risky_visits,
                "w2": w2,
                "bonus": bonus_paid,
                "success": success,
            }
        )
        epsilon = max(epsilon * epsilon_decay, epsilon_min)
    return out
