"""Tests of the exact multiscale grid OT solver (``otsafe.transport.multiscale``).

References: POT's ``ot.emd`` on the dense problem (cost and marginals), brute-force minima over
all pairs (the separable c-transform and the dual feasibility certificate), and the tripartite
solver. Most tests lower ``DENSE_MAX_PAIRS`` so that small problems go through several levels and
several pricing rounds, the paths large grids take.
"""

from __future__ import annotations

import numpy as np
import ot
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import otsafe.transport.grid as grid_module
import otsafe.transport.multiscale as ms
from otsafe.agents.tabular import OTQLearning
from otsafe.envs.gridworld import GridWorld
from otsafe.errors import ConvergenceError, DistributionError
from otsafe.experiments.config import resolve_config
from otsafe.transport import (
    ExactGridPlan,
    GridExactOT,
    GridMultiscaleOT,
    GridPlan,
    OTSolution,
    grid_coordinates,
    grid_plan,
    sqeuclidean_cost,
)

HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def multilevel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Solve levels with more than 64 pairs on sparse arcs (several levels even on tiny grids)."""
    monkeypatch.setattr(ms, "DENSE_MAX_PAIRS", 64)


def _histogram(rng: np.random.Generator, n: int, zero_frac: float) -> np.ndarray:
    while True:
        h = rng.random(n) * (rng.random(n) >= zero_frac)
        if h.sum() > 0:
            return h / h.sum()


def _blob_pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mass far from where it must go: a corner blob against a smooth target (the benchmark's)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.exp(-((yy - 0.2 * h) ** 2 + (xx - 0.3 * w) ** 2) / (2 * (0.15 * h) ** 2)) + 0.01
    b = 1 + 0.5 * np.sin(xx / w * 6) * np.cos(yy / h * 4) + 0.1 * rng.random((h, w))
    return (a / a.sum()).ravel(), (b / b.sum()).ravel()


def _check_certificate(plan, a, b, xs, ys) -> None:
    """Marginals, dual feasibility on every pair, complementary slackness, strong duality."""
    cost = sqeuclidean_cost(xs, ys)
    dense = plan.dense()
    np.testing.assert_allclose(dense.sum(axis=1), a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dense.sum(axis=0), b, rtol=0, atol=1e-12)
    reduced = cost - plan.u[:, None] - plan.v[None, :]
    assert reduced.min() >= -1e-9  # (u, v) is feasible for the dual of the *full* problem
    np.testing.assert_allclose(reduced[plan.rows, plan.cols], 0.0, atol=1e-9)
    dual_value = float(a @ plan.u + b @ plan.v)
    assert dual_value == pytest.approx(plan.cost, rel=1e-12, abs=1e-12)


@pytest.mark.usefixtures("multilevel")
@pytest.mark.parametrize("shape", [(6, 7), (12, 12), (9, 16)])
@pytest.mark.parametrize("zero_frac", [0.0, 0.5])
def test_matches_pot_on_random_grids(shape, zero_frac):
    rng = np.random.default_rng(shape[0] * 100 + int(zero_frac * 10))
    n = shape[0] * shape[1]
    a, b = _histogram(rng, n, zero_frac), _histogram(rng, n, zero_frac)
    pts = grid_coordinates(shape)
    solver = GridMultiscaleOT(pts)
    plan = solver.solve(a, b)
    expected = ot.emd2(a, b, sqeuclidean_cost(pts))
    assert plan.cost == pytest.approx(expected, rel=1e-10, abs=1e-14)
    _check_certificate(plan, a, b, pts, pts)
    assert len(solver.info.pairs) >= 2  # really went through a coarse level
    assert all(r >= 1 for r in solver.info.rounds)


@pytest.mark.usefixtures("multilevel")
def test_needs_pricing_rounds_when_mass_travels_far():
    """A corner blob: the coarse plan's children are not optimal, pricing must add arcs."""
    a, b = _blob_pair(16, 16)
    pts = grid_coordinates((16, 16))
    solver = GridMultiscaleOT(pts)
    plan = solver.solve(a, b)
    assert max(solver.info.rounds) >= 2
    assert plan.cost == pytest.approx(ot.emd2(a, b, sqeuclidean_cost(pts)), rel=1e-10)
    _check_certificate(plan, a, b, pts, pts)
    # Integer costs give integer potentials (the module docstring's exactness argument).
    np.testing.assert_array_equal(plan.u, np.round(plan.u))
    np.testing.assert_array_equal(plan.v, np.round(plan.v))


