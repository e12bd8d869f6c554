r"""Tabular Q-learning and OT-assisted risk-sensitive Q-learning (OT-Q).

Reads top to bottom as Algorithm 1 of *Optimal Transport-Assisted Risk-Sensitive Q-Learning*
(Shahrooei & Baheri), with the interpretation fixed in DESIGN §1:

* Eq. 1 (Q-learning):  Q(s,a) <- Q(s,a) + alpha [r + gamma max_a' Q(s',a') - Q(s,a)]
* Eq. 3 (OT plan):     T* = argmin <T, c>  between P^pi (source) and P^s (target),
                        c(s,s') = ||s - s'||^2 in (row, col) cell coordinates
* Eq. 4 (distance):    W2 = <T*, c>^(1/2)
* Eq. 5 (OT-Q):        Q(s,a) <- Q(s,a) + alpha [r + gamma max_a' Q(s',a') - Q(s,a) + beta C(s,s')]
                        with C(s,s') = T*(s,s') c(s,s'); no bootstrap at the goal.

Choices the paper leaves open (documented in docs/reproduction/otq.md):

* C is zero during the first episode; the first plan is computed after it (Algorithm 1 computes
  T* at the end of an episode; the paper: "the OT term starts influencing the learning process"
  from the second episode).
* Line 9, "C(s,s') <- 0": each transition earns its bonus at most once until the next plan.
* Lines 11-13 in that order: P^pi of the updated epsilon-greedy policy (current epsilon), the new
  plan, then epsilon <- max(epsilon * decay, epsilon_min).
* Greedy ties are broken uniformly at random; P^pi splits the greedy mass among tied actions the
  same way, so P^pi is the distribution of the policy actually executed.
* Randomness: episode k draws a block of uniforms from ``PCG64(SeedSequence([seed, k]))``, two per
  step (explore? / which action), so results do not depend on how the loop is written and a run
  can be resumed at any episode.

The step loop runs on the environment's transition table with plain Python floats (equivalent to
``env.step``; tested against it), because a per-step Gymnasium call and NumPy scalar indexing
dominate the run time otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from otsafe.envs.gridworld import GridWorld
from otsafe.errors import ConfigError
from otsafe.markov import ChainModel, epsilon_greedy_policy
from otsafe.transport.costs import sqeuclidean_cost
from otsafe.transport.exact import ExactOT, OTSolution
from otsafe.transport.grid import AUTO_EXACT_MAX_CELLS
from otsafe.transport.grid_sinkhorn import GridSinkhorn, GridSinkhornPlan
from otsafe.transport.tripartite import GridExactOT, GridPlan

__all__ = ["EpisodeMetrics", "OTMethod", "OTQLearning", "QLearning", "StateDistribution"]

# Backward error required of the large-map P^pi solves (otsafe.markov): late, nearly greedy
# policies are ill-conditioned, and 1e-8 is far below what the OT plan can resolve.
_CHAIN_TOL = 1e-8

StateDistribution = Literal["visits", "truncated", "empirical"]
OTMethod = Literal["tripartite", "dense", "sinkhorn", "auto"]


@dataclass(frozen=True)
class EpisodeMetrics:
    """What one episode measured (DESIGN §1 metrics).

    ``risky_visits`` counts the steps that end in a cell with safety value below 1;
    ``w2`` is W2(P^pi, P^s) for the policy after the episode's updates (Algorithm 1, line 12).
    """

    episode: int
    env_return: float
    shaped_return: float
    length: int
    collisions: int
    risky_visits: int
    w2: float
    bonus: float
    epsilon: float
    success: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_range(
    name: str, value: float, low: float, high: float, *, open_low: bool = False
) -> None:
    ok = (low < value if open_low else low <= value) and value <= high
    if not ok or not math.isfinite(value):
        bracket = "(" if open_low else "["
        raise ConfigError(f"{name} must lie in {bracket}{low}, {high}], got {value!r}")


class QLearning:
    r"""Watkins Q-learning with decaying :math:`\varepsilon`-greedy exploration (Eq. 1).

    Also computes :math:`P^\pi` and :math:`W_2(P^\pi, P^s)` after every episode (for the metrics),
    so the baseline and OT-Q report the same quantities.

    Parameters
    ----------
    env : GridWorld
        A tabular environment with a known transition table (OT-Q needs the model for
        :math:`P^\pi`).
    alpha, gamma : float
        Learning rate in (0, 1] and discount in [0, 1].
    epsilon_start, epsilon_decay, epsilon_min : float
        :math:`\varepsilon` starts at ``epsilon_start`` and is multiplied by ``epsilon_decay``
        after every episode, never below ``epsilon_min``.
    beta : float
        Sensitivity of the OT bonus (Eq. 5). ``0`` is plain Q-learning.
    seed : int
        Fixes every random draw.
    state_distribution : {"visits", "truncated", "empirical"}
        How :math:`P^\pi` is obtained: exact untruncated expected visits (default), exact visits
        within ``env.max_steps`` moves, or the visit frequencies of the last episode.
    ot_method : {"tripartite", "dense", "sinkhorn", "auto"}
        OT solver: min-cost flow on the tripartite grid network
        (:class:`~otsafe.transport.GridExactOT`, default, ~3x faster) or POT's ``ot.emd`` on the
        dense cost (:class:`~otsafe.transport.ExactOT`), both exact (where the optimal plan is
        not unique they can return different optimal plans with the same cost); the entropic
        grid solver (:class:`~otsafe.transport.GridSinkhorn`, for large maps, warm-started from
        the previous episode's plan); or ``"auto"``: tripartite up to
        :data:`~otsafe.transport.AUTO_EXACT_MAX_CELLS` reachable cells, Sinkhorn above.
    ot_epsilon, ot_tol, ot_device, ot_dtype
        Regularisation (cell^2), marginal tolerance, device and dtype of the Sinkhorn solver.
    track_w2 : bool
        Compute :math:`P^\pi` and the plan after every episode even when ``beta == 0``.
    """

    def __init__(
        self,
        env: GridWorld,
        *,
        alpha: float = 0.1,
        gamma: float = 0.99,
        epsilon_start: float = 1.0,
        epsilon_decay: float = 0.99,
        epsilon_min: float = 0.01,
        beta: float = 0.0,
        seed: int = 0,
        state_distribution: StateDistribution = "visits",
        ot_method: OTMethod = "tripartite",
        track_w2: bool = True,
        ot_epsilon: float = 0.5,
        ot_tol: float = 1e-3,
        ot_device: str = "cpu",
        ot_dtype: str = "float64",
    ) -> None:
        if not isinstance(env, GridWorld):
            raise ConfigError(f"env must be an otsafe GridWorld, got {type(env).__name__}")
        _check_range("alpha", alpha, 0.0, 1.0, open_low=True)
        _check_range("gamma", gamma, 0.0, 1.0)
        _check_range("epsilon_start", epsilon_start, 0.0, 1.0)
        _check_range("epsilon_decay", epsilon_decay, 0.0, 1.0, open_low=True)
        _check_range("epsilon_min", epsilon_min, 0.0, 1.0)
        _check_range("beta", beta, 0.0, math.inf)
        if state_distribution not in ("visits", "truncated", "empirical"):
            raise ConfigError(
                f"state_distribution must be visits, truncated or empirical, got "
                f"{state_distribution!r}"
            )
        if ot_method not in ("tripartite", "dense", "sinkhorn", "auto"):
            raise ConfigError(
                f"ot_method must be tripartite, dense, sinkhorn or auto, got {ot_method!r}"
            )
        if state_distribution == "visits" and epsilon_min == 0.0 and (beta > 0 or track_w2):
            raise ConfigError(
                "state_distribution='visits' needs epsilon_min > 0: a greedy policy may never "
                "reach the goal, and its expected visits are then infinite"
            )
        self.env = env
        self.alpha, self.gamma, self.beta = float(alpha), float(gamma), float(beta)
        self.epsilon = float(epsilon_start)
        self.epsilon_decay, self.epsilon_min = float(epsilon_decay), float(epsilon_min)
        self.seed = int(seed)
        self.state_distribution: StateDistribution = state_distribution
        self.track_w2 = bool(track_w2)
        self.episodes_done = 0

        grid = env.grid
        table = env.transitions
        n = grid.n_cells
        # Plain-Python copies of the model and the Q-table for the step loop.
        self._next: list[list[int]] = table.next_state.tolist()
        self._reward: list[list[float]] = table.reward.tolist()
        self._collision: list[list[bool]] = table.collision.tolist()
        self._terminal: list[bool] = table.terminal.tolist()
        self._risky: list[bool] = env.risky.tolist()
        self._q: list[list[float]] = [[0.0] * 4 for _ in range(n)]  # Alg. 1, line 2
        self._bonus: list[list[float]] = [[0.0] * 4 for _ in range(n)]  # beta * C(s, next(s, a))

        # OT is solved on the cells the agent can reach (P^pi and P^s vanish elsewhere).
        self._support = np.flatnonzero(grid.reachable.ravel())
        self._chain = ChainModel.from_grid(grid)
        self._p_s = env.risk_distribution
        cells = grid.coordinates[self._support]
        if ot_method == "auto":
            big = self._support.size > AUTO_EXACT_MAX_CELLS
            ot_method = "sinkhorn" if big else "tripartite"
        self.ot_method: OTMethod = ot_method
        # On a GPU, P^pi is computed there too (otsafe.markov's torch path); else with SciPy.
        self._chain_device = None if str(ot_device).startswith("cpu") else ot_device
        self._ot: GridExactOT | ExactOT | GridSinkhorn
        if ot_method == "sinkhorn":
            # On the whole H x W grid: P^pi and P^s are zero off the reachable cells.
            self._ot = GridSinkhorn(
                grid.shape, epsilon=ot_epsilon, tol=ot_tol, device=ot_device, dtype=ot_dtype
            )
        elif ot_method == "tripartite":
            self._ot = GridExactOT(cells)
        else:
            self._ot = ExactOT(sqeuclidean_cost(cells))
        # (s, a) pairs whose move changes cell, in support positions, and c(s, s') of each move,
        # for the bonus lookup (the dense n x n cost is never needed).
        pos = np.full(n, -1, dtype=np.int64)
        pos[self._support] = np.arange(self._support.size)
        s_idx, a_idx = np.nonzero(
            (table.next_state != np.arange(n)[:, None]) & grid.reachable.ravel()[:, None]
        )
        s2_idx = table.next_state[s_idx, a_idx]
        self._moves = (s_idx, a_idx, pos[s_idx], pos[s2_idx])
        self._move_cost = np.sum((grid.coordinates[s_idx] - grid.coordinates[s2_idx]) ** 2, axis=1)
        self._visit_counts = np.zeros(n)
        self.last_plan: GridPlan | OTSolution | GridSinkhornPlan | None = None
        self.last_state_distribution: NDArray[np.float64] | None = None
        self._last_policy: NDArray[np.float64] | None = None

    # --------------------------------------------------------------------------- tables
    @property
    def q_table(self) -> NDArray[np.float64]:
        """The Q-table, shape ``(H*W, 4)``."""
        return np.array(self._q, dtype=np.float64)

    def policy(self) -> NDArray[np.float64]:
        """Action probabilities of the current epsilon-greedy policy, shape ``(H*W, 4)``."""
        return epsilon_greedy_policy(self.q_table, self.epsilon)

    def bonus_table(self) -> NDArray[np.float64]:
        """The bonus beta * C(s, next(s, a)) still payable in this episode, shape ``(H*W, 4)``."""
        return np.array(self._bonus, dtype=np.float64)

    # --------------------------------------------------------------------------- episode
    def episode_uniforms(self, episode: int) -> NDArray[np.float64]:
        """The ``(max_steps, 2)`` uniforms episode ``episode`` uses (explore?, which action)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, episode]))
        return rng.random((self.env.max_steps, 2))

    def run_episode(self) -> EpisodeMetrics:
        """One episode of Algorithm 1 (lines 4-13)."""
        alpha, gamma, eps = self.alpha, self.gamma, self.epsilon
        Q, B = self._q, self._bonus
        nxt, rew, col, term, risky = (
            self._next,
            self._reward,
            self._collision,
            self._terminal,
            self._risky,
        )
        uniforms = self.episode_uniforms(self.episodes_done).tolist()
        visits = self._visit_counts
        visits[:] = 0.0
        s = self.env.grid.start_index  # line 4
        visits[s] += 1
        env_return = bonus_paid = 0.0
        collisions = risky_visits = length = 0
        success = False
        for u_explore, u_action in uniforms:  # line 5; truncated after max_steps
            q_s = Q[s]
            # line 6: epsilon-greedy, greedy ties broken uniformly
            if u_explore < eps:
                a = int(u_action * 4.0)
            else:
                best = max(q_s)
                ties = [k for k in range(4) if q_s[k] == best]
                a = ties[int(u_action * len(ties))] if len(ties) > 1 else ties[0]
            # line 7: take the action
            s2 = nxt[s][a]
            r = rew[s][a]
            done = term[s2]
            # line 8: Eq. 5 (Eq. 1 when beta = 0); no bootstrap from the goal
            bonus = B[s][a]
            target = r if done else r + gamma * max(Q[s2])
            q_s[a] += alpha * (target - q_s[a] + bonus)
            # line 9: C(s, s') <- 0, the transition earns its bonus once
            if bonus != 0.0:
                B[s][a] = 0.0
                bonus_paid += bonus
            env_return += r
            collisions += col[s][a]
            risky_visits += risky[s2]
            length += 1
            visits[s2] += 1
            s = s2  # line 10
            if done:
                success = True
                break
        w2 = self._update_plan()  # lines 11-12
        metrics = EpisodeMetrics(
            episode=self.episodes_done + 1,
            env_return=env_return,
            shaped_return=env_return + bonus_paid,
            length=length,
            collisions=collisions,
            risky_visits=risky_visits,
            w2=w2,
            bonus=bonus_paid,
            epsilon=eps,
            success=success,
        )
        self.epsilon = max(self.epsilon * self.epsilon_decay, self.epsilon_min)  # line 13
        self.episodes_done += 1
        return metrics

    def _update_plan(self) -> float:
        """Algorithm 1, lines 11-12: P^pi of the updated policy, then T* and the bonus C."""
        if not (self.track_w2 or self.beta > 0):
            return math.nan
        if self.state_distribution == "empirical":
            p_pi = self._visit_counts / self._visit_counts.sum()
            plan = self._solve_ot(p_pi)
        else:
            policy = self.policy()
            if (
                self.last_plan is not None
                and self._last_policy is not None
                and np.array_equal(policy, self._last_policy)
            ):
                # Same policy as after the previous episode: P^pi and T* are unchanged.
                p_pi, plan = self.last_state_distribution, self.last_plan
            else:
                p_pi = self._chain.state_distribution(
                    policy,
                    mode=self.state_distribution,
                    max_steps=self.env.max_steps,
                    tol=_CHAIN_TOL,
                    device=self._chain_device,
                )
                plan = self._solve_ot(p_pi)
            self._last_policy = policy
        self.last_plan = plan
        self.last_state_distribution = p_pi
        if self.beta > 0:
            s_idx, a_idx, i, j = self._moves
            if isinstance(plan, GridSinkhornPlan):  # addressed by grid cells, not support positions
                i, j = s_idx, self.env.transitions.next_state[s_idx, a_idx]
            c = plan.at(i, j) * self._move_cost  # C(s, s') = T*(s, s') c(s, s')
            bonus = np.zeros((self.env.grid.n_cells, 4))
            bonus[s_idx, a_idx] = self.beta * c
            self._bonus = bonus.tolist()
        return plan.wasserstein(p=2)

    def _solve_ot(self, p_pi: NDArray[np.float64]) -> GridPlan | OTSolution | GridSinkhornPlan:
        """Eq. 3 between P^pi (source) and P^s (target)."""
        if isinstance(self._ot, GridSinkhorn):
            warm = self.last_plan if isinstance(self.last_plan, GridSinkhornPlan) else None
            return self._ot.solve(p_pi, self._p_s, warm_start=warm)
        return self._ot.solve(p_pi[self._support], self._p_s[self._support])

    def train(
        self, episodes: int, callback: Callable[[EpisodeMetrics], None] | None = None
    ) -> list[EpisodeMetrics]:
        """Run ``episodes`` episodes (Algorithm 1, line 3) and return their metrics."""
        if episodes < 0:
            raise ConfigError(f"episodes must be non-negative, got {episodes}")
        out = []
        for metrics in self.iter_episodes(episodes):
            out.append(metrics)
            if callback is not None:
                callback(metrics)
        return out

    def iter_episodes(self, episodes: int) -> Iterator[EpisodeMetrics]:
        for _ in range(episodes):
            yield self.run_episode()


class OTQLearning(QLearning):
    """OT-assisted risk-sensitive Q-learning (Algorithm 1, Eq. 5); ``beta`` must be positive.

    Same parameters as :class:`QLearning`; ``beta`` defaults to the value chosen by the documented
    sweep (see ``docs/reproduction/otq.md``).
    """

    DEFAULT_BETA = 1000.0

    def __init__(self, env: GridWorld, *, beta: float = DEFAULT_BETA, **kwargs: Any) -> None:
        if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(beta)):
            raise ConfigError(f"OT-Q needs a positive, finite beta, got {beta!r}")
        super().__init__(env, beta=beta, **kwargs)
