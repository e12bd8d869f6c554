r"""State distributions of policy-induced Markov chains on a grid map.

The OT-Q paper transports "the stationary distribution of the policy" :math:`P^\pi`. With an
absorbing goal that stationary distribution is degenerate (all mass on the goal), so DESIGN §1
defines :math:`P^\pi` as the **normalised expected visits per episode** of the behaviour policy
started at the start cell. Two exact variants are offered:

``mode="visits"`` (default)
    Episodes are not truncated. With :math:`Q` the transition matrix restricted to the transient
    cells (every reachable cell except the goal) and :math:`e_0` the start indicator, the expected
    visits are the row vector

    .. math:: n = e_0^\top (I - Q)^{-1},

    one visit to the goal per episode is added, and :math:`P^\pi = n / \sum n`. This is exactly the
    stationary distribution of the chain in which the goal restarts at the start cell. It is
    computed with one sparse LU solve (SuperLU), never by sampling.

``mode="truncated"``
    Episodes stop after ``max_steps`` moves, as in the environment. With :math:`x_0 = e_0` and
    :math:`x_{t+1} = x_t Q`, the visits are :math:`\sum_{t=0}^{T} x_t` on the transient cells plus
    the goal arrivals :math:`\sum_{t=1}^{T} x_{t-1} r` (:math:`r` the one-step goal probability),
    :math:`T` = ``max_steps``. Computed by sparse matrix-vector recursion, stopping early once
    the mass still in the transient cells falls below ``1e-18`` (the remaining terms then change no
    entry above double rounding).

Cells not connected to the start are never visited and get zero mass, as do obstacles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike, NDArray
from scipy.linalg import solve_banded
from scipy.sparse import csgraph

from otsafe.envs.gridmap import GridMap
from otsafe.envs.gridworld import GridWorld
from otsafe.errors import ChainError, DistributionError

__all__ = [
    "ChainModel",
    "StateDistributionMode",
    "epsilon_greedy_policy",
    "policy_state_distribution",
]

StateDistributionMode = Literal["visits", "truncated"]

_TRUNCATION_MASS_TOL = 1e-18
_MAX_BANDWIDTH = 64


def epsilon_greedy_policy(q_values: ArrayLike, epsilon: float) -> NDArray[np.float64]:
    r"""Action probabilities of the :math:`\varepsilon`-greedy policy of a Q-table.

    Each action gets :math:`\varepsilon/|A|`; the remaining :math:`1-\varepsilon` is split equally
    among the greedy actions (exact ties), matching the agents' uniform tie-breaking.

    Parameters
    ----------
    q_values : array-like, shape (n_states, n_actions)
    epsilon : float in [0, 1]

    Returns
    -------
    ndarray, shape (n_states, n_actions)
    """
    q = np.asarray(q_values, dtype=np.float64)
    if q.ndim != 2:
        raise DistributionError(f"q_values must be 2-D (states x actions), got shape {q.shape}")
    if not 0.0 <= epsilon <= 1.0:
        raise DistributionError(f"epsilon must lie in [0, 1], got {epsilon!r}")
    greedy = q == q.max(axis=1, keepdims=True)
    probs = greedy / greedy.sum(axis=1, keepdims=True)
    return np.asarray(epsilon / q.shape[1] + (1.0 - epsilon) * probs, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class ChainModel:
    """Pre-computed structure of the chains a grid map induces, reused across policies.

    Building the sparsity pattern once makes every later :meth:`state_distribution` call a
    scatter of the policy's probabilities plus one sparse solve.
    """

    grid: GridMap
    transient: NDArray[np.int64]  # flat indices of the reachable non-goal cells
    rows: NDArray[np.int64]  # transient position of (s, a), for the moves that stay transient
    cols: NDArray[np.int64]  # transient position of next(s, a)
    stay_mask: NDArray[np.bool_]  # (n_transient * 4,) move stays among transient cells
    bandwidth: int  # max |row - col| of (I - Q), in transient positions

    @classmethod
    def from_grid(cls, grid: GridMap) -> ChainModel:
        reachable = grid.reachable.ravel()
        reachable_cells = np.flatnonzero(reachable)
        transient = reachable_cells[reachable_cells != grid.goal_index]
        pos = np.full(grid.n_cells, -1, dtype=np.int64)
        pos[transient] = np.arange(transient.size)
        nxt = grid.transitions.next_state[transient].ravel()
        stay = nxt != grid.goal_index
        rows = np.repeat(np.arange(transient.size), 4)[stay]
        cols = pos[nxt[stay]]
        bandwidth = int(np.abs(rows - cols).max()) if rows.size else 0
        return cls(
            grid=grid,
            transient=transient,
            rows=rows,
            cols=cols,
            stay_mask=stay,
            bandwidth=bandwidth,
        )

    def _check_policy(self, policy: ArrayLike) -> NDArray[np.float64]:
        pi = np.asarray(policy, dtype=np.float64)
        if pi.shape != (self.grid.n_cells, 4):
            raise DistributionError(
                f"policy must have shape ({self.grid.n_cells}, 4) (cells x actions), got {pi.shape}"
            )
        sub = pi[self.transient]
        if not np.all(np.isfinite(sub)) or np.any(sub < 0):
            raise DistributionError("policy probabilities must be finite and non-negative")
        if not np.allclose(sub.sum(axis=1), 1.0, rtol=0, atol=1e-9):
            raise DistributionError("policy rows must sum to 1 on every reachable cell")
        return sub

    def state_distribution(
        self,
        policy: ArrayLike,
        mode: StateDistributionMode = "visits",
        max_steps: int | None = None,
    ) -> NDArray[np.float64]:
        """See :func:`policy_state_distribution`."""
        sub = self._check_policy(policy)
        n_t = self.transient.size
        flat = sub.ravel()
        q_values = flat[self.stay_mask]  # the nonzeros of Q at (rows, cols)
        to_goal = flat.copy()
        to_goal[self.stay_mask] = 0.0
        r = to_goal.reshape(n_t, 4).sum(axis=1)  # one-step probability of entering the goal
        start = int(np.searchsorted(self.transient, self.grid.start_index))
        if mode == "visits":
            if np.all(flat > 0):
                # Every action has positive probability: moves are reversible, so every reachable
                # cell reaches the goal and I - Q is non-singular.
                visits = self._solve_visits(q_values, start)
            else:
                visits = self._visits_on_support(q_values, r, start)
            goal = float(visits @ r)
        elif mode == "truncated":
            if max_steps is None or max_steps < 1:
                raise ChainError("mode='truncated' needs a positive max_steps")
            visits, goal = self._truncated(q_values, r, start, int(max_steps))
        else:
            raise ChainError(f"unknown state-distribution mode {mode!r} (visits, truncated)")
        out = np.zeros(self.grid.n_cells)
        out[self.transient] = visits
        out[self.grid.goal_index] = goal
        return np.asarray(out / out.sum(), dtype=np.float64)

    def _solve_visits(self, q_values: NDArray[np.float64], start: int) -> NDArray[np.float64]:
        """Solve (I - Q)^T n = e_0 on all transient cells (banded LU or SuperLU)."""
        # Entry (j, i) of (I - Q)^T holds -Q[i, j].
        n_t = self.transient.size
        e0 = np.zeros(n_t)
        e0[start] = 1.0
        if self.bandwidth <= _MAX_BANDWIDTH:
            bw = self.bandwidth
            # LAPACK band storage: ab[bw + i - j, j] = A[i, j] with i = col, j = row of Q.
            flat_index = (bw + self.cols - self.rows) * n_t + self.rows
            ab = -np.bincount(flat_index, weights=q_values, minlength=(2 * bw + 1) * n_t)
            ab = ab.reshape(2 * bw + 1, n_t)
            ab[bw] += 1.0
            visits = solve_banded((bw, bw), ab, e0, check_finite=False)
        else:
            visits = _sparse_visits(self.rows, self.cols, q_values, n_t, start)
        if not np.all(np.isfinite(visits)) or visits.min() < -1e-9:  # pragma: no cover
            raise ChainError("the expected-visits system is numerically singular")
        return np.asarray(np.clip(visits, 0.0, None), dtype=np.float64)

    def _visits_on_support(
        self, q_values: NDArray[np.float64], r: NDArray[np.float64], start: int
    ) -> NDArray[np.float64]:
        """Expected visits of a policy with zero-probability actions.

        Only the cells the policy can visit from the start matter; if one of them can never reach
        the goal, expected visits are infinite.
        """
        n_t = self.transient.size
        live = q_values > 0
        rows, cols = self.rows[live], self.cols[live]
        forward = sp.csr_array((np.ones(rows.size), (rows, cols)), shape=(n_t, n_t))
        visited = np.sort(csgraph.breadth_first_order(forward, start, return_predecessors=False))
        exits = np.flatnonzero(r > 0)
        # Reverse graph plus a virtual node n_t pointing at every cell with a move into the goal.
        backward = sp.csr_array(
            (
                np.ones(rows.size + exits.size),
                (np.concatenate([cols, np.full(exits.size, n_t)]), np.concatenate([rows, exits])),
            ),
            shape=(n_t + 1, n_t + 1),
        )
        reaches_goal = np.zeros(n_t + 1, dtype=bool)
        reaches_goal[csgraph.breadth_first_order(backward, n_t, return_predecessors=False)] = True
        trapped = visited[~reaches_goal[visited]]
        if trapped.size:
            w = self.grid.shape[1]
            cell = divmod(int(self.transient[trapped[0]]), w)
            raise ChainError(
                f"the policy can reach cell {cell} from the start but never reaches the goal from "
                "there, so expected visits per episode are infinite; use mode='truncated' "
                "(or a policy with epsilon > 0)"
            )
        pos = np.full(n_t, -1, dtype=np.int64)
        pos[visited] = np.arange(visited.size)
        keep = live & (pos[self.rows] >= 0) & (pos[self.cols] >= 0)
        sub_visits = _sparse_visits(
            pos[self.rows[keep]],
            pos[self.cols[keep]],
            q_values[keep],
            visited.size,
            int(pos[start]),
        )
        visits = np.zeros(n_t)
        visits[visited] = np.clip(sub_visits, 0.0, None)
        return visits

    def _truncated(
        self, q_values: NDArray[np.float64], r: NDArray[np.float64], start: int, max_steps: int
    ) -> tuple[NDArray[np.float64], float]:
        n_t = self.transient.size
        qt = sp.csr_array((q_values, (self.cols, self.rows)), shape=(n_t, n_t))
        x = np.zeros(n_t)
        x[start] = 1.0
        visits = x.copy()
        goal = 0.0
        for _ in range(max_steps):
            goal += float(x @ r)
            x = qt @ x
            visits += x
            if x.sum() < _TRUNCATION_MASS_TOL:
                break
        return visits, goal


def _sparse_visits(
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    q_values: NDArray[np.float64],
    n: int,
    start: int,
) -> NDArray[np.float64]:
    """Solve (I - Q)^T n = e_start with SuperLU, Q given by its nonzeros at (rows, cols)."""
    a = sp.csc_array(
        (
            np.concatenate([np.ones(n), -q_values]),
            (np.concatenate([np.arange(n), cols]), np.concatenate([np.arange(n), rows])),
        ),
        shape=(n, n),
    )
    e0 = np.zeros(n)
    e0[start] = 1.0
    return np.asarray(spla.spsolve(a, e0), dtype=np.float64)


def policy_state_distribution(
    env: GridWorld | GridMap | ChainModel,
    policy: ArrayLike,
    mode: StateDistributionMode = "visits",
    max_steps: int | None = None,
) -> NDArray[np.float64]:
    r"""The policy state distribution :math:`P^\pi` of DESIGN §1, exactly.

    Parameters
    ----------
    env : GridWorld, GridMap or ChainModel
        The map (a :class:`ChainModel` reuses pre-computed structure across calls).
    policy : array-like, shape (H*W, 4)
        Action probabilities per cell (rows of unreachable cells and obstacles are ignored).
    mode : {"visits", "truncated"}
        Untruncated expected visits (restart-chain stationary distribution) or visits within
        ``max_steps`` moves; see the module docstring.
    max_steps : int, optional
        Truncation horizon for ``mode="truncated"``; defaults to ``env.max_steps`` for a
        :class:`GridWorld`.

    Returns
    -------
    ndarray, shape (H*W,)
        Non-negative, sums to 1, zero on obstacles and unreachable cells.

    Raises
    ------
    DistributionError
        If ``policy`` has the wrong shape or is not a probability table.
    ChainError
        If ``mode="visits"`` and the policy can circle forever without reaching the goal.
    """
    if isinstance(env, GridWorld):
        if max_steps is None:
            max_steps = env.max_steps
        model = ChainModel.from_grid(env.grid)
    elif isinstance(env, GridMap):
        model = ChainModel.from_grid(env)
    else:
        model = env
    return model.state_distribution(policy, mode=mode, max_steps=max_steps)