def test_agrees_with_tripartite_at_default_settings():
    """30 x 30 (810,000 pairs): the default path, coarse level included."""
    a, b = _blob_pair(30, 30, seed=3)
    pts = grid_coordinates((30, 30))
    solver = GridMultiscaleOT(pts)
    plan = solver.solve(a, b)
    assert len(solver.info.pairs) == 2
    assert plan.cost == pytest.approx(GridExactOT(pts).solve(a, b).cost, rel=1e-12)
    assert plan.rows.size <= 2 * 900 - 1  # a vertex of the transport polytope


@pytest.mark.usefixtures("multilevel")
@pytest.mark.parametrize("seed", range(8))
def test_blocks_of_vanishing_mass(seed):
    """Whole coarse blocks with masses down to 1e-300 (OT-Q's P^pi has such cells): the coarse
    plan's arcs into them carry next to nothing, and the fine problem must stay feasible."""
    rng = np.random.default_rng(seed)
    a, b = rng.random((16, 16)), rng.random((16, 16))
    for x in (a, b):
        for _ in range(6):
            r, c = rng.integers(0, 4, 2) * 4
            x[r : r + 4, c : c + 4] = 10.0 ** rng.uniform(-300, -17, size=(4, 4))
    a, b = (a / a.sum()).ravel(), (b / b.sum()).ravel()
    pts = grid_coordinates((16, 16))
    plan = GridMultiscaleOT(pts).solve(a, b)
    assert plan.cost == pytest.approx(ot.emd2(a, b, sqeuclidean_cost(pts)), rel=1e-10)
    _check_certificate(plan, a, b, pts, pts)


@pytest.mark.usefixtures("multilevel")
def test_different_source_and_target_points():
    rng = np.random.default_rng(7)
    cells = grid_coordinates((10, 11))
    xs = cells[rng.choice(cells.shape[0], 40, replace=False)]
    ys = cells[rng.choice(cells.shape[0], 55, replace=False)] + np.array([3.0, -2.0])
    a, b = _histogram(rng, 40, 0.2), _histogram(rng, 55, 0.2)
    solver = GridMultiscaleOT(xs, ys)
    plan = solver.solve(a, b)
    assert plan.shape == (40, 55)
    assert plan.cost == pytest.approx(ot.emd2(a, b, sqeuclidean_cost(xs, ys)), rel=1e-10)
    _check_certificate(plan, a, b, xs, ys)


def test_unnormalised_masses_and_b_rescaled_to_a():
    pts = grid_coordinates((3, 3))
    a = np.zeros(9)
    a[0] = 2.0
    b = np.zeros(9)
    b[8] = 2.0 * (1 + 1e-12)
    plan = GridMultiscaleOT(pts).solve(a, b)
    assert plan.cost == pytest.approx(2.0 * 8.0)
    assert plan.at([0], [8])[0] == pytest.approx(2.0)


def test_repeated_solves_are_identical():
    a, b = _blob_pair(20, 20, seed=1)
    solver = GridMultiscaleOT(grid_coordinates((20, 20)))
    p1, p2 = solver.solve(a, b), solver.solve(a, b)
    np.testing.assert_array_equal(p1.rows, p2.rows)
    np.testing.assert_array_equal(p1.mass, p2.mass)
    assert p1.cost == p2.cost


@HYPOTHESIS
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    zero_frac=st.sampled_from([0.0, 0.3, 0.7]),
    seed=st.integers(0, 2**31 - 1),
    dense_max=st.sampled_from([4, 30, 10**6]),
)
def test_property_optimal_against_pot(h, w, zero_frac, seed, dense_max):
    rng = np.random.default_rng(seed)
    n = h * w
    a, b = _histogram(rng, n, zero_frac), _histogram(rng, n, zero_frac)
    pts = grid_coordinates((h, w))
    old = ms.DENSE_MAX_PAIRS
    ms.DENSE_MAX_PAIRS = dense_max
    try:
        solver = GridMultiscaleOT(pts)
        plan = solver.solve(a, b)
    finally:
        ms.DENSE_MAX_PAIRS = old
    assert plan.cost == pytest.approx(ot.emd2(a, b, sqeuclidean_cost(pts)), rel=1e-10, abs=1e-13)
    _check_certificate(plan, a, b, pts, pts)


