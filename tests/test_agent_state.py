"""Checkpoint/resume of the agents: ``state_dict`` -> ``torch.save`` -> ``torch.load`` ->
``load_state_dict`` into a fresh agent continues bit for bit like the uninterrupted agent.

Each case trains agent A, saves its state through a real file, loads it into a fresh agent B built
with the same arguments, trains both on, and compares every metric exactly. A fresh agent C that
loads nothing must differ, so the comparison can fail.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from otsafe.agents.ddpg import DDPGAgent, ReplayBuffer
from otsafe.agents.tabular import OTQLearning, QLearning
from otsafe.envs.gridmap import load_map
from otsafe.envs.gridworld import GridWorld
from otsafe.errors import ConfigError
from otsafe.experiments import dsrl_runner
from otsafe.experiments.config import resolve_config
from otsafe.experiments.dsrl_config import DSRLConfig
from otsafe.transport import GridSinkhornPlan

TINY = "S..#\n.#..\n...G\n"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Small torch ops on a shared 2-core machine are much slower with 2 threads; the number of
    # threads can also change the last bits of reductions, so both runs must use the same.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_and_load(state: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Round trip through a real checkpoint file, as the runner does."""
    path = tmp_path / "agent.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=False)
    assert isinstance(loaded, dict)
    return loaded


# ------------------------------------------------------------------------------ tabular agents
def paper_otq(**kwargs: Any) -> Callable[[], QLearning]:
    def build() -> QLearning:
        return OTQLearning(GridWorld("paper", max_steps=200), beta=1000.0, seed=3, **kwargs)

    return build


def tiny_converged(ot_method: str) -> Callable[[], QLearning]:
    """A constant epsilon on a tiny map: from episode 9 the greedy policy stops changing, and
    the agent reuses P^pi and the plan of the previous episode (its ``_last_policy`` check)."""

    def build() -> QLearning:
        return OTQLearning(
            GridWorld(TINY, max_steps=50),
            beta=1.0,
            seed=3,
            alpha=0.5,
            epsilon_start=0.1,
            epsilon_decay=1.0,
            epsilon_min=0.1,
            ot_method=ot_method,
            ot_epsilon=1.0,
        )

    return build


# name: (agent factory, episodes before the checkpoint)
TABULAR_CASES: dict[str, tuple[Callable[[], QLearning], int]] = {
    "otq-tripartite": (paper_otq(ot_method="tripartite"), 3),
    "otq-dense": (paper_otq(ot_method="dense"), 3),
    "otq-multiscale": (paper_otq(ot_method="multiscale"), 3),
    "otq-sinkhorn": (paper_otq(ot_method="sinkhorn", ot_epsilon=1.0), 3),
    # A looser tolerance, at which the warm start from the saved plan succeeds (at 1e-3 it needs
    # more than its 25 iterations and the solver starts afresh).
    "otq-sinkhorn-warm": (paper_otq(ot_method="sinkhorn", ot_epsilon=1.0, ot_tol=1e-2), 3),
    "otq-sinkhorn-unchanged-policy": (tiny_converged("sinkhorn"), 10),
    "otq-tripartite-unchanged-policy": (tiny_converged("tripartite"), 10),
    "otq-truncated": (paper_otq(ot_method="tripartite", state_distribution="truncated"), 3),
    "otq-empirical": (paper_otq(ot_method="tripartite", state_distribution="empirical"), 3),
    "q-learning": (lambda: QLearning(GridWorld("paper", max_steps=200), beta=0.0, seed=3), 3),
    "q-learning-no-w2": (
        lambda: QLearning(GridWorld("paper", max_steps=200), beta=0.0, seed=3, track_w2=False),
        3,
    ),
}


def metrics(agent: QLearning, episodes: int) -> list[dict[str, Any]]:
    return [m.as_dict() for m in agent.train(episodes)]


