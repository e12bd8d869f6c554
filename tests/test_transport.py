"""Tests of ``otsafe.transport``: exact OT (POT wrapper), the tripartite grid solver and costs.

References are independent of the code under test: POT's ``ot.emd``/``ot.emd2`` on the dense
problem, SciPy's HiGHS linear-programming solver, ``scipy.spatial.distance.cdist`` and closed
forms (Dirac-to-Dirac distance, W2 of a translation).
"""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import linprog
from scipy.spatial.distance import cdist

from otsafe.errors import DistributionError, OtsafeError
from otsafe.transport import (
    ExactOT,
    GridExactOT,
    GridPlan,
    OTSolution,
    check_marginals,
    grid_coordinates,
    ot_plan,
    sqeuclidean_cost,
    wasserstein,
)

COST_RTOL = 1e-10
MARGINAL_ATOL = 1e-12

HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------- helpers
def _random_histogram(rng: np.random.Generator, n: int, zero_frac: float = 0.0) -> np.ndarray:
    """A random probability vector of length ``n`` with about ``zero_frac`` exact zeros."""
    while True:
        h = rng.random(n) * (rng.random(n) >= zero_frac)
        if h.sum() > 0:
            return h / h.sum()


def _assert_cost_close(actual: float, expected: float) -> None:
    assert actual == pytest.approx(expected, rel=COST_RTOL, abs=1e-12)


