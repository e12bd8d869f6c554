"""Tests of ``otsafe.markov``: the policy state distribution P^pi of DESIGN §1.

References are built here from the map text alone (own parser, own dynamics, own reachability):
a long Monte-Carlo simulation of the episodes, the stationary distribution of the dense
"restart" chain (goal jumps back to the start), a dense recursion for truncated episodes, and
hand-computed values on tiny maps.
"""

from __future__ import annotations

from collections import deque
from importlib import resources

import numpy as np
import pytest

import otsafe.markov as markov_module
from otsafe.envs import GridWorld, load_map, parse_map
from otsafe.errors import ChainError, DistributionError
from otsafe.markov import ChainModel, epsilon_greedy_policy, policy_state_distribution

# Actions up, down, right, left (DESIGN §1).
DELTAS = ((-1, 0), (1, 0), (0, 1), (0, -1))

SMALL_MAP = "S..\n.#.\n..G"
POCKET_MAP = "S.....\n.###..\n.#.#..\n.###..\n.....G"  # (2, 2) is free but enclosed
WIDE_MAP = "\n".join(
    [
        "S" + "." * 69,
        "".join("#" if c % 9 == 4 else "." for c in range(70)),
        "." * 69 + "G",
    ]
)


def _paper_text() -> str:
    return resources.files("otsafe.envs").joinpath("maps", "paper.txt").read_text()


# --------------------------------------------------------------- independent references
class Layout:
    """A map parsed and simulated independently of otsafe."""

    def __init__(self, text: str) -> None:
        lines = [line for line in text.strip().splitlines() if line]
        self.h, self.w = len(lines), len(lines[0])
        self.n = self.h * self.w
        chars = [ch for line in lines for ch in line]
        self.obstacle = np.array([ch == "#" for ch in chars])
        self.start = chars.index("S")
        self.goal = chars.index("G")
        nxt = np.empty((self.n, 4), dtype=np.int64)
        for s in range(self.n):
            r, c = divmod(s, self.w)
            for a, (dr, dc) in enumerate(DELTAS):
                rr, cc = r + dr, c + dc
                inside = 0 <= rr < self.h and 0 <= cc < self.w
                nxt[s, a] = (
                    rr * self.w + cc if inside and not self.obstacle[rr * self.w + cc] else s
                )
        self.next = nxt
        self.reachable = self._bfs_from(self.start)

    def _bfs_from(self, origin: int) -> np.ndarray:
        seen = np.zeros(self.n, dtype=bool)
        seen[origin] = True
        queue = deque([origin])
        while queue:
            s = queue.popleft()
            for t in self.next[s]:
                if not seen[t]:
                    seen[t] = True
                    queue.append(t)
        return seen

    def goal_distance(self) -> np.ndarray:
        """Shortest-path distance to the goal (inf where it cannot be reached)."""
        dist = np.full(self.n, np.inf)
        dist[self.goal] = 0
        queue = deque([self.goal])
        while queue:
            t = queue.popleft()
            for s in range(self.n):  # moves are symmetric between free cells
                if not self.obstacle[s] and np.isinf(dist[s]) and t in self.next[s]:
                    dist[s] = dist[t] + 1
                    queue.append(s)
        return dist

    def shortest_path_q(self) -> np.ndarray:
        """Q[s, a] = -(distance to the goal after the move): greedy = shortest path, with ties."""
        dist = self.goal_distance()
        dist = np.where(np.isfinite(dist), dist, 0.0)
        return -dist[self.next]

    def restart_stationary(self, policy: np.ndarray) -> np.ndarray:
        """Stationary distribution of the chain in which the goal jumps back to the start,
        on the cells reachable from the start, by a dense eigen-decomposition."""
        cells = np.flatnonzero(self.reachable)
        pos = {int(s): k for k, s in enumerate(cells)}
        p = np.zeros((cells.size, cells.size))
        for s in cells:
            if s == self.goal:
                p[pos[s], pos[self.start]] = 1.0
                continue
            for a in range(4):
                p[pos[s], pos[int(self.next[s, a])]] += policy[s, a]
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        vals, vecs = np.linalg.eig(p.T)
        order = np.argsort(np.abs(vals - 1.0))
        assert abs(vals[order[0]] - 1.0) < 1e-10
        assert abs(vals[order[1]] - 1.0) > 1e-6  # irreducible: eigenvalue 1 is simple
        v = np.real(vecs[:, order[0]])
        v = v / v.sum()
        out = np.zeros(self.n)
        out[cells] = v
        return out

    def truncated_reference(self, policy: np.ndarray, horizon: int) -> np.ndarray:
        """Normalised visits in episodes truncated after ``horizon`` moves (absorbing goal)."""
        p = np.zeros((self.n, self.n))
        for s in range(self.n):
            if s == self.goal:
                p[s, s] = 1.0
            elif self.reachable[s]:
                for a in range(4):
                    p[s, self.next[s, a]] += policy[s, a]
        d = np.zeros(self.n)
        d[self.start] = 1.0
        visits = d.copy()
        for _ in range(horizon):
            d = d @ p
            visits += d
        visits[self.goal] = d[self.goal]  # the goal is entered at most once per episode
        return visits / visits.sum()

    def simulate(
        self, policy: np.ndarray, n_episodes: int, rng: np.random.Generator, cap: int = 100_000
    ) -> np.ndarray:
        """Per-episode visit counts (s_0 and every state entered, goal once), shape (N, n)."""
        counts = np.zeros((n_episodes, self.n), dtype=np.int64)
        state = np.full(n_episodes, self.start)
        counts[:, self.start] = 1
        alive = np.arange(n_episodes)
        cdf = np.cumsum(policy, axis=1)
        cdf[:, -1] = np.inf
        for _ in range(cap):
            if alive.size == 0:
                break
            u = rng.random(alive.size)
            action = (u[:, None] >= cdf[state[alive]]).sum(axis=1)
            new = self.next[state[alive], action]
            counts[alive, new] += 1
            state[alive] = new
            alive = alive[new != self.goal]
        assert alive.size == 0, "simulation cap reached"
        return counts


