"""Tests of the OT-Q gridworld (DESIGN §1): maps, dynamics, safety values, rendering, errors."""

from __future__ import annotations

import gzip
import warnings
from importlib import resources

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import otsafe
from otsafe.envs import BUILTIN_MAPS, GridMap, GridWorld, load_map, parse_map
from otsafe.errors import ConfigError, MapError, OtsafeError, SafetyValuesError

UP, DOWN, RIGHT, LEFT = 0, 1, 2, 3
DELTAS = {UP: (-1, 0), DOWN: (1, 0), RIGHT: (0, 1), LEFT: (0, -1)}

# A small map for the dynamics: an obstacle right of the start, the goal bottom-right.
DYNAMICS_MAP = """\
S#.
...
..G
"""

# A map whose safety values cover k = 0, 1, 2, 3 blocked neighbours.
SAFETY_MAP = """\
S....
....#
..#..
....G
"""
# v = max(0, 1 - 0.3 k), goal 1, obstacles 0 -- worked out by hand.
SAFETY_EXPECTED = np.array(
    [
        [0.4, 0.7, 0.7, 0.7, 0.1],
        [0.7, 1.0, 0.7, 0.7, 0.0],
        [0.7, 0.7, 0.0, 0.7, 0.4],
        [0.4, 0.7, 0.4, 0.7, 1.0],
    ]
)

# A closed pocket (top right, 2x2 free cells) that cannot be reached from the start.
POCKET_MAP = """\
S...#..
....#..
....###
......G
"""


def builtin_text(name: str) -> str:
    maps = resources.files("otsafe.envs").joinpath("maps")
    if maps.joinpath(f"{name}.txt").is_file():
        return maps.joinpath(f"{name}.txt").read_text()
    return gzip.decompress(maps.joinpath(f"{name}.txt.gz").read_bytes()).decode("ascii")


# ------------------------------------------------------------------------------ gymnasium API
@pytest.mark.parametrize("name", sorted(BUILTIN_MAPS))
def test_check_env_passes_on_builtin_maps(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make("otsafe/GridWorld-v0", map=name).unwrapped)
        check_env(GridWorld(name, render_mode="rgb_array"), skip_render_check=True)


def test_gym_make_after_import() -> None:
    assert otsafe.__version__
    env = gym.make("otsafe/GridWorld-v0", map="paper", max_steps=7)
    obs, info = env.reset(seed=0)
    base = env.unwrapped
    assert isinstance(base, GridWorld)
    assert base.max_steps == 7
    assert int(obs) == base.grid.start_index == 0
    assert info["cell"] == (0, 0)
    assert env.observation_space == gym.spaces.Discrete(225)
    assert env.action_space == gym.spaces.Discrete(4)
    env.close()


def test_builtin_maps_are_valid_and_sized() -> None:
    sizes = {"paper": (15, 15), "rooms30": (30, 30), "maze50": (50, 50)}
    for name, shape in sizes.items():
        grid = load_map(name)
        assert grid.shape == shape
        assert grid.name == name
        assert grid.reachable[grid.goal]
    paper = load_map("paper")
    # DESIGN §1: start and goal in opposite corners.
    assert {paper.start, paper.goal} == {(0, 0), (14, 14)}
    assert paper.obstacles.any()


# ------------------------------------------------------------------------------- dynamics
def test_off_grid_move_stays_with_minus_one() -> None:
    env = GridWorld(DYNAMICS_MAP)
    env.reset()
    for action in (UP, LEFT):
        obs, reward, terminated, truncated, info = env.step(action)
        assert int(obs) == 0
        assert reward == -1.0
        assert info["collision"] is False
        assert info["cell"] == (0, 0)
        assert not terminated
        assert not truncated


def test_obstacle_move_stays_with_minus_ten_and_collision() -> None:
    env = GridWorld(DYNAMICS_MAP)
    env.reset()
    obs, reward, terminated, truncated, info = env.step(RIGHT)
    assert int(obs) == 0
    assert reward == -10.0
    assert info["collision"] is True
    assert not terminated  # the episode continues after a collision
    assert not truncated
    # from below the obstacle, moving up bumps it too
    env.step(DOWN)
    env.step(RIGHT)
    obs, reward, _, _, info = env.step(UP)
    assert info["cell"] == (1, 1)
    assert reward == -10.0
    assert info["collision"] is True


def test_free_moves_and_entering_goal() -> None:
    env = GridWorld(DYNAMICS_MAP)
    env.reset()
    rewards = []
    for action in (DOWN, RIGHT, RIGHT):
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        assert not terminated
        assert not truncated
        assert info["collision"] is False
    assert rewards == [-1.0, -1.0, -1.0]
    assert info["cell"] == (1, 2)
    obs, reward, terminated, truncated, info = env.step(DOWN)
    assert int(obs) == 8
    assert info["cell"] == (2, 2)
    assert reward == 10.0
    assert terminated is True
    assert truncated is False