@HYPOTHESIS
@given(
    n_points=st.integers(1, 30),
    n_queries=st.integers(1, 20),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_c_transform_is_brute_force_minimum(n_points, n_queries, seed):
    rng = np.random.default_rng(seed)
    points = np.stack(np.divmod(rng.choice(144, n_points, replace=False), 12), axis=1)
    queries = rng.integers(0, 12, size=(n_queries, 2))
    potential = rng.normal(scale=20.0, size=n_points)
    best, arg = ms._c_transform(points, potential, queries)
    full = sqeuclidean_cost(queries, points) - potential[None, :]
    np.testing.assert_allclose(best, full.min(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(full[np.arange(n_queries), arg], best, rtol=0, atol=1e-12)


def test_c_transform_in_blocks(monkeypatch):
    """The blocked passes give the same minima as one block."""
    rng = np.random.default_rng(0)
    points = np.stack(np.divmod(rng.choice(1600, 300, replace=False), 40), axis=1)
    potential = rng.normal(scale=50.0, size=300)
    queries = rng.integers(0, 40, size=(200, 2))
    whole = ms._c_transform(points, potential, queries)
    monkeypatch.setattr(ms, "_BLOCK", 1000)
    blocked = ms._c_transform(points, potential, queries)
    np.testing.assert_array_equal(whole[0], blocked[0])
    np.testing.assert_array_equal(whole[1], blocked[1])


def test_round_limit_is_a_named_error(monkeypatch):
    monkeypatch.setattr(ms, "DENSE_MAX_PAIRS", 64)
    monkeypatch.setattr(ms, "MAX_ROUNDS", 1)
    a, b = _blob_pair(16, 16)
    with pytest.raises(ConvergenceError, match="1 rounds"):
        GridMultiscaleOT(grid_coordinates((16, 16))).solve(a, b)


@pytest.mark.parametrize(
    ("points", "match"),
    [
        (np.zeros((0, 2)), "non-empty"),
        (np.zeros((3, 3)), r"\(k, 2\)"),
        (np.array([[0.0, 0.5], [1.0, 1.0]]), "integer"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), "integer"),
        (np.array([[0.0, 1.0], [2.0, 1.0], [0.0, 1.0]]), "repeated"),
    ],
)
def test_bad_points(points, match):
    with pytest.raises(DistributionError, match=match):
        GridMultiscaleOT(points)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        ([0.5, 0.5, 0.0], [0.5, 0.5, 0.0, 0.0], "sizes"),
        ([0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.5], "same total mass"),
        ([1.5, -0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], "negative"),
        ([np.inf, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], "NaN or infinite"),
    ],
)
def test_bad_histograms(a, b, match):
    with pytest.raises(DistributionError, match=match):
        GridMultiscaleOT(grid_coordinates((2, 2))).solve(a, b)


# ------------------------------------------------------------------------------ integration
def test_grid_plan_exact_switches_to_multiscale_above_the_threshold(monkeypatch):
    a, b = _blob_pair(12, 12, seed=5)
    shape = (12, 12)
    small = grid_plan(a.reshape(shape), b.reshape(shape), "exact")
    assert isinstance(small.plan, GridPlan)  # 144 cells: the tripartite network
    monkeypatch.setattr(grid_module, "TRIPARTITE_MAX_CELLS", 100)
    large = grid_plan(a.reshape(shape), b.reshape(shape), "exact")
    assert isinstance(large, ExactGridPlan)
    assert isinstance(large.plan, OTSolution)
    assert large.cost == pytest.approx(small.cost, rel=1e-12)
    # at() in flat cell indices: the plan's rows are a and its columns b.
    i, j = np.divmod(np.arange(144 * 144), 144)
    dense = large.at(i, j).reshape(144, 144)
    np.testing.assert_allclose(dense.sum(axis=1), a, atol=1e-12)
    np.testing.assert_allclose(dense.sum(axis=0), b, atol=1e-12)
    assert float((dense * sqeuclidean_cost(grid_coordinates(shape))).sum()) == pytest.approx(
        small.cost, rel=1e-12
    )


def test_otq_agent_with_the_multiscale_solver():
    """Same W2 as the tripartite agent after the first episode (both exact, same P^pi); the
    bonuses then come from a different optimal plan, so later episodes may differ."""
    env = GridWorld("paper", max_steps=200)
    multi = OTQLearning(env, beta=1000.0, seed=2, ot_method="multiscale")
    tri = OTQLearning(GridWorld("paper", max_steps=200), beta=1000.0, seed=2)
    first_multi, first_tri = multi.train(1)[0], tri.train(1)[0]
    assert first_multi.w2 == pytest.approx(first_tri.w2, rel=1e-12)
    assert isinstance(multi.last_plan, OTSolution)
    rows = multi.train(4)
    assert all(np.isfinite(r.w2) for r in rows)
    assert multi.bonus_table().max() > 0


def test_otq_config_accepts_multiscale():
    config = resolve_config("otq-quick", sets=["agent.ot_method=multiscale"])
    assert config.agent.ot_method == "multiscale"