def _eps_greedy_reference(q: np.ndarray, eps: float) -> np.ndarray:
    greedy = q == q.max(axis=1, keepdims=True)
    return eps / q.shape[1] + (1 - eps) * greedy / greedy.sum(axis=1, keepdims=True)


def _uniform(n: int) -> np.ndarray:
    return np.full((n, 4), 0.25)


# -------------------------------------------------------------- epsilon_greedy_policy
def test_epsilon_greedy_rows_sum_to_one_and_match_definition():
    rng = np.random.default_rng(0)
    q = rng.integers(-3, 3, size=(50, 4)).astype(float)  # many ties
    for eps in (0.0, 0.01, 0.3, 0.55, 1.0):
        pi = epsilon_greedy_policy(q, eps)
        assert pi.shape == (50, 4)
        assert pi.dtype == np.float64
        np.testing.assert_allclose(pi.sum(axis=1), 1.0, rtol=0, atol=1e-15)
        assert np.all(pi >= eps / 4 - 1e-15)
        np.testing.assert_allclose(pi, _eps_greedy_reference(q, eps), rtol=0, atol=1e-15)


def test_epsilon_greedy_ties_split_equally():
    q = np.array([[1.0, 1.0, 0.0, -2.0], [5.0, 5.0, 5.0, 5.0], [0.0, 3.0, 3.0, 3.0]])
    pi = epsilon_greedy_policy(q, 0.4)
    np.testing.assert_allclose(pi[0], [0.1 + 0.3, 0.1 + 0.3, 0.1, 0.1], atol=1e-15)
    np.testing.assert_allclose(pi[1], [0.25] * 4, atol=1e-15)
    np.testing.assert_allclose(pi[2], [0.1, 0.1 + 0.6 / 3, 0.1 + 0.6 / 3, 0.1 + 0.6 / 3])
    np.testing.assert_array_equal(epsilon_greedy_policy(q, 0.0)[0], [0.5, 0.5, 0.0, 0.0])


def test_epsilon_one_is_uniform():
    q = np.random.default_rng(1).normal(size=(30, 4))
    np.testing.assert_array_equal(epsilon_greedy_policy(q, 1.0), np.full((30, 4), 0.25))


