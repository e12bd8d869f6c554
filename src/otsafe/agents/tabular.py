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

Checkpoints: :meth:`QLearning.state_dict` / :meth:`QLearning.load_state_dict` save and restore
everything that carries over from one episode to the next, so that a resumed run continues bit for
bit (see :meth:`QLearning.state_dict` for what that is).

The step loop runs on the environment's transition table with plain Python floats (equivalent to
``env.step``; tested against it), because a per-step Gymnasium call and NumPy scalar indexing
dominate the run time otherwise.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from otsafe.agents._state import check_header
from otsafe.envs.gridworld import GridWorld
from otsafe.errors import ConfigError
from otsafe.markov import ChainModel, epsilon_greedy_policy
from otsafe.transport.costs import sqeuclidean_cost
from otsafe.transport.exact import ExactOT, OTSolution
from otsafe.transport.grid import AUTO_EXACT_MAX_CELLS
from otsafe.transport.grid_sinkhorn import GridSinkhorn, GridSinkhornPlan, SinkhornInfo
from otsafe.transport.multiscale import GridMultiscaleOT
from otsafe.transport.tripartite import GridExactOT, GridPlan

__all__ = ["EpisodeMetrics", "OTMethod", "OTQLearning", "QLearning", "StateDistribution"]

# Backward error required of the large-map P^pi solves (otsafe.markov): late, nearly greedy
# policies are ill-conditioned, and 1e-8 is far below what the OT plan can resolve.
_CHAIN_TOL = 1e-8

StateDistribution = Literal["visits", "truncated", "empirical"]
OTMethod = Literal["tripartite", "multiscale", "dense", "sinkhorn", "auto"]

