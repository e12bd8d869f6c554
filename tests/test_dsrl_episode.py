"""`run_episode` of the DSRL runner: its per-episode metrics against what the environment did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from otsafe.envs.quadrotor import Quadrotor
from otsafe.experiments.dsrl_runner import run_episode


@dataclass
class _Out:
    changed: torch.Tensor
    slack: torch.Tensor


class _PD:
    """A scripted stand-in for the agent: PD control of the quadrotor towards a target."""

    def __init__(self, target: np.ndarray, gain: float = 1.0) -> None:
        self.target = target
        self.gain = gain

    def act(self, obs: Any, state: np.ndarray, explore: bool) -> tuple[np.ndarray, _Out]:
        p, v = state[:3], state[3:]
        a = np.clip(self.gain * (self.target - p) - 1.5 * v, -2.0, 2.0)
        return a, _Out(torch.zeros(1, dtype=torch.bool), torch.zeros(1))


def _env() -> Quadrotor:
    return Quadrotor(obstacles=[], max_steps=150, disturbance={"type": "gaussian", "std": 0.0})


def test_success_is_recorded_when_the_goal_is_reached() -> None:
    env = _env()
    m = run_episode(env, _PD(env.goal), seed=0, train=False)
    assert m["success"] == 1.0
    assert m["length"] < env.max_steps  # the episode ended at the goal, not at the horizon
    assert m["return"] > env.goal_bonus  # the bonus was paid


@pytest.mark.parametrize("gain", [0.0, 1.0])
def test_no_success_without_reaching_the_goal(gain: float) -> None:
    env = _env()
    short_of_goal = env.goal - np.array([2.0, 0.0, 0.0])  # hover 2 m before the goal
    m = run_episode(env, _PD(short_of_goal, gain), seed=0, train=False)
    assert m["success"] == 0.0
    assert m["length"] == env.max_steps


def test_violations_and_min_barrier_match_the_recorded_path() -> None:
    center, radius = np.array([4.0, 0.0, 1.0]), 0.5
    env = Quadrotor(
        obstacles=[(center.tolist(), radius)],
        max_steps=150,
        disturbance={"type": "gaussian", "std": 0.0},
    )
    m = run_episode(env, _PD(env.goal), seed=0, train=False, record=True)
    positions = np.asarray(m["path"])[1:, :3]  # the states after each step
    clearance = np.linalg.norm(positions - center, axis=1) - radius
    assert m["violation"] == 1.0  # the unfiltered PD flies straight through the sphere
    assert m["violation_steps"] == int(np.sum(clearance < 0))
    assert m["min_barrier"] == pytest.approx(clearance.min(), abs=1e-12)
    assert m["interventions"] == 0
