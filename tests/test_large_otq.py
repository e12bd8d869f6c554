"""OT-Q with the grid Sinkhorn solver: agent, config, CLI and the large-map preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from otsafe.agents.tabular import OTQLearning, QLearning
from otsafe.cli import main
from otsafe.envs.gridworld import GridWorld
from otsafe.errors import ConfigError
from otsafe.experiments.config import resolve_config
from otsafe.transport import GridSinkhornPlan


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # Small torch ops on a shared 2-core machine are much slower with 2 threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sinkhorn_agent_follows_exact_agent_in_the_first_episodes() -> None:
    """Episode 1 pays no bonus, so both agents see the same P^pi; W2 and the plan's bonuses agree
    with the exact plan up to the entropic blur."""
    env = GridWorld("paper")
    exact = OTQLearning(env, seed=3)
    entropic = OTQLearning(env, seed=3, ot_method="sinkhorn", ot_epsilon=0.1, ot_tol=1e-6)
    m_exact, m_entropic = exact.run_episode(), entropic.run_episode()
    assert m_exact.length == m_entropic.length
    np.testing.assert_array_equal(exact.last_state_distribution, entropic.last_state_distribution)
    assert isinstance(entropic.last_plan, GridSinkhornPlan)
    assert entropic.last_plan.info.converged
    # <T_eps, c> >= W2^2 and approaches it as eps -> 0.
    assert m_exact.w2 <= m_entropic.w2 <= m_exact.w2 * 1.02
    bonus_exact, bonus_entropic = exact.bonus_table(), entropic.bonus_table()
    assert np.all(bonus_entropic >= 0)
    # Bonuses only on moves that change cell; the total bonus on offer agrees to a few percent
    # (exact optimal plans on grids are not unique, so entries are compared in aggregate).
    stay = env.transitions.next_state == np.arange(env.grid.n_cells)[:, None]
    assert np.all(bonus_entropic[stay] == 0)
    assert bonus_entropic.sum() == pytest.approx(bonus_exact.sum(), rel=0.1)


def test_sinkhorn_agent_is_deterministic() -> None:
    env = GridWorld("paper")
    runs = []
    for _ in range(2):
        agent = OTQLearning(env, seed=1, ot_method="sinkhorn", ot_epsilon=1.0)
        runs.append([m.as_dict() for m in agent.train(4)])
    assert runs[0] == runs[1]


def test_auto_picks_exact_on_small_maps_and_sinkhorn_on_large_ones() -> None:
    assert QLearning(GridWorld("paper"), ot_method="auto").ot_method == "tripartite"
    assert QLearning(GridWorld("rooms100"), ot_method="auto").ot_method == "sinkhorn"


def test_bad_sinkhorn_settings_raise_config_error() -> None:
    env = GridWorld("paper")
    with pytest.raises(ConfigError, match="epsilon"):
        QLearning(env, ot_method="sinkhorn", ot_epsilon=0.0)
    with pytest.raises(ConfigError, match="device"):
        QLearning(env, ot_method="sinkhorn", ot_device="tpu")


def test_cuda_without_gpu_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no GPU"):
        resolve_config("otq-city1000")


def test_cuda_needs_the_grid_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match=r"agent\.ot_method"):
        resolve_config("otq-quick", sets=["experiment.device=cuda"])
    config = resolve_config("otq-city1000")
    assert config.experiment.device == "cuda"
    assert config.env.map == "city1000"


def test_cli_cuda_without_gpu_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    code = main(["run", "otq-rooms100-quick", "--out", str(out), "--device", "cuda"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no GPU" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_large_map_quick_preset_runs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["run", "otq-rooms100-quick", "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["map"] == "rooms100"
    assert summary["run"]["ot_method"] == "sinkhorn"
    w2 = summary["methods"]["ot-q"]["final_w2"]["mean"]
    assert np.isfinite(w2)
    assert w2 > 0
    assert (out / "figures" / "ot_plan.png").is_file()