# Checkpoints (QLearning.state_dict): the format's name and version.
STATE_KIND = "otsafe.agents.QLearning"
STATE_VERSION = 1
_STATE_KEYS = (
    "map",
    "settings",
    "episodes_done",
    "epsilon",
    "q",
    "bonus",
    "last_plan",
    "last_state_distribution",
    "last_policy",
    "sinkhorn_passes",
)


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
    ot_method : {"tripartite", "multiscale", "dense", "sinkhorn", "auto"}
        OT solver. Exact: the min-cost flow on the tripartite grid network
        (:class:`~otsafe.transport.GridExactOT`, default, ~3x faster than ``"dense"``); the
        multiscale sparse solver (:class:`~otsafe.transport.GridMultiscaleOT`, for maps of about
        10^4 cells, where it is slightly faster than the tripartite network and needs 6-7x less
        memory); POT's ``ot.emd`` on the dense cost (:class:`~otsafe.transport.ExactOT`). Where
        the optimal plan is not unique, the exact solvers can return different optimal plans with
        the same cost. Entropic: the grid solver (:class:`~otsafe.transport.GridSinkhorn`, for
        large maps, warm-started from the previous episode's plan). Or ``"auto"``: tripartite up
        to :data:`~otsafe.transport.AUTO_EXACT_MAX_CELLS` reachable cells, Sinkhorn above.
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
        if ot_method not in ("tripartite", "multiscale", "dense", "sinkhorn", "auto"):
            raise ConfigError(
                "ot_method must be tripartite, multiscale, dense, sinkhorn or auto, got "
                f"{ot_method!r}"
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
        self._ot: GridExactOT | GridMultiscaleOT | ExactOT | GridSinkhorn
        if ot_method == "sinkhorn":
            # On the whole H x W grid: P^pi and P^s are zero off the reachable cells.
            self._ot = GridSinkhorn(
                grid.shape, epsilon=ot_epsilon, tol=ot_tol, device=ot_device, dtype=ot_dtype
            )
        elif ot_method == "tripartite":
            self._ot = GridExactOT(cells)
        elif ot_method == "multiscale":
            self._ot = GridMultiscaleOT(cells)
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

    # --------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        r"""A snapshot of everything that carries over between episodes, for checkpoints.

        A fresh agent built with the same arguments that loads it with :meth:`load_state_dict`
        continues exactly (bit for bit) like this one. The snapshot shares no mutable object with
        the agent, and it survives ``torch.save``/``torch.load(weights_only=False)`` and
        :mod:`pickle`.

        Returns
        -------
        dict
            ``"version"`` (1) and ``"kind"`` (:data:`STATE_KIND`); ``"map"`` (name, shape and a
            fingerprint of the layout) and ``"settings"`` (the hyperparameters that shape the
            run), both checked on loading; ``"episodes_done"`` and ``"epsilon"``; ``"q"`` and
            ``"bonus"``, ``(H*W, 4)`` float64 arrays (the Q-table and the bonus
            :math:`\beta C` still payable); ``"last_plan"``: the last OT plan (a
            :class:`~otsafe.transport.GridPlan` or :class:`~otsafe.transport.exact.OTSolution`,
            or, for the Sinkhorn solver, a dict of the :class:`~otsafe.transport.GridSinkhornPlan`
            fields with its potentials as torch tensors) or None; ``"last_state_distribution"``
            and ``"last_policy"`` (arrays or None: :math:`P^\pi` and the policy it belongs to,
            which let an unchanged policy skip the solves); ``"sinkhorn_passes"``: the adaptive
            block sizes of the Sinkhorn solver's axis passes (None for the exact solvers).

        Notes
        -----
        The Sinkhorn block sizes are state because the block-stabilised sums round differently
        for different block sizes: the plans of a solver whose block sizes restarted from the
        default differ in the last bits. Nothing else cached in the agent affects results: the
        :class:`~otsafe.markov.ChainModel` caches only map-dependent structure (orderings,
        sparsity patterns) and the last solve's diagnostics, and the exact OT solvers have no
        state. Results also depend on the number of torch threads (Sinkhorn's matrix
        products), which a checkpoint cannot fix.
        """
        return {
            "version": STATE_VERSION,
            "kind": STATE_KIND,
            "map": self._map_signature(),
            "settings": self._settings(),
            "episodes_done": int(self.episodes_done),
            "epsilon": float(self.epsilon),
            "q": self.q_table,
            "bonus": self.bonus_table(),
            "last_plan": _plan_state(self.last_plan),
            "last_state_distribution": _copy_or_none(self.last_state_distribution),
            "last_policy": _copy_or_none(self._last_policy),
            "sinkhorn_passes": self._passes_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any], *, strict: bool = True) -> None:
        """Restore a snapshot taken by :meth:`state_dict`; training then continues exactly.

        Parameters
        ----------
        state : mapping
            What :meth:`state_dict` returned (possibly through ``torch.save``/``torch.load``).
            It is not modified, and the agent shares no mutable object with it afterwards.
        strict : bool
            Also require the hyperparameters recorded in ``state["settings"]`` (learning rate,
            discount, beta, epsilon schedule, seed, ``max_steps``, P^pi mode and OT solver
            settings, safety values) to equal this agent's, which an exact continuation needs.
            With ``False`` only the structure is checked (kind, version, map, table shapes, the
            type of the OT plan).

        Raises
        ------
        ConfigError
            If ``state`` is not a QLearning state of this format version, comes from another
            map, has mis-shaped tables or an OT plan of another solver, or (``strict``) was taken
            with other settings. The agent is unchanged then.
        """
        check_header(state, STATE_KIND, STATE_VERSION, _STATE_KEYS)
        mine = self._map_signature()
        theirs = state["map"]
        if not isinstance(theirs, Mapping) or theirs.get("fingerprint") != mine["fingerprint"]:
            what = (
                f"map {theirs.get('name')!r} {tuple(theirs.get('shape', ()))}"
                if isinstance(theirs, Mapping)
                else "an unknown map"
            )
            raise ConfigError(
                f"cannot load the state: it was saved on {what}, this agent runs on map "
                f"{mine['name']!r} {tuple(mine['shape'])} (a different layout)"
            )
        if strict:
            _check_settings(state["settings"], self._settings())
        n = self.env.grid.n_cells
        q = _table(state["q"], "q", n)
        bonus = _table(state["bonus"], "bonus", n)
        p_pi = _vector_or_none(state["last_state_distribution"], "last_state_distribution", (n,))
        last_policy = _vector_or_none(state["last_policy"], "last_policy", (n, 4))
        plan = self._plan_from_state(state["last_plan"])
        self._check_passes_state(state["sinkhorn_passes"])
        try:
            episodes_done = int(state["episodes_done"])
            epsilon = float(state["epsilon"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the state: bad episodes_done or epsilon ({exc})"
            ) from None
        if episodes_done < 0 or not 0.0 <= epsilon <= 1.0:
            raise ConfigError(
                f"cannot load the state: episodes_done={episodes_done} and epsilon={epsilon!r} "
                "are out of range"
            )
        # Everything is checked: restore.
        self._q = q.tolist()
        self._bonus = bonus.tolist()
        self.episodes_done = episodes_done
        self.epsilon = epsilon
        self.last_plan = plan
        self.last_state_distribution = p_pi
        self._last_policy = last_policy
        if isinstance(self._ot, GridSinkhorn):
            self._ot.load_adaptive_state(dict(state["sinkhorn_passes"]))

    def _map_signature(self) -> dict[str, Any]:
        """Name, shape and a fingerprint of the layout (obstacles, start, goal) of the map."""
        grid = self.env.grid
        digest = hashlib.sha256()
        digest.update(repr((grid.obstacles.shape, grid.start, grid.goal)).encode())
        digest.update(np.ascontiguousarray(grid.obstacles).tobytes())
        return {"name": grid.name, "shape": tuple(grid.shape), "fingerprint": digest.hexdigest()}

    def _settings(self) -> dict[str, Any]:
        """The hyperparameters an exact continuation needs unchanged (plain Python values)."""
        risk = np.ascontiguousarray(self._p_s, dtype=np.float64)
        settings: dict[str, Any] = {
            "class": type(self).__name__,
            "alpha": self.alpha,
            "gamma": self.gamma,
            "beta": self.beta,
            "epsilon_decay": self.epsilon_decay,
            "epsilon_min": self.epsilon_min,
            "seed": self.seed,
            "max_steps": int(self.env.max_steps),
            "state_distribution": self.state_distribution,
            "track_w2": self.track_w2,
            "ot_method": self.ot_method,
            "chain_device": None if self._chain_device is None else str(self._chain_device),
            "risk_distribution": hashlib.sha256(risk.tobytes()).hexdigest(),
        }
        if isinstance(self._ot, GridSinkhorn):
            ot = self._ot
            settings["sinkhorn"] = {
                "epsilon": ot.epsilon,
                "tol": ot.tol,
                "max_iter": ot.max_iter,
                "scaling": ot.scaling,
                "omega": ot.omega,
                "stage_iter": ot.stage_iter,
                "strict": ot.strict,
                "device": str(ot.device),
                "dtype": str(ot.dtype),
            }
        return settings

    def _passes_state(self) -> dict[str, list[list[int]]] | None:
        """The adaptive state of the Sinkhorn solver's axis passes (None for exact solvers)."""
        return self._ot.adaptive_state() if isinstance(self._ot, GridSinkhorn) else None

    def _check_passes_state(self, state: Any) -> None:
        """Raise ConfigError unless ``state`` fits this agent's OT solver (nothing changes)."""
        if not isinstance(self._ot, GridSinkhorn):
            if state is not None:
                raise ConfigError(
                    "cannot load the state: it holds Sinkhorn solver state, this agent uses "
                    f"ot_method={self.ot_method!r}"
                )
            return
        if not isinstance(state, Mapping):
            raise ConfigError(
                "cannot load the state: it holds no Sinkhorn solver state, this agent uses "
                "ot_method='sinkhorn'"
            )
        try:
            GridSinkhorn.check_adaptive_state(dict(state))
        except ValueError as exc:
            raise ConfigError(f"cannot load the state: bad Sinkhorn pass state ({exc})") from None

    def _plan_from_state(self, state: Any) -> GridPlan | OTSolution | GridSinkhornPlan | None:
        """The plan saved by :func:`_plan_state`, checked against this agent's solver."""
        if state is None:
            return None
        if isinstance(self._ot, GridSinkhorn):
            if not isinstance(state, Mapping) or state.get("type") != "GridSinkhornPlan":
                raise ConfigError(
                    f"cannot load the state: its OT plan is a {_plan_kind(state)}, this agent "
                    "uses ot_method='sinkhorn'"
                )
            return self._sinkhorn_plan(state)
        expected = GridPlan if isinstance(self._ot, GridExactOT) else OTSolution
        n = self._support.size
        if not isinstance(state, expected) or tuple(state.shape) != (n, n):
            raise ConfigError(
                f"cannot load the state: its OT plan is a {_plan_kind(state)}, this agent needs a "
                f"{expected.__name__} of shape ({n}, {n}) (ot_method={self.ot_method!r})"
            )
        return copy.deepcopy(state)

    def _sinkhorn_plan(self, state: Mapping[str, Any]) -> GridSinkhornPlan:
        """Rebuild a :class:`GridSinkhornPlan` on this agent's solver (device, soft-min)."""
        assert isinstance(self._ot, GridSinkhorn)
        ot = self._ot
        try:
            shape = (int(state["shape"][0]), int(state["shape"][1]))
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ConfigError(f"cannot load the state: malformed Sinkhorn plan ({exc!r})") from None
        if shape != ot.shape:
            raise ConfigError(
                f"cannot load the state: its Sinkhorn plan is on a {shape} grid, this agent's "
                f"is {ot.shape}"
            )
        try:
            plan = ot.plan_from_potentials(
                *(state[k] for k in ("f", "g", "log_a", "log_b")),
                epsilon=float(state["epsilon"]),
                mass=float(state["mass"]),
                info=SinkhornInfo(**state["info"]),
            )
            cost = state["cost"]
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
            raise ConfigError(f"cannot load the state: malformed Sinkhorn plan ({exc!r})") from None
        if cost is not None:  # the cached <T, c>: recomputing it would move the block sizes
            plan.__dict__["cost"] = float(cost)
        return plan


# ------------------------------------------------------------------------------- checkpoints
def _check_settings(saved: Any, mine: dict[str, Any]) -> None:
    """Raise ConfigError listing the settings that differ (strict loading)."""
    if not isinstance(saved, Mapping):
        raise ConfigError("cannot load the state: its settings are missing or malformed")
    keys = sorted(set(saved) | set(mine))
    diff = [
        f"{k}: saved {saved.get(k)!r}, here {mine.get(k)!r}"
        for k in keys
        if saved.get(k) != mine.get(k)
    ]
    if diff:
        raise ConfigError(
            "cannot load the state: it was taken with other settings, so the run would not "
            "continue exactly (" + "; ".join(diff) + "); build the agent with the saved "
            "settings, or pass strict=False"
        )


def _copy_or_none(a: NDArray[np.float64] | None) -> NDArray[np.float64] | None:
    return None if a is None else np.array(a, dtype=np.float64, copy=True)


def _table(value: Any, name: str, n: int) -> NDArray[np.float64]:
    """A saved ``(n, 4)`` table as a float64 copy; ConfigError if mis-shaped."""
    try:
        arr = np.array(value, dtype=np.float64, copy=True)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (n, 4):
        raise ConfigError(
            f"cannot load the state: {name} has shape {arr.shape}, this agent's map needs ({n}, 4)"
        )
    return arr


def _vector_or_none(value: Any, name: str, shape: tuple[int, ...]) -> NDArray[np.float64] | None:
    if value is None:
        return None
    try:
        arr = np.array(value, dtype=np.float64, copy=True)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != shape:
        raise ConfigError(f"cannot load the state: {name} has shape {arr.shape}, expected {shape}")
    return arr


def _plan_state(
    plan: GridPlan | OTSolution | GridSinkhornPlan | None,
) -> GridPlan | OTSolution | dict[str, Any] | None:
    """The plan as saved: a copy of an exact plan, a Sinkhorn plan as its fields.

    A :class:`GridSinkhornPlan` refers to its solver's soft-min operator, whose adaptive block
    sizes are solver state (saved separately); the plan is saved without it, and rebuilt on the
    loading agent's solver.
    """
    if not isinstance(plan, GridSinkhornPlan):
        return copy.deepcopy(plan)
    return {
        "type": "GridSinkhornPlan",
        "shape": tuple(plan.shape),
        "epsilon": plan.epsilon,
        "f": plan.f.detach().clone(),
        "g": plan.g.detach().clone(),
        "log_a": plan.log_a.detach().clone(),
        "log_b": plan.log_b.detach().clone(),
        "mass": plan.mass,
        "info": asdict(plan.info),
        "cost": plan.__dict__.get("cost"),  # cached_property: present once computed
    }


def _plan_kind(state: Any) -> str:
    if state is None:
        return "None"
    if isinstance(state, Mapping):
        return str(state.get("type", "dict"))
    return type(state).__name__


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