def same_metrics(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Exact equality; NaN (W2 when it is not tracked) equals NaN."""
    if len(a) != len(b):
        return False
    for row_a, row_b in zip(a, b, strict=True):
        for key in row_a:
            x, y = row_a[key], row_b[key]
            if not (x == y or (isinstance(x, float) and np.isnan(x) and np.isnan(y))):
                return False
    return True


@pytest.mark.parametrize("case", list(TABULAR_CASES))
def test_tabular_resume_is_exact(case: str, tmp_path: Path) -> None:
    build, before = TABULAR_CASES[case]
    a = build()
    first = metrics(a, before)
    state = save_and_load(a.state_dict(), tmp_path)
    assert state["version"] == 1
    assert state["kind"] == "otsafe.agents.QLearning"
    assert state["episodes_done"] == before

    b = build()
    b.load_state_dict(state)
    assert b.episodes_done == before
    assert b.epsilon == a.epsilon
    np.testing.assert_array_equal(b.q_table, a.q_table)
    np.testing.assert_array_equal(b.bonus_table(), a.bonus_table())
    for name in ("last_state_distribution", "_last_policy"):
        mine, theirs = getattr(a, name), getattr(b, name)
        assert (mine is None) == (theirs is None), name
        if mine is not None:
            np.testing.assert_array_equal(theirs, mine)

    rest_a, rest_b = metrics(a, 4), metrics(b, 4)
    assert same_metrics(rest_a, rest_b), (rest_a, rest_b)
    np.testing.assert_array_equal(b.q_table, a.q_table)
    np.testing.assert_array_equal(b.bonus_table(), a.bonus_table())
    if a.last_state_distribution is None:
        assert b.last_state_distribution is None
    else:
        np.testing.assert_array_equal(b.last_state_distribution, a.last_state_distribution)
    assert (a.last_plan is None) == (b.last_plan is None)
    if a.last_plan is not None and b.last_plan is not None:
        assert b.last_plan.wasserstein(2) == a.last_plan.wasserstein(2)

    # The comparison can fail: the same agent without the state continues differently.
    c = build()
    rest_c = metrics(c, 4)
    assert not same_metrics(rest_a, rest_c)
    # And the whole uninterrupted run is what the resumed one reproduces.
    assert same_metrics(first + rest_a, metrics(build(), before + 4))


def test_sinkhorn_state_keeps_the_solver_adaptation_and_the_plan_on_the_solver(
    tmp_path: Path,
) -> None:
    """The Sinkhorn axis passes adapt their block sizes from solve to solve, and the block size
    changes the last bits of the plan: that state is saved, and the restored plan uses the
    loading agent's solver (so figures drawn from it also move that solver's state as before)."""
    build = TABULAR_CASES["otq-sinkhorn"][0]
    a = build()
    a.train(3)
    passes = a.state_dict()["sinkhorn_passes"]
    assert any(p[0] != 8 for pair in passes.values() for p in pair)  # blocks moved off the default
    b = build()
    b.load_state_dict(save_and_load(a.state_dict(), tmp_path))
    assert b.state_dict()["sinkhorn_passes"] == passes
    assert isinstance(b.last_plan, GridSinkhornPlan)
    assert isinstance(b._ot, type(a._ot))
    assert b.last_plan._softmin is b._ot._softmin  # type: ignore[union-attr]
    assert "cost" in b.last_plan.__dict__  # the cached <T, c> is restored, not recomputed
    assert isinstance(a.last_plan, GridSinkhornPlan)
    for name in ("f", "g", "log_a", "log_b"):
        assert torch.equal(getattr(b.last_plan, name), getattr(a.last_plan, name))


@pytest.mark.parametrize("ot_method", ["sinkhorn", "tripartite"])
def test_resumed_agent_reuses_the_plan_of_an_unchanged_policy(
    ot_method: str, tmp_path: Path
) -> None:
    """Where the uninterrupted agent skips the solves (same policy as after the last episode),
    the resumed one does too (a re-solve, e.g. a warm-started Sinkhorn, could differ in the last
    bits)."""
    build = tiny_converged(ot_method)
    a = build()
    a.train(10)
    state = save_and_load(a.state_dict(), tmp_path)
    b = build()
    b.load_state_dict(state)
    plan_a, plan_b = a.last_plan, b.last_plan
    assert same_metrics(metrics(a, 1), metrics(b, 1))
    assert a.last_plan is plan_a  # the uninterrupted agent reused its plan ...
    assert b.last_plan is plan_b  # ... and so did the resumed one


def test_tabular_state_is_a_snapshot_and_pickles() -> None:
    a = TABULAR_CASES["otq-tripartite"][0]()
    a.train(2)
    state = a.state_dict()
    q_before = state["q"].copy()
    a.train(2)  # training on does not change a snapshot taken before
    np.testing.assert_array_equal(state["q"], q_before)
    b = TABULAR_CASES["otq-tripartite"][0]()
    b.load_state_dict(pickle.loads(pickle.dumps(state)))
    c = TABULAR_CASES["otq-tripartite"][0]()
    c.load_state_dict(state)  # in memory, twice: the state is not consumed or aliased
    assert same_metrics(metrics(b, 3), metrics(c, 3))
    np.testing.assert_array_equal(state["q"], q_before)


# ----------------------------------------------------------------------------------- DDPG
# The quick preset, shrunk so that a case runs in about a second: the save comes after
# learning_starts, so the networks, Adam's moments and the replay sampler are all in use.
DSRL_SETS = [
    "env.params.max_steps=20",
    "agent.learning_starts=20",
    "agent.batch_size=8",
    "agent.hidden=[16, 16]",
]
SEED = 4


def dsrl_config(preset: str = "dsrl-dubins-quick") -> DSRLConfig:
    config = resolve_config(preset=preset, sets=DSRL_SETS)
    assert isinstance(config, DSRLConfig)
    return config


def episode_seed(k: int) -> int:
    """Per-episode seeds as run_dsrl_job draws them."""
    return int(np.random.SeedSequence([SEED, 100, k]).generate_state(1)[0])


def train_ddpg(env: Any, agent: DDPGAgent, episodes: range) -> list[dict[str, float]]:
    out = []
    for k in episodes:
        m = dsrl_runner.run_episode(env, agent, episode_seed(k), train=True)
        out.append({key: float(m[key]) for key in dsrl_runner.TRAIN_COLUMNS})
    return out


def parameters_equal(a: DDPGAgent, b: DDPGAgent) -> bool:
    nets = ("actor", "critic", "actor_target", "critic_target")
    return all(
        torch.equal(x, y)
        for net in nets
        for x, y in zip(
            getattr(a, net).state_dict().values(),
            getattr(b, net).state_dict().values(),
            strict=True,
        )
    )


@pytest.mark.parametrize("method", ["ddpg-cbf", "dsrl"])
def test_ddpg_resume_is_exact(method: str, tmp_path: Path) -> None:
    config = dsrl_config()
    env_a = dsrl_runner.make_env(config)
    a = dsrl_runner.make_agent(config, env_a, method, SEED)
    train_ddpg(env_a, a, range(2))
    assert a.buffer.size > config.agent.learning_starts  # updates have happened
    assert a.actor_opt.state  # Adam's moments exist
    state = save_and_load(a.state_dict(), tmp_path)
    assert state["version"] == 1
    assert state["kind"] == "otsafe.agents.DDPGAgent"
    assert state["buffer"]["data"]["obs"].shape[0] == a.buffer.size  # only the filled rows

    torch.rand(5)  # move torch's global generator on; loading must put it back
    env_b = dsrl_runner.make_env(config)
    b = dsrl_runner.make_agent(config, env_b, method, SEED)
    b.load_state_dict(state)
    assert torch.equal(torch.get_rng_state(), state["torch_rng_state"])
    assert parameters_equal(a, b)
    assert b.steps == a.steps
    assert b.buffer.size == a.buffer.size
    assert b.buffer.pos == a.buffer.pos
    for key, value in a.buffer.data.items():
        np.testing.assert_array_equal(b.buffer.data[key], value)

    rest_a = train_ddpg(env_a, a, range(2, 4))
    rest_b = train_ddpg(env_b, b, range(2, 4))
    assert rest_a == rest_b
    assert parameters_equal(a, b)
    assert b.rng.bit_generator.state == a.rng.bit_generator.state
    assert b.buffer.rng.bit_generator.state == a.buffer.rng.bit_generator.state

    # The comparison can fail: a fresh agent that loads nothing continues differently.
    env_c = dsrl_runner.make_env(config)
    c = dsrl_runner.make_agent(config, env_c, method, SEED)
    rest_c = train_ddpg(env_c, c, range(2, 4))
    assert rest_c != rest_a
    assert not parameters_equal(a, c)


def test_ddpg_state_is_a_snapshot_and_pickles() -> None:
    config = dsrl_config()
    env = dsrl_runner.make_env(config)
    a = dsrl_runner.make_agent(config, env, "ddpg-cbf", SEED)
    train_ddpg(env, a, range(2))
    state = a.state_dict()
    weight = next(iter(state["actor"].values())).clone()
    moments = [v.clone() for v in state["actor_opt"]["state"][0].values()]
    train_ddpg(env, a, range(2, 3))  # training on does not change a snapshot taken before
    assert torch.equal(next(iter(state["actor"].values())), weight)
    assert all(
        torch.equal(x, y)
        for x, y in zip(state["actor_opt"]["state"][0].values(), moments, strict=True)
    )
    envs = [dsrl_runner.make_env(config) for _ in range(2)]
    agents = [dsrl_runner.make_agent(config, e, "ddpg-cbf", SEED) for e in envs]
    agents[0].load_state_dict(pickle.loads(pickle.dumps(state)))
    agents[1].load_state_dict(state)  # in memory, twice over: the state is not aliased
    runs = []
    for e, agent in zip(envs, agents, strict=True):
        torch.set_rng_state(state["torch_rng_state"])
        runs.append(train_ddpg(e, agent, range(2, 3)))
    assert runs[0] == runs[1]
    assert parameters_equal(agents[0], agents[1])
    assert all(
        torch.equal(x, y)
        for x, y in zip(state["actor_opt"]["state"][0].values(), moments, strict=True)
    )


def test_replay_buffer_round_trip_after_wrapping_around(tmp_path: Path) -> None:
    def fresh() -> ReplayBuffer:
        return ReplayBuffer(2, 3, 1, capacity=5, rng=np.random.default_rng(7))

    a = fresh()
    for k in range(8):  # wraps: pos = 3, size = 5
        a.add(obs=[k, k], state=[k, k, k], action=[k], reward=k, next_obs=[k, k], done=0.0)
    a.sample(2)
    b = fresh()
    b.load_state_dict(save_and_load(a.state_dict(), tmp_path))
    assert (b.size, b.pos) == (a.size, a.pos) == (5, 3)
    for key, value in a.data.items():
        np.testing.assert_array_equal(b.data[key], value)
    for _ in range(3):
        batch_a, batch_b = a.sample(4), b.sample(4)
        for key in batch_a:
            np.testing.assert_array_equal(batch_a[key], batch_b[key])
    with pytest.raises(ConfigError, match="capacity 5, this agent's is 6"):
        ReplayBuffer(2, 3, 1, capacity=6, rng=np.random.default_rng(7)).load_state_dict(
            a.state_dict()
        )


# ------------------------------------------------------------------------------- bad input
def test_dubins_state_into_quadrotor_agent_is_a_config_error() -> None:
    config = dsrl_config()
    a = dsrl_runner.make_agent(config, dsrl_runner.make_env(config), "dsrl", SEED)
    quad = dsrl_config("dsrl-quadrotor-quick")
    b = dsrl_runner.make_agent(quad, dsrl_runner.make_env(quad), "dsrl", SEED)
    before = [p.clone() for p in b.actor.parameters()]
    with pytest.raises(ConfigError, match=r"different agent.*obs_dim"):
        b.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(before, b.actor.parameters(), strict=True))


def test_ddpg_bad_states_are_config_errors() -> None:
    config = dsrl_config()
    env = dsrl_runner.make_env(config)
    a = dsrl_runner.make_agent(config, env, "dsrl", SEED)
    train_ddpg(env, a, range(1))
    state = a.state_dict()
    fresh = dsrl_runner.make_agent(config, dsrl_runner.make_env(config), "dsrl", SEED)
    with pytest.raises(ConfigError, match="version"):
        fresh.load_state_dict({**state, "version": 2})
    with pytest.raises(ConfigError, match="QLearning"):
        fresh.load_state_dict(QLearning(GridWorld(TINY)).state_dict())
    with pytest.raises(ConfigError, match="missing buffer"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "buffer"})
    # Other layer sizes: the spec says so before torch would.
    wide = resolve_config(preset="dsrl-dubins-quick", sets=[*DSRL_SETS, "agent.hidden=[8, 8]"])
    assert isinstance(wide, DSRLConfig)
    other = dsrl_runner.make_agent(wide, dsrl_runner.make_env(wide), "dsrl", SEED)
    with pytest.raises(ConfigError, match="hidden"):
        other.load_state_dict(state)
    # Other settings (the safety layer of another method): strict refuses, strict=False loads.
    cbf = dsrl_runner.make_agent(config, dsrl_runner.make_env(config), "ddpg-cbf", SEED)
    with pytest.raises(ConfigError, match=r"other settings.*safety"):
        cbf.load_state_dict(state)
    cbf.load_state_dict(state, strict=False)
    assert parameters_equal(a, cbf)
    # A tensor that does not fit the network: torch's error, as a ConfigError; nothing changes.
    bad = dict(state)
    bad["critic"] = dict(state["critic"])
    key = next(iter(bad["critic"]))
    bad["critic"][key] = torch.zeros(3, 3)
    before = [p.clone() for p in fresh.actor.parameters()]
    with pytest.raises(ConfigError, match="critic does not fit"):
        fresh.load_state_dict(bad)
    assert all(torch.equal(x, y) for x, y in zip(before, fresh.actor.parameters(), strict=True))
    assert fresh.steps == 0
    # A replay buffer of the wrong width.
    bad = dict(state)
    bad["buffer"] = {**state["buffer"], "data": dict(state["buffer"]["data"])}
    bad["buffer"]["data"]["obs"] = bad["buffer"]["data"]["obs"][:, :2]
    with pytest.raises(ConfigError, match=r"replay buffer.*'obs'"):
        fresh.load_state_dict(bad)
    assert fresh.buffer.size == 0


def test_q_table_of_another_map_is_a_config_error() -> None:
    a = OTQLearning(GridWorld("paper", max_steps=200), seed=3)
    a.train(2)
    state = a.state_dict()
    with pytest.raises(ConfigError, match=r"map 'paper'.*different layout"):
        QLearning(GridWorld(TINY)).load_state_dict(state)
    # Same size, one more obstacle: same Q-table shape, still refused.
    text = load_map("paper").obstacles
    rows = ["".join("#" if o else "." for o in row) for row in text]
    rows[0] = "S" + rows[0][1:]
    rows[-1] = rows[-1][:-1] + "G"
    rows[4] = "#" + rows[4][1:]
    other = OTQLearning(GridWorld("\n".join(rows), max_steps=200), seed=3)
    assert other.env.grid.shape == a.env.grid.shape
    with pytest.raises(ConfigError, match="different layout"):
        other.load_state_dict(state)
    assert other.episodes_done == 0


def test_tabular_bad_states_are_config_errors() -> None:
    a = OTQLearning(GridWorld("paper", max_steps=200), seed=3)
    a.train(2)
    state = a.state_dict()
    fresh = OTQLearning(GridWorld("paper", max_steps=200), seed=3)
    with pytest.raises(ConfigError, match="version"):
        fresh.load_state_dict({**state, "version": 0})
    with pytest.raises(ConfigError, match="DDPGAgent"):
        fresh.load_state_dict({**state, "kind": "otsafe.agents.DDPGAgent"})
    with pytest.raises(ConfigError, match="expected the dict"):
        fresh.load_state_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"q has shape \(3, 4\)"):
        fresh.load_state_dict({**state, "q": np.zeros((3, 4))})
    # Other settings: strict refuses and names them; strict=False loads.
    other_seed = OTQLearning(GridWorld("paper", max_steps=200), seed=4)
    with pytest.raises(ConfigError, match="seed: saved 3, here 4"):
        other_seed.load_state_dict(state)
    other_seed.load_state_dict(state, strict=False)
    np.testing.assert_array_equal(other_seed.q_table, a.q_table)
    # A plan of another solver is refused even with strict=False.
    sinkhorn = OTQLearning(
        GridWorld("paper", max_steps=200), seed=3, ot_method="sinkhorn", ot_epsilon=1.0
    )
    with pytest.raises(ConfigError, match=r"GridPlan.*sinkhorn"):
        sinkhorn.load_state_dict(state, strict=False)
    assert sinkhorn.episodes_done == 0
    sinkhorn.train(1)
    with pytest.raises(ConfigError, match="GridSinkhornPlan"):
        fresh.load_state_dict(sinkhorn.state_dict(), strict=False)
    assert fresh.episodes_done == 0
    # A Sinkhorn plan whose potentials do not fit the grid, or with a field missing.
    sinkhorn_state = sinkhorn.state_dict()
    other = OTQLearning(
        GridWorld("paper", max_steps=200), seed=3, ot_method="sinkhorn", ot_epsilon=1.0
    )
    plan = sinkhorn_state["last_plan"]
    with pytest.raises(ConfigError, match=r"malformed Sinkhorn plan.*shape"):
        other.load_state_dict({**sinkhorn_state, "last_plan": {**plan, "f": plan["f"][:3]}})
    with pytest.raises(ConfigError, match="malformed Sinkhorn plan"):
        other.load_state_dict({**sinkhorn_state, "last_plan": {**plan, "info": {"x": 1}}})
    with pytest.raises(ConfigError, match=r"Sinkhorn plan is on a \(3, 3\) grid"):
        other.load_state_dict({**sinkhorn_state, "last_plan": {**plan, "shape": (3, 3)}})
    assert other.episodes_done == 0
