"""Tests of the tabular agents: Q-learning against value iteration, Eq. 5's once-per-transition
bonus, equivalence with a literal Gymnasium implementation, determinism and bad input."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import ot
import pytest

from otsafe.agents import OTQLearning, QLearning
from otsafe.envs import GridWorld
from otsafe.errors import ConfigError
from otsafe.markov import policy_state_distribution
from otsafe.transport import sqeuclidean_cost

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from literal_otq import run_literal

TINY = "S..#\n.#..\n...G\n"


def value_iteration(env: GridWorld, gamma: float, tol: float = 1e-13) -> np.ndarray:
    """Q* of the deterministic gridworld by value iteration (independent of the agent code)."""
    t = env.transitions
    q = np.zeros_like(t.reward)
    while True:
        v = np.where(t.terminal, 0.0, q.max(axis=1))
        new = t.reward + gamma * np.where(t.terminal[t.next_state], 0.0, v[t.next_state])
        if np.abs(new - q).max() < tol:
            return new
        q = new


def test_q_learning_reaches_value_iteration_optimum() -> None:
    env = GridWorld(TINY, max_steps=200)
    gamma = 0.9
    agent = QLearning(
        env,
        alpha=0.5,
        gamma=gamma,
        epsilon_start=0.5,
        epsilon_decay=1.0,
        epsilon_min=0.5,
        seed=3,
        track_w2=False,
    )
    agent.train(3000)
    q_star = value_iteration(env, gamma)
    free = ~env.grid.obstacles.ravel() & ~env.transitions.terminal
    np.testing.assert_allclose(agent.q_table[free], q_star[free], atol=1e-6)
    # and the greedy policy is optimal everywhere
    assert np.all(
        q_star[free].max(axis=1)
        == q_star[free][np.arange(free.sum()), agent.q_table[free].argmax(axis=1)]
    )


def test_bonus_is_paid_once_per_transition_and_zeroed() -> None:
    env = GridWorld("paper", max_steps=300)
    agent = OTQLearning(env, beta=1000.0, seed=1)
    first = agent.run_episode()
    assert first.bonus == 0.0  # C is zero during the first episode
    before = agent.bonus_table()
    assert before.sum() > 0
    agent._update_plan = lambda: math.nan  # type: ignore[method-assign]  # freeze the plan
    metrics = agent.run_episode()
    after = agent.bonus_table()
    changed = before != after
    assert np.all(after[changed] == 0.0)  # line 9: C(s, s') <- 0
    assert metrics.bonus == pytest.approx(before[changed].sum(), rel=1e-12)
    assert metrics.shaped_return == pytest.approx(metrics.env_return + metrics.bonus, rel=1e-12)
    # A second episode with the frozen, partly zeroed table pays only untouched transitions.
    again = agent.run_episode()
    assert again.bonus <= after.sum() + 1e-12


def test_bonus_matches_plan_times_cost() -> None:
    env = GridWorld("paper", max_steps=300)
    agent = OTQLearning(env, beta=50.0, seed=2, ot_method="dense")
    agent.run_episode()
    plan = agent.last_plan
    assert plan is not None
    dense = plan.dense()
    support = np.flatnonzero(env.grid.reachable.ravel())
    pos = {cell: k for k, cell in enumerate(support)}
    cost = sqeuclidean_cost(env.grid.coordinates[support])
    bonus = agent.bonus_table()
    for s in support[::7]:
        for a in range(4):
            s2 = env.transitions.next_state[s, a]
            expected = 50.0 * dense[pos[s], pos[s2]] * cost[pos[s], pos[s2]]
            assert bonus[s, a] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_state_distribution_and_w2_follow_algorithm_order() -> None:
    env = GridWorld("paper", max_steps=300)
    agent = OTQLearning(env, beta=100.0, seed=4)
    for _ in range(3):
        m = agent.run_episode()
    # P^pi is computed for the updated policy with the epsilon of the episode (line 11), then
    # epsilon decays (line 13).
    from otsafe.markov import epsilon_greedy_policy

    expected = policy_state_distribution(env, epsilon_greedy_policy(agent.q_table, m.epsilon))
    np.testing.assert_allclose(agent.last_state_distribution, expected, atol=1e-15)
    assert agent.epsilon == pytest.approx(m.epsilon * 0.99)
    support = np.flatnonzero(env.grid.reachable.ravel())
    cost = sqeuclidean_cost(env.grid.coordinates[support])
    w2_pot = math.sqrt(ot.emd2(expected[support], env.risk_distribution[support], cost))
    assert m.w2 == pytest.approx(w2_pot, rel=1e-10)


@pytest.mark.parametrize("beta", [0.0, 100.0])
def test_fast_loop_matches_literal_gymnasium_implementation(beta: float) -> None:
    literal = run_literal(seed=5, episodes=25, beta=beta, max_steps=300)
    agent = QLearning(GridWorld("paper", max_steps=300), beta=beta, seed=5, ot_method="dense")
    fast = agent.train(25)
    for lit, m in zip(literal, fast, strict=False):
        for key in ("length", "collisions", "risky_visits", "success"):
            assert lit[key] == getattr(m, key)
        assert lit["env_return"] == m.env_return
        assert lit["bonus"] == pytest.approx(m.bonus, rel=1e-12, abs=1e-15)
        assert lit["w2"] == pytest.approx(m.w2, rel=1e-10)


@pytest.mark.parametrize("ot_method", ["tripartite", "dense"])
def test_same_seed_same_metrics(ot_method: str) -> None:
    def run(seed: int) -> list[dict[str, object]]:
        agent = OTQLearning(GridWorld("paper", max_steps=200), seed=seed, ot_method=ot_method)  # type: ignore[arg-type]
        return [m.as_dict() for m in agent.train(15)]

    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize("mode", ["truncated", "empirical"])
def test_other_state_distribution_modes_run(mode: str) -> None:
    env = GridWorld("paper", max_steps=150)
    agent = OTQLearning(env, seed=0, state_distribution=mode)  # type: ignore[arg-type]
    metrics = agent.train(4)
    assert all(np.isfinite(m.w2) for m in metrics)
    p = agent.last_state_distribution
    assert p is not None
    assert p.sum() == pytest.approx(1.0)


def test_q_learning_pays_no_bonus() -> None:
    agent = QLearning(GridWorld("paper", max_steps=200), seed=0)
    for m in agent.train(5):
        assert m.bonus == 0.0
        assert m.shaped_return == m.env_return


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"gamma": -0.1}, "gamma"),
        ({"gamma": float("nan")}, "gamma"),
        ({"epsilon_start": 2.0}, "epsilon_start"),
        ({"epsilon_decay": 0.0}, "epsilon_decay"),
        ({"epsilon_min": -0.5}, "epsilon_min"),
        ({"beta": -1.0}, "beta"),
        ({"state_distribution": "stationary"}, "state_distribution"),
        ({"ot_method": "network-simplex"}, "ot_method"),
        ({"epsilon_min": 0.0, "epsilon_decay": 0.5}, "epsilon_min > 0"),
    ],
)
def test_bad_hyperparameters_raise_config_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        QLearning(GridWorld("paper"), **kwargs)  # type: ignore[arg-type]


def test_otq_needs_positive_beta_and_a_gridworld() -> None:
    with pytest.raises(ConfigError, match="beta"):
        OTQLearning(GridWorld("paper"), beta=0.0)
    with pytest.raises(ConfigError, match="GridWorld"):
        QLearning("paper")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="episodes"):
        QLearning(GridWorld("paper")).train(-1)