def _assert_valid_plan(plan: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    assert plan.shape == (a.size, b.size)
    assert np.all(plan >= 0.0)
    np.testing.assert_allclose(plan.sum(axis=1), a, rtol=0, atol=MARGINAL_ATOL)
    np.testing.assert_allclose(plan.sum(axis=0), b, rtol=0, atol=MARGINAL_ATOL)


def _linprog_cost(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> float:
    """Optimal value of Eq. 3 by a generic LP solver (HiGHS), independent of POT."""
    n, m = cost.shape
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m : (i + 1) * m] = 1.0
    for j in range(m):
        a_eq[n + j, j::m] = 1.0
    res = linprog(
        cost.ravel(), A_eq=a_eq, b_eq=np.concatenate([a, b]), bounds=(0, None), method="highs"
    )
    assert res.status == 0
    return float(res.fun)


def _random_grid_problem(
    rng: np.random.Generator, shape: tuple[int, int], zero_frac: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random subsets of the cells of a grid as sources and targets, with random histograms."""
    coords = grid_coordinates(shape)
    n = coords.shape[0]
    src = rng.choice(n, size=rng.integers(1, n + 1), replace=False)
    tgt = rng.choice(n, size=rng.integers(1, n + 1), replace=False)
    a = _random_histogram(rng, src.size, zero_frac)
    b = _random_histogram(rng, tgt.size, zero_frac)
    return coords[src], coords[tgt], a, b


# ---------------------------------------------------------------------------------- costs
def test_grid_coordinates_row_major():
    coords = grid_coordinates((3, 4))
    assert coords.shape == (12, 2)
    assert coords.dtype == np.float64
    for idx, (r, c) in enumerate(coords):
        assert (r, c) == divmod(idx, 4)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (-1, 2)])
def test_grid_coordinates_rejects_empty_shape(shape):
    with pytest.raises(DistributionError, match="grid shape"):
        grid_coordinates(shape)


def test_sqeuclidean_cost_exact_integers_on_integer_coordinates():
    rng = np.random.default_rng(0)
    # Large integer coordinates: the expansion |x|^2 + |y|^2 - 2 x.y would lose exactness.
    x = rng.integers(-(2**20), 2**20, size=(40, 2))
    y = rng.integers(-(2**20), 2**20, size=(30, 2))
    cost = sqeuclidean_cost(x, y)
    exact = [[sum((int(xi[k]) - int(yj[k])) ** 2 for k in range(2)) for yj in y] for xi in x]
    assert cost.shape == (40, 30)
    assert cost.dtype == np.float64
    assert np.array_equal(cost, np.array(exact, dtype=np.float64))
    assert np.all(cost == np.round(cost))


def test_sqeuclidean_cost_grid_cells_are_exact_integers():
    coords = grid_coordinates((15, 15))
    cost = sqeuclidean_cost(coords)
    assert np.array_equal(cost, np.round(cost))
    assert np.array_equal(cost, cost.T)
    assert np.all(np.diag(cost) == 0.0)
    # (0, 0) -> (14, 14): 14^2 + 14^2.
    assert cost[0, -1] == 392.0


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_sqeuclidean_cost_matches_scipy_cdist(dim):
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(17, dim)) * 3.0
    y = rng.normal(size=(11, dim))
    np.testing.assert_allclose(
        sqeuclidean_cost(x, y), cdist(x, y, "sqeuclidean"), rtol=1e-13, atol=1e-13
    )
    np.testing.assert_allclose(
        sqeuclidean_cost(x), cdist(x, x, "sqeuclidean"), rtol=1e-13, atol=1e-13
    )


def test_sqeuclidean_cost_rejects_dimension_mismatch():
    with pytest.raises(DistributionError, match="point sets"):
        sqeuclidean_cost(np.zeros((3, 2)), np.zeros((4, 3)))
    with pytest.raises(DistributionError, match="point sets"):
        sqeuclidean_cost(np.zeros((2, 2, 2)))


# ------------------------------------------------------------------- ot_plan / wasserstein
@pytest.mark.parametrize("seed", range(8))
def test_ot_plan_and_wasserstein_match_pot(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 40, size=2)
    a = _random_histogram(rng, n, zero_frac=0.2 * (seed % 2))
    b = _random_histogram(rng, m, zero_frac=0.2 * (seed % 3 == 0))
    cost = sqeuclidean_cost(rng.normal(size=(n, 2)), rng.normal(size=(m, 2)))
    ref = ot.emd2(a, b, cost)
    plan = ot_plan(a, b, cost)
    _assert_valid_plan(plan, a, b)
    _assert_cost_close(float(np.sum(plan * cost)), ref)
    w2 = wasserstein(a, b, cost)
    assert w2 == pytest.approx(math.sqrt(ref), rel=COST_RTOL, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_ot_plan_cost_matches_linear_programming(seed):
    """Independent of POT: HiGHS on the same linear program (Eq. 3)."""
    rng = np.random.default_rng(100 + seed)
    n, m = rng.integers(1, 8, size=2)
    a = _random_histogram(rng, n, zero_frac=0.25)
    b = _random_histogram(rng, m, zero_frac=0.25)
    cost = rng.random((n, m)) * 10.0
    plan = ot_plan(a, b, cost)
    _assert_valid_plan(plan, a, b)
    expected = _linprog_cost(a, b, cost)
    assert float(np.sum(plan * cost)) == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_ot_plan_unnormalised_equal_masses():
    rng = np.random.default_rng(3)
    a = _random_histogram(rng, 6) * 7.5
    b = _random_histogram(rng, 9) * 7.5
    cost = rng.random((6, 9))
    plan = ot_plan(a, b, cost)
    _assert_valid_plan(plan, a, b)
    _assert_cost_close(float(np.sum(plan * cost)), ot.emd2(a, b, cost))


def test_ot_plan_docstring_example():
    np.testing.assert_array_equal(
        ot_plan([0.5, 0.5], [0.5, 0.5], [[0.0, 1.0], [1.0, 0.0]]), [[0.5, 0.0], [0.0, 0.5]]
    )


@pytest.mark.parametrize("p", [1, 1.5, 2, 3])
def test_wasserstein_p_is_root_of_optimal_cost(p):
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(12, 2)), rng.normal(size=(9, 2))
    a, b = _random_histogram(rng, 12), _random_histogram(rng, 9)
    cost = cdist(x, y) ** p
    expected = ot.emd2(a, b, cost) ** (1.0 / p)
    assert wasserstein(a, b, cost, p=p) == pytest.approx(expected, rel=COST_RTOL)


def test_wasserstein_one_dimensional_closed_form():
    """W1 on the line equals the L1 distance between the CDFs."""
    rng = np.random.default_rng(11)
    pts = np.arange(20.0)
    a, b = _random_histogram(rng, 20), _random_histogram(rng, 20)
    closed = float(np.sum(np.abs(np.cumsum(a) - np.cumsum(b))))
    cost = np.abs(pts[:, None] - pts[None, :])
    assert wasserstein(a, b, cost, p=1) == pytest.approx(closed, rel=1e-10)


# -------------------------------------------------------------------------------- ExactOT
@pytest.mark.parametrize("seed", range(6))
def test_exact_ot_solve_matches_pot(seed):
    rng = np.random.default_rng(200 + seed)
    n, m = rng.integers(1, 30, size=2)
    cost = rng.random((n, m)) * 5.0
    solver = ExactOT(cost)
    assert solver.shape == (n, m)
    for zero_frac in (0.0, 0.3):  # several solves on the same fixed cost
        a = _random_histogram(rng, n, zero_frac)
        b = _random_histogram(rng, m, zero_frac)
        sol = solver.solve(a, b)
        assert isinstance(sol, OTSolution)
        assert sol.shape == (n, m)
        _assert_cost_close(sol.cost, ot.emd2(a, b, cost))
        dense = sol.dense()
        _assert_valid_plan(dense, a, b)
        assert np.all(sol.mass > 0)
        assert sol.rows.size <= n + m - 1
        _assert_cost_close(float(np.sum(dense * cost)), sol.cost)
        np.testing.assert_array_equal(sol.csr().toarray(), dense)
        assert sol.wasserstein() == pytest.approx(math.sqrt(sol.cost), rel=1e-15)
        # Dual potentials: feasible and with zero duality gap.
        assert np.all(cost - sol.u[:, None] - sol.v[None, :] >= -1e-10)
        assert float(sol.u @ a + sol.v @ b) == pytest.approx(sol.cost, rel=1e-9, abs=1e-12)


def test_exact_ot_at_matches_dense():
    rng = np.random.default_rng(5)
    cost = rng.random((15, 12))
    sol = ExactOT(cost).solve(_random_histogram(rng, 15), _random_histogram(rng, 12))
    dense = sol.dense()
    ii, jj = np.meshgrid(np.arange(15), np.arange(12), indexing="ij")
    np.testing.assert_array_equal(sol.at(ii, jj), dense)
    i, j = rng.integers(0, 15, 50), rng.integers(0, 12, 50)
    np.testing.assert_array_equal(sol.at(i, j), dense[i, j])
    assert float(sol.at(int(sol.rows[0]), int(sol.cols[0]))) == dense[sol.rows[0], sol.cols[0]]


def test_exact_ot_docstring_example():
    assert ExactOT([[0.0, 1.0], [1.0, 0.0]]).solve([0.5, 0.5], [0.5, 0.5]).cost == 0.0


# ---------------------------------------------------------------------------- GridExactOT
@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 2), (1, 9), (9, 1), (2, 2), (3, 5), (6, 4), (7, 7), (10, 10)]
)
@pytest.mark.parametrize("zero_frac", [0.0, 0.4])
def test_grid_exact_ot_matches_pot_on_random_cell_subsets(shape, zero_frac):
    rng = np.random.default_rng([shape[0], shape[1], int(10 * zero_frac)])
    for _ in range(4):
        xs, ys, a, b = _random_grid_problem(rng, shape, zero_frac)
        cost = sqeuclidean_cost(xs, ys)
        plan = GridExactOT(xs, ys).solve(a, b)
        assert isinstance(plan, GridPlan)
        assert plan.shape == (xs.shape[0], ys.shape[0])
        _assert_cost_close(plan.cost, ot.emd2(a, b, cost))
        dense = plan.dense()
        _assert_valid_plan(dense, a, b)
        _assert_cost_close(float(np.sum(dense * cost)), plan.cost)
        assert plan.wasserstein() == pytest.approx(math.sqrt(plan.cost), rel=1e-15)


def test_grid_exact_ot_same_points_and_repeated_solves():
    """Default targets = sources; one solver re-used for many problems (as OT-Q does)."""
    rng = np.random.default_rng(21)
    coords = grid_coordinates((8, 6))
    keep = rng.random(coords.shape[0]) > 0.25
    pts = coords[keep]
    solver = GridExactOT(pts)
    assert solver.shape == (pts.shape[0], pts.shape[0])
    cost = sqeuclidean_cost(pts)
    for _ in range(5):
        a = _random_histogram(rng, pts.shape[0], 0.2)
        b = _random_histogram(rng, pts.shape[0], 0.2)
        plan = solver.solve(a, b)
        _assert_cost_close(plan.cost, ot.emd2(a, b, cost))
        _assert_valid_plan(plan.dense(), a, b)


def test_grid_exact_ot_scattered_points():
    """The tripartite reduction is exact for any 2-D points, not only lattice points."""
    rng = np.random.default_rng(22)
    xs, ys = rng.normal(size=(13, 2)), rng.normal(size=(9, 2)) + 1.0
    a, b = _random_histogram(rng, 13), _random_histogram(rng, 9)
    plan = GridExactOT(xs, ys).solve(a, b)
    cost = sqeuclidean_cost(xs, ys)
    _assert_cost_close(plan.cost, ot.emd2(a, b, cost))
    _assert_valid_plan(plan.dense(), a, b)


def test_grid_exact_ot_paper_size_problem():
    coords = grid_coordinates((15, 15))
    rng = np.random.default_rng(23)
    a = _random_histogram(rng, 225, 0.1)
    b = _random_histogram(rng, 225, 0.1)
    plan = GridExactOT(coords).solve(a, b)
    _assert_cost_close(plan.cost, ot.emd2(a, b, sqeuclidean_cost(coords)))
    _assert_valid_plan(plan.dense(), a, b)


def test_grid_plan_at_matches_dense():
    rng = np.random.default_rng(24)
    xs, ys, a, b = _random_grid_problem(rng, (6, 7), 0.3)
    plan = GridExactOT(xs, ys).solve(a, b)
    dense = plan.dense()
    n, m = plan.shape
    for _ in range(200):
        i, j = int(rng.integers(n)), int(rng.integers(m))
        assert float(plan.at(i, j)) == dense[i, j]
    i, j = rng.integers(0, n, (4, 5)), rng.integers(0, m, (4, 5))
    out = plan.at(i, j)
    assert out.shape == (4, 5)
    np.testing.assert_array_equal(out, dense[i, j])


def test_grid_plan_unnormalised_masses():
    rng = np.random.default_rng(25)
    xs, ys, a, b = _random_grid_problem(rng, (5, 5), 0.0)
    a, b = 3.0 * a, 3.0 * b
    plan = GridExactOT(xs, ys).solve(a, b)
    _assert_cost_close(plan.cost, ot.emd2(a, b, sqeuclidean_cost(xs, ys)))
    _assert_valid_plan(plan.dense(), a, b)


def test_grid_exact_ot_docstring_example():
    plan = GridExactOT(grid_coordinates((2, 2))).solve([0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5])
    assert plan.cost == pytest.approx(1.0, abs=1e-12)


def test_grid_plan_wasserstein_only_p2():
    plan = GridExactOT(grid_coordinates((2, 2))).solve([1, 0, 0, 0], [0, 0, 0, 1])
    assert plan.wasserstein() == pytest.approx(math.sqrt(2.0), rel=1e-15)
    with pytest.raises(DistributionError):
        plan.wasserstein(p=1)


def test_grid_exact_ot_duplicate_source_points():
    xs = np.array([[0.0, 0.0], [0.0, 0.0], [2.0, 1.0]])
    ys = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    a, b = np.array([0.2, 0.3, 0.5]), np.array([0.3, 0.4, 0.3])
    plan = GridExactOT(xs, ys).solve(a, b)
    _assert_cost_close(plan.cost, ot.emd2(a, b, sqeuclidean_cost(xs, ys)))
    _assert_valid_plan(plan.dense(), a, b)


def test_grid_exact_ot_duplicate_target_points():
    xs = np.array([[0.0, 0.0], [0.0, 1.0]])
    ys = np.array([[1.0, 0.0], [1.0, 0.0]])
    a, b = np.array([0.5, 0.5]), np.array([0.3, 0.7])
    plan = GridExactOT(xs, ys).solve(a, b)
    _assert_cost_close(plan.cost, ot.emd2(a, b, sqeuclidean_cost(xs, ys)))
    _assert_valid_plan(plan.dense(), a, b)


# ------------------------------------------------------------------ hypothesis properties
_weights = st.one_of(st.just(0.0), st.floats(1e-4, 1.0))


def _histograms(shape):
    """Non-negative arrays with some exact zeros and positive total mass."""
    return hnp.arrays(np.float64, shape, elements=_weights).filter(lambda x: x.sum() > 0)


@st.composite
def _grid_problems(draw):
    """Random histograms on random subsets of a small grid (sources and targets differ)."""
    h = draw(st.integers(1, 6))
    w = draw(st.integers(1, 6))
    coords = grid_coordinates((h, w))
    n = coords.shape[0]
    src = draw(hnp.arrays(np.bool_, n).filter(np.any))
    tgt = draw(hnp.arrays(np.bool_, n).filter(np.any))
    a = draw(_histograms(int(src.sum())))
    b = draw(_histograms(int(tgt.sum())))
    return coords[src], coords[tgt], a / a.sum(), b / b.sum()


@HYPOTHESIS
@given(_grid_problems())
def test_property_exact_solvers_marginals_and_cost(problem):
    xs, ys, a, b = problem
    cost = sqeuclidean_cost(xs, ys)
    ref = ot.emd2(a, b, cost)

    plan = ot_plan(a, b, cost)
    _assert_valid_plan(plan, a, b)
    _assert_cost_close(float(np.sum(plan * cost)), ref)

    sol = ExactOT(cost).solve(a, b)
    _assert_valid_plan(sol.dense(), a, b)
    _assert_cost_close(sol.cost, ref)
    _assert_cost_close(float(np.sum(sol.dense() * cost)), sol.cost)

    gplan = GridExactOT(xs, ys).solve(a, b)
    gdense = gplan.dense()
    _assert_valid_plan(gdense, a, b)
    _assert_cost_close(gplan.cost, ref)
    _assert_cost_close(float(np.sum(gdense * cost)), gplan.cost)


@HYPOTHESIS
@given(_grid_problems())
def test_property_w2_symmetric(problem):
    xs, _, a, _ = problem
    rng = np.random.default_rng(int(a.size))
    b = _random_histogram(rng, a.size, 0.3)
    cost = sqeuclidean_cost(xs)
    ab, ba = wasserstein(a, b, cost), wasserstein(b, a, cost)
    assert ab == pytest.approx(ba, rel=1e-10, abs=1e-12)
    solver = GridExactOT(xs)
    assert solver.solve(a, b).wasserstein() == pytest.approx(ab, rel=1e-10, abs=1e-12)
    assert solver.solve(b, a).wasserstein() == pytest.approx(ab, rel=1e-10, abs=1e-12)


@HYPOTHESIS
@given(_grid_problems())
def test_property_w2_of_identical_histograms_is_zero(problem):
    xs, _, a, _ = problem
    cost = sqeuclidean_cost(xs)
    # Squared distances (the optimal costs) are compared: W2 = sqrt(cost) turns a rounding
    # residue of 1e-16 in the cost into 1e-8.
    assert wasserstein(a, a, cost) ** 2 == pytest.approx(0.0, abs=1e-12)
    plan = ot_plan(a, a, cost)
    np.testing.assert_allclose(plan, np.diag(a), rtol=0, atol=MARGINAL_ATOL)
    assert ExactOT(cost).solve(a, a).cost == pytest.approx(0.0, abs=1e-12)
    gplan = GridExactOT(xs).solve(a, a)
    assert gplan.cost == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(gplan.dense(), np.diag(a), rtol=0, atol=MARGINAL_ATOL)


@HYPOTHESIS
@given(
    hnp.arrays(np.float64, (6, 2), elements=st.floats(-50, 50)).filter(
        lambda p: np.unique(p, axis=0).shape[0] == 6
    ),
    st.integers(0, 5),
    st.integers(0, 5),
    st.floats(1e-3, 1e3),
)
def test_property_dirac_to_dirac_is_euclidean_distance(points, i, j, mass):
    a = np.zeros(6)
    b = np.zeros(6)
    a[i] = mass
    b[j] = mass
    dist = float(np.hypot(*(points[i] - points[j])))
    cost = sqeuclidean_cost(points)
    # Mass m moved over distance d costs m d^2.
    assert wasserstein(a / mass, b / mass, cost) == pytest.approx(dist, rel=1e-12, abs=1e-12)
    assert ExactOT(cost).solve(a, b).cost == pytest.approx(mass * dist**2, rel=1e-12, abs=1e-9)
    grid = GridExactOT(points).solve(a, b)
    assert grid.cost == pytest.approx(mass * dist**2, rel=1e-12, abs=1e-9)
    assert float(grid.at(i, j)) == pytest.approx(mass, rel=1e-12)


@st.composite
def _translations(draw):
    """A histogram on a box of a grid and a lattice vector that keeps the box on the grid."""
    hh, ww = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    bh, bw = draw(st.integers(1, hh)), draw(st.integers(1, ww))
    r0, c0 = draw(st.integers(0, hh - bh)), draw(st.integers(0, ww - bw))
    dr = draw(st.integers(-r0, hh - bh - r0))
    dc = draw(st.integers(-c0, ww - bw - c0))
    box = draw(_histograms((bh, bw)))
    return (hh, ww), (r0, c0), (dr, dc), box / box.sum()


@HYPOTHESIS
@given(_translations())
def test_property_translation_by_lattice_vector(case):
    (hh, ww), (r0, c0), (dr, dc), box = case
    bh, bw = box.shape
    a = np.zeros((hh, ww))
    b = np.zeros((hh, ww))
    a[r0 : r0 + bh, c0 : c0 + bw] = box
    b[r0 + dr : r0 + dr + bh, c0 + dc : c0 + dc + bw] = box
    a, b = a.ravel(), b.ravel()
    coords = grid_coordinates((hh, ww))
    expected = float(dr**2 + dc**2)  # W2^2 = |d|^2
    cost = sqeuclidean_cost(coords)
    assert wasserstein(a, b, cost) ** 2 == pytest.approx(expected, rel=1e-10, abs=1e-12)
    gplan = GridExactOT(coords).solve(a, b)
    assert gplan.cost == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert gplan.wasserstein() ** 2 == pytest.approx(expected, rel=1e-10, abs=1e-12)
    if expected > 0:
        assert wasserstein(a, b, cost) == pytest.approx(math.hypot(dr, dc), rel=1e-10)


# ------------------------------------------------------------------------------ bad input
GOOD_A = np.array([0.25, 0.25, 0.5])
GOOD_B = np.array([0.5, 0.5])
GOOD_COST = np.arange(6.0).reshape(3, 2)


def _solvers_ab():
    """Every entry point that takes two histograms, as callables f(a, b)."""
    pts_a = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    pts_b = np.array([[2.0, 2.0], [1.0, 1.0]])
    return {
        "check_marginals": lambda a, b: check_marginals(a, b, GOOD_COST),
        "ot_plan": lambda a, b: ot_plan(a, b, GOOD_COST),
        "wasserstein": lambda a, b: wasserstein(a, b, GOOD_COST),
        "ExactOT": lambda a, b: ExactOT(GOOD_COST).solve(a, b),
        "GridExactOT": lambda a, b: GridExactOT(pts_a, pts_b).solve(a, b),
    }


_SOLVER_NAMES = list(_solvers_ab())


@pytest.mark.parametrize("solver", _SOLVER_NAMES)
@pytest.mark.parametrize(
    ("a", "b", "pattern"),
    [
        ([0.25, 0.25, 0.5], [0.5, 0.6], "same total mass"),
        ([0.25, 0.25, 0.5], [0.5, 0.5 + 1e-6], "same total mass"),
        ([0.5, 0.5, 0.0], [2.0, -1.0], "^b has negative"),
        ([-0.5, 1.0, 0.5], [0.5, 0.5], "^a has negative"),
        ([np.nan, 0.5, 0.5], [0.5, 0.5], "^a has NaN"),
        ([0.25, 0.25, 0.5], [np.inf, 0.5], "^b has NaN or infinite"),
        ([0.0, 0.0, 0.0], [0.0, 0.0], "^a has zero total mass"),
        ([0.25, 0.25, 0.5], [0.0, 0.0], "^b has zero total mass"),
        ([[0.25, 0.25, 0.5]], [0.5, 0.5], "^a must be a non-empty 1-D"),
        ([0.25, 0.25, 0.5], [[0.25, 0.25], [0.25, 0.25]], "^b must be a non-empty 1-D"),
        ([], [0.5, 0.5], "^a must be a non-empty 1-D"),
    ],
)
def test_bad_histograms_raise_distribution_error(solver, a, b, pattern):
    with pytest.raises(DistributionError, match=pattern) as info:
        _solvers_ab()[solver](np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    assert isinstance(info.value, OtsafeError)
    assert isinstance(info.value, ValueError)


def test_masses_equal_within_tolerance_are_accepted():
    b = GOOD_B * (1.0 + 1e-12)
    plan = ot_plan(GOOD_A, b, GOOD_COST)
    np.testing.assert_allclose(plan.sum(axis=1), GOOD_A, rtol=0, atol=MARGINAL_ATOL)
    sol = ExactOT(GOOD_COST).solve(GOOD_A, b)
    np.testing.assert_allclose(sol.dense().sum(axis=1), GOOD_A, rtol=0, atol=MARGINAL_ATOL)


@pytest.mark.parametrize("entry", ["check_marginals", "ot_plan", "wasserstein"])
@pytest.mark.parametrize(
    ("cost", "pattern"),
    [
        (np.zeros((2, 3)), r"cost has shape \(2, 3\), expected \(3, 2\)"),
        (np.zeros((3, 3)), "cost has shape"),
        (np.zeros(6), "cost has shape"),
        (np.array([[0.0, 1.0], [np.nan, 1.0], [1.0, 0.0]]), "cost has NaN or infinite"),
        (np.array([[0.0, 1.0], [np.inf, 1.0], [1.0, 0.0]]), "cost has NaN or infinite"),
    ],
)
def test_bad_cost_raises_distribution_error(entry, cost, pattern):
    fn = {"check_marginals": check_marginals, "ot_plan": ot_plan, "wasserstein": wasserstein}[entry]
    with pytest.raises(DistributionError, match=pattern):
        fn(GOOD_A, GOOD_B, cost)


def test_wasserstein_rejects_negative_cost():
    with pytest.raises(DistributionError, match="non-negative"):
        wasserstein(GOOD_A, GOOD_B, GOOD_COST - 1.0)


@pytest.mark.parametrize("p", [0.5, 0.0, -2.0, float("nan")])
def test_wasserstein_rejects_p_below_one(p):
    with pytest.raises(DistributionError, match="p must be >= 1"):
        wasserstein(GOOD_A, GOOD_B, GOOD_COST, p=p)


@pytest.mark.parametrize(
    "cost",
    [np.zeros((0, 3)), np.zeros(4), np.array([[0.0, np.nan]]), np.array([[np.inf, 1.0]])],
)
def test_exact_ot_rejects_bad_fixed_cost(cost):
    with pytest.raises(DistributionError, match="cost must be"):
        ExactOT(cost)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (np.full(2, 0.5), GOOD_B),
        (GOOD_A, np.full(3, 1 / 3)),
        (np.full(4, 0.25), np.full(4, 0.25)),
    ],
)
def test_fixed_cost_solvers_reject_wrong_sizes(a, b):
    with pytest.raises(DistributionError, match=r"a and b have sizes"):
        ExactOT(GOOD_COST).solve(a, b)
    pts_a = grid_coordinates((3, 1))
    pts_b = grid_coordinates((1, 2))
    with pytest.raises(DistributionError, match=r"a and b have sizes"):
        GridExactOT(pts_a, pts_b).solve(a, b)


@pytest.mark.parametrize(
    ("sources", "targets", "pattern"),
    [
        (np.zeros((3, 3)), None, "^sources must be a non-empty"),
        (np.zeros(4), None, "^sources must be a non-empty"),
        (np.zeros((0, 2)), None, "^sources must be a non-empty"),
        (np.zeros((2, 2, 2)), None, "^sources must be a non-empty"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), None, "^sources has NaN or infinite"),
        (np.zeros((3, 2)), np.zeros((3, 1)), "^targets must be a non-empty"),
        (np.zeros((3, 2)), np.zeros((0, 2)), "^targets must be a non-empty"),
        (np.zeros((3, 2)), np.array([[np.inf, 0.0]]), "^targets has NaN or infinite"),
    ],
)
def test_grid_exact_ot_rejects_bad_coordinates(sources, targets, pattern):
    with pytest.raises(DistributionError, match=pattern):
        GridExactOT(sources, targets)
