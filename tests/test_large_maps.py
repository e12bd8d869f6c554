"""The large built-in maps ``rooms100`` (10^4 cells) and ``city1000`` (10^6 cells)."""

from __future__ import annotations

import gzip
import time
import warnings
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order

import otsafe.envs  # noqa: F401  (registers otsafe/GridWorld-v0)
from _helpers import load_script
from otsafe.envs import gridmap
from otsafe.envs.gridmap import (
    ACTION_DELTAS,
    BUILTIN_MAPS,
    REWARD_COLLISION,
    REWARD_GOAL,
    REWARD_STEP,
    GridMap,
    builtin_map_names,
    load_map,
    parse_map,
)
from otsafe.envs.gridworld import GridWorld
from otsafe.errors import ConfigError, MapError

ROOT = Path(__file__).resolve().parents[1]
LARGE = {"rooms100": (100, 100), "city1000": (1000, 1000)}
RIGHT, DOWN = 2, 1


@pytest.fixture(scope="module")
def make_large_maps() -> ModuleType:
    """``scripts/make_large_maps.py``, the generator of both maps, imported as a module."""
    return load_script("make_large_maps")


def shortest_path_length(grid: GridMap) -> int:
    """Moves on a shortest path from the start to the goal (breadth-first search)."""
    table = grid.transitions
    n = grid.n_cells
    src = np.repeat(np.arange(n), 4)
    dst = table.next_state.ravel()
    moves = src != dst
    adj = csr_matrix((np.ones(int(moves.sum())), (src[moves], dst[moves])), shape=(n, n))
    _, pred = breadth_first_order(adj, grid.start_index, directed=True)
    length, node = 0, grid.goal_index
    while node != grid.start_index:
        node = int(pred[node])
        assert node >= 0, "the goal is not reachable"
        length += 1
    return length


# ------------------------------------------------------------------------------ the maps
def test_large_maps_are_listed_with_descriptions() -> None:
    names = builtin_map_names()
    for name, (h, w) in LARGE.items():
        assert name in names
        assert BUILTIN_MAPS[name].startswith(f"{h}x{w}")


@pytest.mark.parametrize(("name", "shape"), LARGE.items())
def test_shape_start_goal_and_reachability(name: str, shape: tuple[int, int]) -> None:
    grid = load_map(name)
    assert grid.shape == shape
    assert grid.name == name
    h, w = shape
    # Start and goal in opposite corners.
    assert grid.start == (0, 0)
    assert grid.goal == (h - 1, w - 1)
    assert not grid.obstacles[grid.start]
    assert not grid.obstacles[grid.goal]
    # Every free cell is reachable from the start (the generator fills enclosed pockets).
    assert grid.reachable[grid.goal]
    np.testing.assert_array_equal(grid.reachable, ~grid.obstacles)


@pytest.mark.parametrize("name", LARGE)
def test_obstacle_fraction_and_risky_cells(name: str) -> None:
    grid = load_map(name)
    assert 0.10 <= grid.obstacles.mean() <= 0.25
    safety = grid.safety_values()
    free = ~grid.obstacles
    # Risky cells (next to obstacles or the border) and safe ones both exist...
    assert 0.05 < np.mean(safety[free] < 1.0) < 0.8
    assert np.any(safety[free] <= 0.4)  # corners and doorways (two blocked neighbours)
    # ...so the safety distribution P^s is not uniform on the free cells.
    p = grid.risk_distribution()
    assert p.sum() == pytest.approx(1.0)
    assert np.all(p[grid.obstacles.ravel()] == 0.0)
    assert p[free.ravel()].min() < p[free.ravel()].max()


@pytest.mark.parametrize("name", LARGE)
def test_obstacles_force_a_detour(name: str) -> None:
    grid = load_map(name)
    h, w = grid.shape
    manhattan = h + w - 2
    # No shortest path is a monotone staircase: the obstacles are in the way.
    assert shortest_path_length(grid) > manhattan


@pytest.mark.parametrize("name", LARGE)
def test_loading_is_deterministic_and_shared(name: str) -> None:
    text = gridmap._builtin_text(name)
    assert text == gridmap._builtin_text(name)
    first, second = parse_map(text, name=name), parse_map(text, name=name)
    np.testing.assert_array_equal(first.obstacles, second.obstacles)
    assert (first.start, first.goal) == (second.start, second.goal)
    loaded = load_map(name)
    np.testing.assert_array_equal(loaded.obstacles, first.obstacles)
    assert load_map(name) is loaded  # parsed once per process, shared
    assert not loaded.obstacles.flags.writeable
    assert not loaded.transitions.next_state.flags.writeable


def test_generator_reproduces_the_shipped_maps(make_large_maps: ModuleType) -> None:
    maps = ROOT / "src" / "otsafe" / "envs" / "maps"
    assert make_large_maps.make_rooms100() == (maps / "rooms100.txt").read_text()
    shipped = gzip.decompress((maps / "city1000.txt.gz").read_bytes()).decode("ascii")
    assert make_large_maps.make_city1000() == shipped
    assert not (maps / "city1000.txt").exists()  # shipped compressed only