def test_truncation_after_max_steps() -> None:
    env = GridWorld("S.........G", max_steps=3)
    env.reset()
    flags = [env.step(LEFT)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    # reset starts a fresh episode with a fresh step budget
    obs, _ = env.reset()
    assert int(obs) == 0
    assert env.step(RIGHT)[2:4] == (False, False)


def test_goal_on_last_step_is_terminated_not_truncated() -> None:
    env = GridWorld("S.G", max_steps=2)
    env.reset()
    env.step(RIGHT)
    _, reward, terminated, truncated, _ = env.step(RIGHT)
    assert reward == 10.0
    assert (terminated, truncated) == (True, False)


def test_invalid_action_raises() -> None:
    env = GridWorld(DYNAMICS_MAP)
    env.reset()
    with pytest.raises(ValueError, match="invalid action"):
        env.step(4)


def _expected_move(grid: GridMap, cell: tuple[int, int], action: int) -> tuple[int, float, bool]:
    """Independent implementation of the DESIGN §1 rules: (next index, reward, collision)."""
    h, w = grid.shape
    r, c = cell[0] + DELTAS[action][0], cell[1] + DELTAS[action][1]
    if not (0 <= r < h and 0 <= c < w):
        return grid.index(cell), -1.0, False
    if grid.obstacles[r, c]:
        return grid.index(cell), -10.0, True
    if (r, c) == grid.goal:
        return grid.index((r, c)), 10.0, False
    return grid.index((r, c)), -1.0, False


def test_transition_table_matches_rules_and_step_on_paper_map() -> None:
    env = GridWorld("paper", max_steps=10_000)
    grid = env.grid
    table = env.transitions
    h, w = grid.shape
    assert table.next_state.shape == (h * w, 4)
    assert table.reward.shape == (h * w, 4)
    assert table.collision.shape == (h * w, 4)
    assert table.terminal.shape == (h * w,)
    assert np.flatnonzero(table.terminal).tolist() == [grid.goal_index]
    checked = 0
    for r in range(h):
        for c in range(w):
            if grid.obstacles[r, c] or (r, c) == grid.goal:
                continue
            s = grid.index((r, c))
            for a in range(4):
                exp_next, exp_reward, exp_collision = _expected_move(grid, (r, c), a)
                assert table.next_state[s, a] == exp_next
                assert table.reward[s, a] == exp_reward
                assert bool(table.collision[s, a]) is exp_collision
                env.reset()
                env._state = s  # place the agent on the cell under test
                obs, reward, terminated, truncated, info = env.step(a)
                assert int(obs) == table.next_state[s, a]
                assert reward == table.reward[s, a]
                assert info["collision"] is bool(table.collision[s, a])
                assert terminated is bool(table.terminal[table.next_state[s, a]])
                assert truncated is False
                checked += 1
    assert checked == 4 * (h * w - int(grid.obstacles.sum()) - 1)


# -------------------------------------------------------------------------- safety values
def test_safety_values_follow_design_rule() -> None:
    grid = parse_map(SAFETY_MAP)
    np.testing.assert_allclose(grid.safety_values(), SAFETY_EXPECTED, atol=1e-12)
    env = GridWorld(SAFETY_MAP)
    np.testing.assert_allclose(env.safety, SAFETY_EXPECTED, atol=1e-12)
    # all four k levels are represented
    assert {0.1, 0.4, 0.7, 1.0} <= set(np.round(SAFETY_EXPECTED[~grid.obstacles], 6))
    assert env.safety[grid.goal] == 1.0


def test_risk_distribution_normalised_and_zero_on_obstacles() -> None:
    grid = parse_map(SAFETY_MAP)
    p = grid.risk_distribution()
    assert p.shape == (grid.n_cells,)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(p >= 0)
    assert np.all(p[grid.obstacles.ravel()] == 0)
    np.testing.assert_allclose(p, SAFETY_EXPECTED.ravel() / SAFETY_EXPECTED.sum(), atol=1e-12)
    env = GridWorld(SAFETY_MAP)
    np.testing.assert_allclose(env.risk_distribution, p)


def test_risk_distribution_zero_on_unreachable_pocket() -> None:
    grid = parse_map(POCKET_MAP)
    pocket = [(0, 5), (0, 6), (1, 5), (1, 6)]
    for cell in pocket:
        assert not grid.obstacles[cell]
        assert not grid.reachable[cell]
    p = grid.risk_distribution().reshape(grid.shape)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    for cell in pocket:
        assert p[cell] == 0.0
    assert np.all(p[grid.obstacles] == 0)
    assert np.all(p[grid.reachable] > 0)
    # on the reachable cells P^s is proportional to v
    v = grid.safety_values()
    np.testing.assert_allclose(p[grid.reachable], v[grid.reachable] / v[grid.reachable].sum())


@pytest.mark.parametrize("flat", [False, True], ids=["HxW", "flat"])
def test_user_safety_values_are_used_and_obstacles_zeroed(flat: bool) -> None:
    grid = parse_map(DYNAMICS_MAP)
    values = np.arange(1.0, 10.0).reshape(3, 3)
    given = values.ravel() if flat else values
    env = GridWorld(DYNAMICS_MAP, safety_values=given)
    expected = values.copy()
    expected[0, 1] = 0.0  # the obstacle
    np.testing.assert_allclose(env.safety, expected)
    np.testing.assert_allclose(grid.safety_values(given), expected)
    np.testing.assert_allclose(env.risk_distribution, expected.ravel() / expected.sum())
    # cells with v < 1 are risky: here none among the free cells
    assert not env.risky.any()


def test_user_safety_values_mark_risky_cells() -> None:
    values = np.ones((3, 3))
    values[1, 0] = 0.5
    env = GridWorld(DYNAMICS_MAP, safety_values=values)
    env.reset()
    *_, info = env.step(DOWN)
    assert info["risky"] is True
    *_, info = env.step(RIGHT)
    assert info["risky"] is False


@pytest.mark.parametrize(
    ("values", "match"),
    [
        pytest.param(np.full((3, 3), -1.0), "non-negative", id="negative"),
        pytest.param(np.where(np.eye(3, dtype=bool), np.nan, 1.0), "NaN or infinite", id="nan"),
        pytest.param(np.where(np.eye(3, dtype=bool), np.inf, 1.0), "NaN or infinite", id="inf"),
        pytest.param(np.ones((3, 4)), "shape", id="wrong-shape"),
        pytest.param(np.ones(8), "shape", id="wrong-flat-length"),
        pytest.param(np.zeros((3, 3)), "zero on every cell reachable", id="all-zero"),
        pytest.param(
            np.where(np.arange(9).reshape(3, 3) == 1, 5.0, 0.0),
            "zero on every cell reachable",
            id="mass-only-on-obstacle",
        ),
        pytest.param([["a", "b", "c"]] * 3, "not numeric", id="non-numeric"),
    ],
)
def test_bad_safety_values_raise(values: object, match: str) -> None:
    grid = parse_map(DYNAMICS_MAP)
    with pytest.raises(SafetyValuesError, match=match):
        grid.safety_values(values)  # type: ignore[arg-type]
    with pytest.raises(SafetyValuesError, match=match):
        GridWorld(DYNAMICS_MAP, safety_values=values)  # type: ignore[arg-type]


def test_safety_values_all_zero_except_pocket_raise() -> None:
    grid = parse_map(POCKET_MAP)
    values = np.zeros(grid.shape)
    values[0, 5] = 1.0  # only the unreachable pocket carries mass
    with pytest.raises(SafetyValuesError, match="reachable"):
        grid.risk_distribution(values)


def test_safety_values_error_is_an_otsafe_value_error() -> None:
    assert issubclass(SafetyValuesError, OtsafeError)
    assert issubclass(MapError, ValueError)


# ------------------------------------------------------------------------------ rendering
def test_render_rgb_array_after_reset() -> None:
    env = GridWorld("paper", render_mode="rgb_array", cell_px=8)
    env.reset(seed=1)
    img = env.render()
    assert isinstance(img, np.ndarray)
    assert img.dtype == np.uint8
    assert img.shape == (15 * 8, 15 * 8, 3)
    env.step(RIGHT)
    img2 = env.render()
    assert img2 is not None
    assert img2.shape == img.shape
    assert not np.array_equal(img, img2)  # the agent moved


def test_render_non_square_map_and_no_render_mode() -> None:
    env = GridWorld(SAFETY_MAP, render_mode="rgb_array", cell_px=5)
    env.reset()
    img = env.render()
    assert img is not None
    assert img.shape == (4 * 5, 5 * 5, 3)
    assert img.dtype == np.uint8
    plain = GridWorld(SAFETY_MAP)
    plain.reset()
    assert plain.render() is None


def test_bad_render_mode_raises() -> None:
    with pytest.raises(ConfigError, match="render_mode"):
        GridWorld("paper", render_mode="human")


# ---------------------------------------------------------------------------- map sources
def test_map_from_builtin_string_and_file(tmp_path) -> None:
    text = builtin_text("paper")
    path = tmp_path / "mymap.txt"
    path.write_text(text)
    from_name = load_map("paper")
    from_text = load_map(text)
    from_file_str = load_map(str(path))
    from_file_path = load_map(path)
    for grid in (from_text, from_file_str, from_file_path):
        np.testing.assert_array_equal(grid.obstacles, from_name.obstacles)
        assert grid.start == from_name.start
        assert grid.goal == from_name.goal
    assert from_file_str.name == "mymap.txt"
    env = GridWorld(path)
    assert env.grid.shape == (15, 15)
    env2 = GridWorld(str(path))
    np.testing.assert_array_equal(env2.transitions.next_state, env.transitions.next_state)
    assert load_map(from_name) is from_name


def test_single_line_ascii_map_string() -> None:
    grid = load_map("S...G")
    assert grid.shape == (1, 5)
    assert grid.start == (0, 0)
    assert grid.goal == (0, 4)


def test_parse_map_ignores_surrounding_blank_lines_and_trailing_spaces() -> None:
    grid = parse_map("\n\nS.#  \n..G\t\n\n")
    assert grid.shape == (2, 3)
    assert grid.obstacles[0, 2]


@pytest.mark.parametrize("name", sorted(BUILTIN_MAPS))
def test_to_ascii_round_trips(name: str) -> None:
    grid = load_map(name)
    text = grid.to_ascii()
    again = parse_map(text)
    np.testing.assert_array_equal(again.obstacles, grid.obstacles)
    assert (again.start, again.goal) == (grid.start, grid.goal)
    assert again.to_ascii() == text
    assert text.splitlines() == [line.rstrip() for line in builtin_text(name).strip().splitlines()]


def test_to_ascii_round_trips_hand_made_map() -> None:
    grid = parse_map(POCKET_MAP)
    assert grid.to_ascii() == POCKET_MAP


# ------------------------------------------------------------------------------- bad maps
@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("...\n..G\n", r"exactly one start 'S', found 0", id="no-start"),
        pytest.param("S.S\n..G\n", r"exactly one start 'S', found 2", id="two-starts"),
        pytest.param("S..\n...\n", r"exactly one goal 'G', found 0", id="no-goal"),
        pytest.param("S.G\n..G\n", r"exactly one goal 'G', found 2", id="two-goals"),
        pytest.param("S.x\n..G\n", r"unknown character 'x' at row 0, column 2", id="unknown-char"),
        pytest.param("S..\n.G\n", r"ragged rows: row 1 has 2 cells", id="ragged"),
        pytest.param("", r"empty", id="empty"),
        pytest.param("\n  \n\n", r"empty", id="blank"),
        pytest.param("S.#..\n..#..\n..#.G\n", r"goal \(2, 4\) cannot be reached", id="walled"),
        pytest.param("S#.\n#..\n..G\n", r"cannot be reached from the start", id="start-boxed"),
    ],
)
def test_bad_maps_raise_map_error(text: str, match: str) -> None:
    with pytest.raises(MapError, match=match):
        parse_map(text)
    if text.strip():
        with pytest.raises(MapError, match=match):
            GridWorld(text)