def test_epsilon_zero_is_greedy():
    q = np.array([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(epsilon_greedy_policy(q, 0.0), [[0, 1, 0, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan")])
def test_epsilon_greedy_rejects_bad_epsilon(eps):
    with pytest.raises(DistributionError, match="epsilon"):
        epsilon_greedy_policy(np.zeros((3, 4)), eps)


def test_epsilon_greedy_rejects_non_table():
    with pytest.raises(DistributionError, match="q_values must be 2-D"):
        epsilon_greedy_policy(np.zeros(4), 0.1)


# ------------------------------------------------------------- Monte-Carlo references
def _assert_matches_simulation(layout: Layout, exact: np.ndarray, counts: np.ndarray) -> None:
    """Ratio estimator sum(V) / sum(L) with a delta-method standard error per cell."""
    n_ep = counts.shape[0]
    lengths = counts.sum(axis=1)
    emp = counts.sum(axis=0) / lengths.sum()
    resid = counts - emp[None, :] * lengths[:, None]
    se = resid.std(axis=0, ddof=1) / (np.sqrt(n_ep) * lengths.mean())
    # 5 standard errors per cell (a false alarm has probability ~1e-4 over all cells), plus a
    # floor of 10 visits for cells so rarely visited that their sample SE is itself unreliable.
    # (Over 10 simulation seeds the largest |error| / tol seen was 0.8.)
    tol = 5.0 * se + 10.0 / lengths.sum()
    assert np.all(np.abs(emp - exact) <= tol), np.max(np.abs(emp - exact) / tol)
    # Never-visited cells are exactly those with zero mass.
    np.testing.assert_array_equal(counts.sum(axis=0) == 0, exact == 0)
    # Expected states per episode = 1 / P^pi(goal) (the goal is entered once per episode).
    mean_len = lengths.mean()
    se_len = lengths.std(ddof=1) / np.sqrt(n_ep)
    assert abs(mean_len - 1.0 / exact[layout.goal]) <= 5.0 * se_len


@pytest.mark.parametrize("eps", [0.3, 0.6])
def test_visits_match_monte_carlo_small_map(eps):
    layout = Layout(SMALL_MAP)
    q = layout.shortest_path_q()
    pi = epsilon_greedy_policy(q, eps)
    exact = policy_state_distribution(parse_map(SMALL_MAP), pi, mode="visits")
    counts = layout.simulate(pi, 40_000, np.random.default_rng(int(eps * 100)))
    _assert_matches_simulation(layout, exact, counts)


def test_visits_match_monte_carlo_paper_map():
    layout = Layout(_paper_text())
    rng = np.random.default_rng(42)
    # A perturbed shortest-path Q-table: some greedy actions point the wrong way.
    q = layout.shortest_path_q() + rng.normal(scale=0.6, size=(layout.n, 4))
    pi = epsilon_greedy_policy(q, 0.4)
    exact = policy_state_distribution(GridWorld("paper"), pi)  # default mode="visits"
    counts = layout.simulate(pi, 60_000, rng)  # ~4.2M states, about 0.5 s
    _assert_matches_simulation(layout, exact, counts)


# ------------------------------------------------- dense restart-chain reference (exact)
@pytest.mark.parametrize("text", [SMALL_MAP, POCKET_MAP, "paper", "S.#\n..G"])
@pytest.mark.parametrize("eps", [0.05, 0.35, 0.6, 1.0])
def test_visits_equal_restart_chain_stationary_distribution(text, eps):
    layout = Layout(_paper_text() if text == "paper" else text)
    rng = np.random.default_rng(7)
    q = rng.normal(size=(layout.n, 4))
    pi = epsilon_greedy_policy(q, eps)
    got = policy_state_distribution(load_map(text), pi, mode="visits")
    np.testing.assert_allclose(got, layout.restart_stationary(pi), rtol=1e-9, atol=1e-14)


def test_visits_with_arbitrary_stochastic_policy():
    """Not only epsilon-greedy tables: any row-stochastic policy with full support."""
    layout = Layout(SMALL_MAP)
    rng = np.random.default_rng(8)
    pi = rng.dirichlet(np.ones(4), size=layout.n)
    got = policy_state_distribution(parse_map(SMALL_MAP), pi)
    np.testing.assert_allclose(got, layout.restart_stationary(pi), rtol=1e-10, atol=1e-15)


def test_banded_and_superlu_paths_agree_with_dense_reference(monkeypatch):
    calls = {"banded": 0, "superlu": 0}
    real_banded, real_spsolve = markov_module.solve_banded, markov_module.spla.spsolve

    def banded(*args, **kwargs):
        calls["banded"] += 1
        return real_banded(*args, **kwargs)

    def spsolve(*args, **kwargs):
        calls["superlu"] += 1
        return real_spsolve(*args, **kwargs)

    monkeypatch.setattr(markov_module, "solve_banded", banded)
    monkeypatch.setattr(markov_module.spla, "spsolve", spsolve)

    rng = np.random.default_rng(9)
    for text, path in ((WIDE_MAP, "superlu"), (SMALL_MAP, "banded"), (_paper_text(), "banded")):
        grid = parse_map(text)
        model = ChainModel.from_grid(grid)
        assert (model.bandwidth > 64) == (path == "superlu")
        layout = Layout(text)
        for eps in (0.2, 0.7):
            pi = epsilon_greedy_policy(
                layout.shortest_path_q() + rng.normal(size=(layout.n, 4)), eps
            )
            before = dict(calls)
            got = policy_state_distribution(model, pi)
            assert calls[path] == before[path] + 1
            np.testing.assert_allclose(got, layout.restart_stationary(pi), rtol=1e-9, atol=1e-14)
            # The same result through a GridMap, i.e. a freshly built ChainModel.
            np.testing.assert_allclose(policy_state_distribution(grid, pi), got, rtol=1e-13)


def test_visits_hand_computed_two_cell_map():
    # "SG": only "right" (probability p) leaves the start, and it enters the goal.
    # Visits at S are geometric with mean 1/p, the goal once: P = (1/p, 1) / (1/p + 1).
    for p in (0.25, 0.7, 1.0):
        pi = np.array([[(1 - p) / 3, (1 - p) / 3, p, (1 - p) / 3]] * 2)
        got = policy_state_distribution(parse_map("SG"), pi)
        np.testing.assert_allclose(got, [1 / (1 + p), p / (1 + p)], rtol=1e-14)


def test_greedy_policy_with_ties_hand_computed():
    # Greedy shortest path on an open 3x3 map: ties split 50/50 at every cell with two
    # distance-reducing moves; every episode has 4 moves (5 states).
    layout = Layout("S..\n...\n..G")
    pi = epsilon_greedy_policy(layout.shortest_path_q(), 0.0)
    got = policy_state_distribution(parse_map("S..\n...\n..G"), pi)
    expected = np.array([1.0, 0.5, 0.25, 0.5, 0.5, 0.5, 0.25, 0.5, 1.0]) / 5.0
    np.testing.assert_allclose(got, expected, rtol=1e-13)


def test_greedy_corridor_is_uniform_on_the_path():
    layout = Layout("S....G")
    pi = epsilon_greedy_policy(layout.shortest_path_q(), 0.0)
    np.testing.assert_allclose(policy_state_distribution(parse_map("S....G"), pi), 1 / 6)


# -------------------------------------------------------------------------- truncated
@pytest.mark.parametrize("horizon", [1, 2, 5, 30, 200])
@pytest.mark.parametrize("text", [SMALL_MAP, POCKET_MAP])
def test_truncated_matches_dense_recursion(text, horizon):
    layout = Layout(text)
    pi = epsilon_greedy_policy(np.random.default_rng(horizon).normal(size=(layout.n, 4)), 0.5)
    got = policy_state_distribution(load_map(text), pi, mode="truncated", max_steps=horizon)
    np.testing.assert_allclose(got, layout.truncated_reference(pi, horizon), rtol=1e-10, atol=1e-15)


def test_truncated_default_horizon_is_env_max_steps():
    layout = Layout(SMALL_MAP)
    pi = epsilon_greedy_policy(layout.shortest_path_q(), 0.8)
    env = GridWorld(SMALL_MAP, max_steps=3)
    got = policy_state_distribution(env, pi, mode="truncated")
    np.testing.assert_allclose(got, layout.truncated_reference(pi, 3), rtol=1e-12)
    assert not np.allclose(got, layout.truncated_reference(pi, 4))


def test_truncated_max_steps_one_hand_computed():
    # "SG", right with probability 0.7: one move; S counted at t = 0 and (w.p. 0.3) at t = 1,
    # the goal w.p. 0.7. Total mass 2.
    pi = np.array([[0.1, 0.1, 0.7, 0.1]] * 2)
    got = policy_state_distribution(parse_map("SG"), pi, mode="truncated", max_steps=1)
    np.testing.assert_allclose(got, [1.3 / 2, 0.7 / 2], rtol=1e-14)
    # "S.\n.G", uniform: from (0,0) up/left bump (stay), down/right move; the goal is 2 away.
    got = policy_state_distribution(parse_map("S.\n.G"), _uniform(4), mode="truncated", max_steps=1)
    np.testing.assert_allclose(got, [0.75, 0.125, 0.125, 0.0], rtol=1e-14, atol=0)


def test_truncated_converges_to_visits():
    layout = Layout(_paper_text())
    pi = epsilon_greedy_policy(layout.shortest_path_q(), 0.5)
    grid = load_map("paper")
    visits = policy_state_distribution(grid, pi, mode="visits")
    errors = [
        np.abs(policy_state_distribution(grid, pi, mode="truncated", max_steps=t) - visits).sum()
        for t in (10, 100, 1000)
    ]
    assert errors[0] > errors[1] > errors[2]
    long = policy_state_distribution(grid, pi, mode="truncated", max_steps=1_000_000)
    np.testing.assert_allclose(long, visits, rtol=1e-9, atol=1e-15)


# ------------------------------------------------------------------- output invariants
@pytest.mark.parametrize("mode", ["visits", "truncated"])
@pytest.mark.parametrize("text", [POCKET_MAP, "paper", WIDE_MAP])
def test_output_is_a_distribution_zero_on_obstacles_and_unreachable_cells(text, mode):
    layout = Layout(_paper_text() if text == "paper" else text)
    pi = epsilon_greedy_policy(np.random.default_rng(3).normal(size=(layout.n, 4)), 0.3)
    got = policy_state_distribution(load_map(text), pi, mode=mode, max_steps=50)
    assert got.shape == (layout.n,)
    assert got.dtype == np.float64
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(got >= 0.0)
    np.testing.assert_array_equal(got[layout.obstacle], 0.0)
    np.testing.assert_array_equal(got[~layout.reachable], 0.0)
    if mode == "visits":  # with epsilon > 0 every reachable cell is visited
        assert np.all(got[layout.reachable] > 0)


def test_pocket_cell_is_unreachable_and_gets_zero():
    layout = Layout(POCKET_MAP)
    pocket = 2 * layout.w + 2
    assert not layout.obstacle[pocket]
    assert not layout.reachable[pocket]
    got = policy_state_distribution(parse_map(POCKET_MAP), _uniform(layout.n))
    assert got[pocket] == 0.0


def test_rows_of_obstacles_unreachable_cells_and_goal_are_ignored():
    layout = Layout(POCKET_MAP)
    pi = epsilon_greedy_policy(np.random.default_rng(4).normal(size=(layout.n, 4)), 0.4)
    ref = policy_state_distribution(parse_map(POCKET_MAP), pi)
    junk = pi.copy()
    junk[layout.obstacle] = np.nan
    junk[~layout.reachable] = -1.0
    junk[layout.goal] = 7.0
    np.testing.assert_array_equal(policy_state_distribution(parse_map(POCKET_MAP), junk), ref)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("shape", [(9, 3), (8, 4), (9,), (4, 9), (9, 4, 1)])
def test_wrong_policy_shape_raises(shape):
    with pytest.raises(DistributionError, match=r"policy must have shape \(9, 4\)"):
        policy_state_distribution(parse_map(SMALL_MAP), np.full(shape, 0.25))


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (-0.25, "finite and non-negative"),
        (np.nan, "finite and non-negative"),
        (np.inf, "finite and non-negative"),
        (0.5, "sum to 1"),
        (0.0, "sum to 1"),
    ],
)
@pytest.mark.parametrize("mode", ["visits", "truncated"])
def test_bad_policy_probabilities_raise(value, pattern, mode):
    pi = _uniform(9)
    pi[1, 2] = value  # (0, 1) is a reachable free cell
    with pytest.raises(DistributionError, match=pattern):
        policy_state_distribution(parse_map(SMALL_MAP), pi, mode=mode, max_steps=10)


def test_rows_summing_to_one_within_tolerance_are_accepted():
    pi = _uniform(9)
    pi[0] *= 1 + 1e-12
    got = policy_state_distribution(parse_map(SMALL_MAP), pi)
    assert got.sum() == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore::scipy.sparse.linalg.MatrixRankWarning")
@pytest.mark.parametrize("text", [SMALL_MAP, WIDE_MAP])
def test_greedy_policy_stuck_at_a_wall_raises_chain_error(text):
    # Greedy "up" everywhere: the agent bumps into the top wall forever, never reaching the goal.
    layout = Layout(text)
    q = np.zeros((layout.n, 4))
    q[:, 0] = 1.0
    pi = epsilon_greedy_policy(q, 0.0)
    with pytest.raises(ChainError, match="never reaches the goal"):
        policy_state_distribution(load_map(text), pi, mode="visits")
    # Truncated episodes are finite: well defined, and all mass at the start.
    got = policy_state_distribution(load_map(text), pi, mode="truncated", max_steps=20)
    assert got[layout.start] == pytest.approx(1.0)


def test_greedy_policy_cycling_between_two_cells_raises_chain_error():
    layout = Layout(SMALL_MAP)
    q = np.zeros((layout.n, 4))
    q[layout.start, 2] = 1.0  # S -> right
    q[layout.start + 1, 3] = 1.0  # (0, 1) -> left, back to S
    pi = epsilon_greedy_policy(q, 0.0)
    with pytest.raises(ChainError):
        policy_state_distribution(parse_map(SMALL_MAP), pi)


def test_policy_trapped_in_top_row_raises_chain_error():
    # On the top row only up (bump), right and left have mass: the agent never leaves the row
    # and never reaches the goal, so the expected visits per episode are infinite.
    pi = _uniform(9)
    pi[:3] = [0.1, 0.0, 0.2, 0.7]
    with pytest.raises(ChainError):
        policy_state_distribution(parse_map("S..\n...\n..G"), pi)


def test_trap_in_a_cell_the_policy_never_visits_is_harmless():
    # S -> right -> right -> down -> down = G, deterministic: 5 states, 1/5 each. Cell (1, 0)
    # loops forever ("left" into the wall), but the policy never goes there from the start.
    pi = np.zeros((9, 4))
    pi[:, 2] = 1.0
    pi[[2, 5]] = [0.0, 1.0, 0.0, 0.0]
    pi[3] = [0.0, 0.0, 0.0, 1.0]
    got = policy_state_distribution(parse_map("S..\n...\n..G"), pi)
    np.testing.assert_allclose(got, [0.2, 0.2, 0.2, 0, 0, 0.2, 0, 0, 0.2], atol=1e-15)


def test_truncated_without_max_steps_raises():
    pi = _uniform(9)
    with pytest.raises(ChainError, match="max_steps"):
        policy_state_distribution(parse_map(SMALL_MAP), pi, mode="truncated")
    with pytest.raises(ChainError, match="max_steps"):
        policy_state_distribution(parse_map(SMALL_MAP), pi, mode="truncated", max_steps=0)


@pytest.mark.parametrize("mode", ["stationary", "VISITS", ""])
def test_unknown_mode_raises(mode):
    with pytest.raises(ChainError, match="unknown state-distribution mode"):
        policy_state_distribution(parse_map(SMALL_MAP), _uniform(9), mode=mode)


# ------------------------------------------------------------- large maps (issue: P^pi at scale)
def _open_grid(h: int, w: int, obstacle_seed: int | None = None):
    """An H x W GridMap, start (0, 0), goal (H-1, W-1); optionally ~20% rectangular obstacles."""
    from otsafe.envs.gridmap import GridMap

    obstacles = np.zeros((h, w), dtype=bool)
    if obstacle_seed is not None:
        rng = np.random.default_rng(obstacle_seed)
        while obstacles.mean() < 0.2:
            rh, rw = rng.integers(1, 6, size=2)
            r, c = rng.integers(0, h), rng.integers(0, w)
            obstacles[r : r + rh, c : c + rw] = True
        obstacles[:2, :2] = False
        obstacles[-2:, -2:] = False
    return GridMap(obstacles=obstacles, start=(0, 0), goal=(h - 1, w - 1))


def _goal_q(grid) -> np.ndarray:
    """Q[s, a] = -(shortest-path distance to the goal after the move), by SciPy's BFS."""
    from scipy.sparse import csgraph, csr_array

    nxt, n = grid.transitions.next_state, grid.n_cells
    src = np.repeat(np.arange(n), 4)
    keep = ~grid.obstacles.ravel()[src] & (src != nxt.ravel())
    adj = csr_array((np.ones(keep.sum()), (src[keep], nxt.ravel()[keep])), shape=(n, n))
    dist = csgraph.shortest_path(adj, directed=False, unweighted=True, indices=grid.goal_index)
    return -np.where(np.isfinite(dist), dist, 0.0)[nxt]


def _noisy_goal_policy(grid, eps: float, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return epsilon_greedy_policy(_goal_q(grid) + noise * rng.normal(size=(grid.n_cells, 4)), eps)


@pytest.mark.parametrize("obstacle_seed", [None, 3])
@pytest.mark.parametrize("eps", [1.0, 0.2])
def test_lu_solver_agrees_with_banded_and_spsolve_on_80x80(obstacle_seed, eps):
    grid = _open_grid(80, 80, obstacle_seed)
    model = ChainModel.from_grid(grid)
    assert model.bandwidth > 64  # "auto" picks "lu" here
    assert model.transient.size > 4096
    pi = _noisy_goal_policy(grid, eps, seed=11)
    got = model.state_distribution(pi)
    info = model.last_solve
    assert info is not None
    assert (info.mode, info.method, info.device) == ("visits", "lu", "numpy")
    assert info.residual <= 1e-10
    # (The banded LU of a width-80 band is the slow one, so it is checked on the open map only.)
    for solver in ("spsolve", "banded") if obstacle_seed is None else ("spsolve",):
        ref = model.state_distribution(pi, solver=solver)
        assert model.last_solve is not None
        assert model.last_solve.method == solver
        assert np.abs(got - ref).sum() <= 1e-11
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-16)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(got[grid.obstacles.ravel()], 0.0)


def test_auto_solver_keeps_the_small_map_paths():
    pi_for = lambda grid: _uniform(grid.n_cells)  # noqa: E731
    for grid, method in (
        (load_map("paper"), "banded"),
        (load_map("maze50"), "banded"),
        (parse_map(WIDE_MAP), "spsolve"),
        (_open_grid(70, 70), "lu"),
    ):
        model = ChainModel.from_grid(grid)
        model.state_distribution(pi_for(grid))
        assert model.last_solve is not None
        assert model.last_solve.method == method


def test_lu_solver_on_the_support_of_a_greedy_policy():
    # Greedy shortest path (epsilon = 0, down/right ties): zero-probability actions, so the solve
    # runs on the cells the policy visits (all 4900 here, above the spsolve threshold).
    grid = _open_grid(70, 70)
    model = ChainModel.from_grid(grid)
    pi = epsilon_greedy_policy(_goal_q(grid), 0.0)
    got = model.state_distribution(pi)
    assert model.last_solve is not None
    assert model.last_solve.method == "lu"
    ref = model.state_distribution(pi, solver="spsolve")
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-16)
    # Every episode takes 138 moves: 139 states, one visit to each cell on the way.
    assert got.sum() == pytest.approx(1.0)
    assert got[0] == pytest.approx(1 / 139)


def test_lu_solver_raises_when_the_residual_tolerance_cannot_be_met():
    grid = _open_grid(70, 70)
    with pytest.raises(ChainError, match=r"relative residual .* > tol=1e-300"):
        policy_state_distribution(grid, _uniform(grid.n_cells), tol=1e-300)


def test_nested_dissection_is_a_postorder_permutation():
    grid = _open_grid(37, 23, obstacle_seed=5)
    model = ChainModel.from_grid(grid)
    order = model._nd_order()
    np.testing.assert_array_equal(np.sort(order), np.arange(model.transient.size))
    np.testing.assert_array_equal(model._nd_order(), order)  # cached
    # The top separator is numbered last: all cells of the sparsest row in the middle half of the
    # 37 rows (9..27; ties go to the row nearest the middle, 18).
    rows = model.transient // grid.shape[1]
    assert rows.min() == 0
    assert rows.max() == 36
    per_row = np.bincount(rows, minlength=37)
    window = np.arange(9, 28)
    best = window[np.lexsort((np.abs(window - 18), per_row[window]))[0]]
    n_sep = int(per_row[best])
    assert np.all(rows[order[-n_sep:]] == best)
    assert not np.any(rows[order[:-n_sep]] == best)
    assert per_row[best] < per_row[18]  # obstacles made a sparser row than the middle one


def test_large_map_truncated_recursion_matches_a_reference():
    grid = _open_grid(70, 70, obstacle_seed=8)
    model = ChainModel.from_grid(grid)
    pi = _noisy_goal_policy(grid, 0.3)
    got = model.state_distribution(pi, mode="truncated", max_steps=300)
    # Reference: the recursion on the full H*W grid; the goal row is empty, so the mass entering
    # the goal is counted once (an arrival) and then leaves the chain.
    import scipy.sparse as sp

    nxt, n = grid.transitions.next_state, grid.n_cells
    free = np.flatnonzero(~grid.obstacles.ravel() & (np.arange(n) != grid.goal_index))
    p_t = sp.csr_array((pi[free].ravel(), (nxt[free].ravel(), np.repeat(free, 4))), shape=(n, n))
    d = np.zeros(n)
    d[grid.start_index] = 1.0
    visits = d.copy()
    for _ in range(300):
        d = p_t @ d
        visits += d
    np.testing.assert_allclose(got, visits / visits.sum(), rtol=1e-10, atol=1e-18)


# ------------------------------------------------------------------------------ torch path
@pytest.fixture
def torch_single_thread():
    """Torch CPU ops on one thread: tiny sparse mat-vecs only lose to thread synchronisation
    (badly so on a busy 2-core machine). Restored afterwards."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("text", "eps", "noise", "method"),
    [
        ("paper", 0.3, 0.3, "series"),
        ("paper", 0.4, 1.0, "series+bicgstab"),  # a noisy greedy field: slower to the goal
        ("paper", 1.0, 0.0, "series+bicgstab"),  # uniform: diffusive, the series alone is slow
        ("obstacles30", 0.2, 0.3, "series"),
        ("obstacles30", 1.0, 0.0, "series+bicgstab"),
    ],
)
@pytest.mark.usefixtures("torch_single_thread")
def test_torch_cpu_visits_agree_with_numpy(text, eps, noise, method):
    grid = load_map(text) if text == "paper" else _open_grid(30, 30, obstacle_seed=2)
    model = ChainModel.from_grid(grid)
    pi = _noisy_goal_policy(grid, eps, seed=5, noise=noise)
    ref = model.state_distribution(pi)
    got = model.state_distribution(pi, device="cpu", tol=1e-12)
    info = model.last_solve
    assert info is not None
    assert (info.method, info.device) == (method, "cpu")
    assert info.residual <= 1e-12
    assert got.dtype == np.float64
    assert np.abs(got - ref).sum() <= 1e-10
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-14)
    # The default tolerance, 1e-10, also agrees to about 1e-10 relative.
    torch = pytest.importorskip("torch")
    loose = model.state_distribution(pi, device=torch.device("cpu"))
    assert np.abs(loose - ref).sum() <= 1e-9


@pytest.mark.parametrize("horizon", [1, 7, 300])
@pytest.mark.usefixtures("torch_single_thread")
def test_torch_cpu_truncated_agrees_with_numpy(horizon):
    grid = _open_grid(30, 30, obstacle_seed=4)
    model = ChainModel.from_grid(grid)
    pi = _noisy_goal_policy(grid, 0.25)
    ref = model.state_distribution(pi, mode="truncated", max_steps=horizon)
    got = model.state_distribution(pi, mode="truncated", max_steps=horizon, device="cpu")
    assert model.last_solve is not None
    assert model.last_solve.method == "recursion"
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-18)


@pytest.mark.usefixtures("torch_single_thread")
def test_torch_cpu_policies_with_zero_probability_actions():
    # Deterministic detour (see test_trap_in_a_cell_the_policy_never_visits_is_harmless).
    pi = np.zeros((9, 4))
    pi[:, 2] = 1.0
    pi[[2, 5]] = [0.0, 1.0, 0.0, 0.0]
    pi[3] = [0.0, 0.0, 0.0, 1.0]
    got = policy_state_distribution(parse_map("S..\n...\n..G"), pi, device="cpu")
    np.testing.assert_allclose(got, [0.2, 0.2, 0.2, 0, 0, 0.2, 0, 0, 0.2], atol=1e-15)
    # A trap the policy reaches: same ChainError as the NumPy path.
    q = np.zeros((9, 4))
    q[:, 0] = 1.0
    with pytest.raises(ChainError, match="never reaches the goal"):
        policy_state_distribution(parse_map(SMALL_MAP), epsilon_greedy_policy(q, 0.0), device="cpu")


@pytest.mark.usefixtures("torch_single_thread")
def test_torch_visits_report_an_exhausted_iteration_budget():
    grid = _open_grid(30, 30)
    with pytest.raises(ChainError, match=r"relative residual .* after \d+ matrix-vector products"):
        policy_state_distribution(grid, _uniform(grid.n_cells), device="cpu", max_iter=40)


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA device (torch.cuda)"
)
@pytest.mark.parametrize("eps", [1.0, 0.2])
def test_cuda_agrees_with_numpy(eps):
    grid = _open_grid(60, 60, obstacle_seed=1)
    model = ChainModel.from_grid(grid)
    pi = _noisy_goal_policy(grid, eps)
    ref = model.state_distribution(pi)
    got = model.state_distribution(pi, device="cuda", tol=1e-12)
    assert model.last_solve is not None
    assert model.last_solve.device.startswith("cuda")
    assert np.abs(got - ref).sum() <= 1e-10
    ref_t = model.state_distribution(pi, mode="truncated", max_steps=150)
    got_t = model.state_distribution(pi, mode="truncated", max_steps=150, device="cuda")
    np.testing.assert_allclose(got_t, ref_t, rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"device": "gpu"}, r"device must be 'cpu', 'cuda'.* got 'gpu'"),
        ({"device": "cuda:x"}, r"device must be 'cpu', 'cuda'.* got 'cuda:x'"),
        ({"device": 3.5}, r"device must be 'cpu', 'cuda'.* got 3.5"),
        ({"device": "meta"}, r"device must be a CPU or CUDA device, got 'meta'"),
        ({"solver": "cholesky"}, r"solver must be 'auto', 'banded', 'spsolve' or 'lu'"),
        ({"solver": "lu", "device": "cpu"}, r"solver='lu' .* device='cpu'"),
        ({"tol": 0.0}, r"tol must be a number in \(0, 1\)"),
        ({"tol": float("nan")}, r"tol must be a number in \(0, 1\)"),
        ({"max_iter": 0}, r"max_iter must be a positive integer"),
        ({"max_iter": 2.5}, r"max_iter must be a positive integer"),
    ],
)
def test_bad_solver_arguments_raise(kwargs, pattern):
    with pytest.raises(ChainError, match=pattern):
        policy_state_distribution(parse_map(SMALL_MAP), _uniform(9), **kwargs)


def test_unavailable_cuda_raises_a_named_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    with pytest.raises(ChainError, match=r"device='cuda' was requested but no CUDA device"):
        policy_state_distribution(parse_map(SMALL_MAP), _uniform(9), device="cuda")


@pytest.mark.parametrize("device", [None, "cpu"])
@pytest.mark.parametrize("mode", ["visits", "truncated"])
@pytest.mark.usefixtures("torch_single_thread")
def test_large_map_paths_are_deterministic(device, mode):
    grid = _open_grid(70, 70, obstacle_seed=6)
    pi = _noisy_goal_policy(grid, 0.5)
    model = ChainModel.from_grid(grid)
    first = model.state_distribution(pi, mode=mode, max_steps=200, device=device)
    again = model.state_distribution(pi, mode=mode, max_steps=200, device=device)
    fresh = ChainModel.from_grid(grid).state_distribution(
        pi, mode=mode, max_steps=200, device=device
    )
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, fresh)