def test_city1000_loads_fast() -> None:
    t0 = time.perf_counter()
    grid = parse_map(gridmap._builtin_text("city1000"), name="city1000")
    grid.transitions  # noqa: B018
    grid.risk_distribution()
    assert time.perf_counter() - t0 < 2.0


def test_city1000_transitions_match_the_rules_on_sampled_cells() -> None:
    grid = load_map("city1000")
    h, w = grid.shape
    table = grid.transitions
    assert table.next_state.shape == table.reward.shape == (h * w, 4)
    assert table.next_state.dtype == np.int64
    rng = np.random.default_rng(0)
    free = np.flatnonzero(~grid.obstacles.ravel())
    # Random free cells, the border cells around the corners and the goal's neighbours.
    cells = {*rng.choice(free, 2000, replace=False).tolist(), 1, w, h * w - 2, h * w - 1 - w}
    for s in sorted(cells):
        r, c = divmod(s, w)
        if grid.obstacles[r, c] or (r, c) == grid.goal:
            continue
        for a, (dr, dc) in enumerate(ACTION_DELTAS.tolist()):
            rr, cc = r + dr, c + dc
            if not (0 <= rr < h and 0 <= cc < w):
                expected = (s, REWARD_STEP, False)
            elif grid.obstacles[rr, cc]:
                expected = (s, REWARD_COLLISION, True)
            elif (rr, cc) == grid.goal:
                expected = (rr * w + cc, REWARD_GOAL, False)
            else:
                expected = (rr * w + cc, REWARD_STEP, False)
            got = (int(table.next_state[s, a]), float(table.reward[s, a]), table.collision[s, a])
            assert got == expected, (r, c, a)


# ------------------------------------------------------------------------- environments
def test_check_env_on_rooms100() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make("otsafe/GridWorld-v0", map="rooms100").unwrapped)
        check_env(
            gym.make("otsafe/GridWorld-v0", map="rooms100", render_mode="rgb_array").unwrapped
        )


def test_a_few_steps_on_city1000() -> None:
    env = gym.make("otsafe/GridWorld-v0", map="city1000", max_steps=5)
    obs, info = env.reset(seed=0)
    assert int(obs) == 0
    assert info["cell"] == (0, 0)
    assert env.observation_space == gym.spaces.Discrete(10**6)
    base = env.unwrapped
    assert isinstance(base, GridWorld)
    table = base.transitions
    state, rewards, cells = 0, [], []
    for t, action in enumerate([RIGHT, DOWN, RIGHT, DOWN, RIGHT]):
        obs, reward, terminated, truncated, info = env.step(action)
        assert int(obs) == table.next_state[state, action]
        assert reward == table.reward[state, action]
        assert info["collision"] == table.collision[state, action]
        assert info["cell"] == divmod(int(obs), 1000)
        assert info["risky"] == bool(base.safety[info["cell"]] < 1.0)
        assert not terminated
        assert truncated == (t == 4)
        state = int(obs)
        rewards.append(float(reward))
        cells.append(info["cell"])
    # (1, 2) is an obstacle: the third move bumps into it.
    assert cells == [(0, 1), (1, 1), (1, 1), (2, 1), (2, 2)]
    assert rewards == [REWARD_STEP, REWARD_STEP, REWARD_COLLISION, REWARD_STEP, REWARD_STEP]
    env.close()


def test_render_is_capped_on_city1000() -> None:
    env = GridWorld("city1000", render_mode="rgb_array")
    assert env.pixels_per_cell == 2
    env.reset()
    image = env.render()
    assert image is not None
    assert image.shape == (2000, 2000, 3)
    assert image.dtype == np.uint8
    assert tuple(image[1, 1]) == (40, 90, 220)  # the agent at the start cell
    assert tuple(image[-1, -1]) == (240, 190, 40)  # the goal
    blank = env.draw()
    assert tuple(blank[1, 1]) == (120, 200, 120)  # the start, no agent
    # The cap leaves maps up to 128 cells a side at the default 16 pixels per cell.
    assert GridWorld("rooms100").pixels_per_cell == 16
    assert GridWorld("city1000", max_render_px=None).pixels_per_cell == 16
    assert GridWorld("city1000", max_render_px=500).pixels_per_cell == 1
    with pytest.raises(ConfigError, match="max_render_px"):
        GridWorld("paper", max_render_px=0)


def test_one_pixel_cells_show_the_agent() -> None:
    env = GridWorld("paper", render_mode="rgb_array", cell_px=1)
    env.reset()
    image = env.render()
    assert image is not None
    assert image.shape == (15, 15, 3)
    assert tuple(image[0, 0]) == (40, 90, 220)


# --------------------------------------------------------------------- compressed files
def test_gzip_map_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "rooms.txt.gz"
    path.write_bytes(gzip.compress(gridmap._builtin_text("rooms100").encode()))
    grid = load_map(path)
    assert grid.name == "rooms.txt.gz"
    np.testing.assert_array_equal(grid.obstacles, load_map("rooms100").obstacles)
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(b"not gzip data")
    with pytest.raises(MapError, match=r"cannot read map file .*broken\.txt\.gz"):
        load_map(broken)