def test_map_error_names_the_map_file(tmp_path) -> None:
    path = tmp_path / "ragged.txt"
    path.write_text("S...\n..\n...G\n")
    with pytest.raises(MapError, match=r"ragged\.txt.*ragged rows"):
        load_map(str(path))
    with pytest.raises(MapError, match="ragged rows"):
        GridWorld(path)


@pytest.mark.parametrize("spec", ["papr", "no/such/map.txt"])
def test_unknown_map_name_or_missing_file(spec: str) -> None:
    with pytest.raises(
        MapError,
        match=r"unknown map .*not a built-in map \(paper, rooms30, maze50, rooms100, city1000\)",
    ):
        load_map(spec)
    with pytest.raises(MapError, match="no such file"):
        GridWorld(spec)


def test_missing_map_file_in_tmp(tmp_path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(MapError, match=r"missing\.txt"):
        load_map(missing)
    with pytest.raises(MapError, match="no such file"):
        load_map(tmp_path)  # a directory is not a map file


def test_gridmap_constructor_checks_invariants() -> None:
    obstacles = np.zeros((2, 2), dtype=bool)
    with pytest.raises(MapError, match="same cell"):
        GridMap(obstacles, (0, 0), (0, 0))
    with pytest.raises(MapError, match="outside"):
        GridMap(obstacles, (0, 0), (2, 0))
    blocked = obstacles.copy()
    blocked[1, 1] = True
    with pytest.raises(MapError, match="is an obstacle"):
        GridMap(blocked, (0, 0), (1, 1))


@pytest.mark.parametrize("max_steps", [0, -5, 2.5, "10"])
def test_bad_max_steps_raises_config_error(max_steps: object) -> None:
    with pytest.raises(ConfigError, match="max_steps"):
        GridWorld("paper", max_steps=max_steps)  # type: ignore[arg-type]
