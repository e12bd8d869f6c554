"""The built-in DSRL presets build their environments; the gate's geometry is as its YAML
says."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from otsafe.experiments.config import list_presets, resolve_config
from otsafe.experiments.dsrl_config import DSRLConfig
from otsafe.experiments.dsrl_runner import make_env

DSRL_PRESETS = sorted(name for name in list_presets() if name.startswith("dsrl-"))


def test_the_dsrl_presets_are_found() -> None:
    assert {"dsrl-dubins", "dsrl-quadrotor", "dsrl-quadrotor-gate"} <= set(DSRL_PRESETS)


@pytest.mark.parametrize("name", DSRL_PRESETS)
def test_every_dsrl_preset_builds_its_env(name: str) -> None:
    config = resolve_config(name)
    assert isinstance(config, DSRLConfig)  # names, descriptions: tests/test_config.py
    env = make_env(config)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["min_barrier"] > 0


def test_gate_has_one_hole_on_the_straight_line() -> None:
    env = make_env(resolve_config("dsrl-quadrotor-gate")).unwrapped
    centers, radii = env.obstacle_centers, env.obstacle_radii
    start, goal = env.start_state[:3], env.goal
    # Distance of every point of the segment start -> goal to each sphere's surface.
    t = np.linspace(0.0, 1.0, 2001)[:, None]
    line = start + t * (goal - start)
    clearance = np.linalg.norm(line[:, None, :] - centers[None], axis=2) - radii
    assert clearance.min() == pytest.approx(1.3 - 0.93, abs=1e-9)  # 0.37 m, at the hole
    assert np.allclose(clearance.min(axis=0), 0.37)  # from all four spheres alike
    # Neighbouring spheres overlap, so the hole is the only way through the gate's plane near
    # the line; opposite ones do not touch it.
    for i, j in itertools.combinations(range(len(radii)), 2):
        gap = np.linalg.norm(centers[i] - centers[j]) - radii[i] - radii[j]
        opposite = np.isclose(np.linalg.norm(centers[i] - centers[j]), 2.6)
        assert (gap > 0) if opposite else (gap < 0), (i, j, gap)


def test_trajectory_figure_cuts_the_spheres_at_the_start_altitude() -> None:
    from otsafe.experiments.dsrl_plots import _obstacle_patches

    gate = make_env(resolve_config("dsrl-quadrotor-gate")).unwrapped
    patches = _obstacle_patches(gate)
    outlines = [p for p in patches if not p.get_fill()]
    sections = [p for p in patches if p.get_fill()]
    assert len(outlines) == 4  # every sphere's projection
    # The side spheres lie at the start's altitude (full radius); the ones above and below it
    # (1.3 m > 0.93 m away) do not cut that plane, so the hole on the line shows.
    assert sorted(p.center[1] for p in sections) == [-1.3, 1.3]
    assert all(p.radius == pytest.approx(0.93) for p in sections)
    car = make_env(resolve_config("dsrl-dubins")).unwrapped
    discs = _obstacle_patches(car)
    assert len(discs) == len(car.obstacle_radii)
    assert all(p.get_fill() for p in discs)
