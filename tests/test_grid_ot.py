"""Tests of optimal transport on grids: ``GridSinkhorn`` and ``grid_plan`` / ``grid_wasserstein``.

References are independent of the code under test: POT's log-domain Sinkhorn
(``ot.sinkhorn(..., method="sinkhorn_log")``) and exact solver (``ot.emd2``) on the dense
``n x n`` problem with ``C = sqeuclidean_cost(grid_coordinates(shape))``, and closed-form bounds of
entropic OT (feasibility: ``<T, C> >= W2^2``; ``OT_eps(a, a) <= eps * H(a)``; monotonicity of
``<T_eps, C>`` in ``eps``).

Tests named after a behaviour that once was a bug (warm start after a source change, column
marginal under over-relaxation, restart livelock, float32 resolution, shape checks, indexed CPU
devices) are regression tests for bugs found while writing this file.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otsafe.errors import ConfigError, ConvergenceError, DistributionError, OtsafeError
from otsafe.transport import (
    AUTO_EXACT_MAX_CELLS,
    ExactGridPlan,
    GridSinkhorn,
    GridSinkhornPlan,
    SinkhornInfo,
    grid_coordinates,
    grid_plan,
    grid_wasserstein,
    sqeuclidean_cost,
)
from otsafe.transport._pot import ot

PROPERTY = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Run torch single-threaded: the solver's tiny batched products (10 x 10 blocks) are up to
    1000x slower with two OpenMP threads on a loaded 2-core machine; results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------- helpers
def _cost(shape: tuple[int, int]) -> np.ndarray:
    return sqeuclidean_cost(grid_coordinates(shape))


def _hist(rng: np.random.Generator, shape: tuple[int, int], zeros=()) -> np.ndarray:
    """A random positive probability histogram on ``shape`` with exact zeros at flat ``zeros``."""
    h = rng.random(shape) + 0.1
    h.flat[list(zeros)] = 0.0
    return h / h.sum()


def _blob(shape: tuple[int, int], center: tuple[float, float], width: float) -> np.ndarray:
    """A discretised Gaussian bump (smooth, strictly positive), normalised."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    h = np.exp(-((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / width)
    return h / h.sum()


def _pot_sinkhorn(a: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """POT's log-domain Sinkhorn plan on the dense problem (reference)."""
    with np.errstate(divide="ignore"):  # POT takes log(0) = -inf for empty cells
        plan, log = ot.sinkhorn(
            a.ravel(),
            b.ravel(),
            _cost(a.shape),
            reg=eps,
            method="sinkhorn_log",
            stopThr=1e-13,
            numItermax=100_000,
            log=True,
        )
    assert log["err"][-1] < 1e-12  # the reference itself converged
    return np.asarray(plan)


def _emd2(a: np.ndarray, b: np.ndarray) -> float:
    return float(ot.emd2(a.ravel(), b.ravel(), _cost(a.shape), numItermax=1_000_000))


def _entropic_objective(plan: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float) -> float:
    r""":math:`\langle T, C\rangle + \varepsilon \mathrm{KL}(T | a \otimes b)` (mass 1, exact
    marginals), the value the dual potentials attain at the optimum."""
    prod = np.outer(a.ravel(), b.ravel())
    pos = plan > 0
    kl = float(np.sum(plan[pos] * np.log(plan[pos] / prod[pos])))
    return float(np.sum(plan * _cost(a.shape))) + eps * kl


def _l1(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.abs(np.ravel(x) - np.ravel(y)).sum())


# ---------------------------------------------------------------- 1. vs POT's Sinkhorn
@pytest.mark.parametrize(
    ("shape", "eps"),
    [((5, 7), 0.5), ((5, 7), 2.0), ((6, 4), 0.25), ((1, 6), 1.0), ((6, 1), 1.0)],
)
def test_plan_matches_pot_log_sinkhorn(shape, eps):
    rng = np.random.default_rng(7)
    a, b = _hist(rng, shape), _hist(rng, shape)
    ref = _pot_sinkhorn(a, b, eps)
    plan = GridSinkhorn(shape, epsilon=eps, tol=1e-12).solve(a, b)
    assert isinstance(plan, GridSinkhornPlan)
    assert isinstance(plan.info, SinkhornInfo)
    assert plan.info.converged
    assert plan.info.marginal_error <= 1e-12
    assert plan.info.epsilon == eps
    assert plan.info.tol == 1e-12

    dense = plan.dense()
    assert dense.shape == (a.size, a.size)
    np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-8)
    assert plan.cost == pytest.approx(float(np.sum(ref * _cost(shape))), rel=1e-9, abs=1e-12)
    assert plan.wasserstein() == pytest.approx(math.sqrt(plan.cost), rel=1e-12)

    rows, cols = plan.marginals()
    assert rows.shape == cols.shape == shape
    # The reported error is the row marginal's l1 error of the returned plan.
    assert _l1(rows, a) == pytest.approx(plan.info.marginal_error, rel=1e-3, abs=1e-14)
    assert _l1(cols, b) <= 1e-10
    assert _l1(dense.sum(axis=1), a) <= plan.info.marginal_error + 1e-14

    # dual value = <f, a> + <g, b> = <T, C> + eps KL(T | a x b) at the optimum; POT's
    # sinkhorn2 would return only <T, C> (linear loss), which the KL term makes strictly smaller.
    objective = _entropic_objective(ref, a, b, eps)
    assert plan.dual_value == pytest.approx(objective, rel=1e-9, abs=1e-11)
    assert plan.dual_value > plan.cost


@pytest.mark.parametrize(
    ("zeros_a", "zeros_b"),
    [
        ([0, 7, 8, 9, 21], []),  # obstacles in the source only
        ([], [3, 4, 12, 29]),  # in the target only
        ([0, 1, 2, 13, 14], [13, 14, 20, 25, 26, 27]),  # different patterns, overlapping
        (list(range(15)), list(range(15, 30))),  # disjoint supports (top / bottom half)
    ],
)
def test_zero_mass_cells_carry_no_mass_and_match_pot(zeros_a, zeros_b):
    shape, eps = (6, 5), 0.5
    rng = np.random.default_rng(11)
    a, b = _hist(rng, shape, zeros_a), _hist(rng, shape, zeros_b)
    ref = _pot_sinkhorn(a, b, eps)
    plan = GridSinkhorn(shape, epsilon=eps, tol=1e-12).solve(a, b)
    f, g = plan.potentials()
    assert np.all(np.isfinite(f))
    assert np.all(np.isfinite(g))

    dense = plan.dense()
    assert np.all(dense >= 0.0)
    assert np.all(dense[zeros_a, :] == 0.0)
    assert np.all(dense[:, zeros_b] == 0.0)
    rows, cols = plan.marginals()
    assert np.all(rows.flat[zeros_a] == 0.0)
    assert np.all(cols.flat[zeros_b] == 0.0)
    np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-8)
    assert plan.cost == pytest.approx(float(np.sum(ref * _cost(shape))), rel=1e-9)
    assert _l1(rows, a) <= plan.info.marginal_error + 1e-14 <= 1e-12 + 1e-14
    assert _l1(cols, b) <= 1e-10


def test_total_mass_scales_the_plan():
    shape, eps = (4, 5), 1.0
    rng = np.random.default_rng(3)
    a, b = _hist(rng, shape, [2]), _hist(rng, shape, [7])
    solver = GridSinkhorn(shape, epsilon=eps, tol=1e-12)
    unit, heavy = solver.solve(a, b), solver.solve(3.0 * a, 3.0 * b)
    assert heavy.mass == pytest.approx(3.0)
    np.testing.assert_allclose(heavy.dense(), 3.0 * unit.dense(), rtol=1e-9, atol=1e-15)
    assert heavy.cost == pytest.approx(3.0 * unit.cost, rel=1e-9)
    rows, cols = heavy.marginals()
    assert _l1(rows, 3.0 * a) <= 3.0 * heavy.info.marginal_error + 1e-13  # error is relative
    np.testing.assert_allclose(cols, 3.0 * b, rtol=0, atol=1e-10)


def test_flat_histograms_with_shape():
    shape = (3, 4)
    rng = np.random.default_rng(0)
    a, b = _hist(rng, shape), _hist(rng, shape)
    grid = grid_plan(a, b, "sinkhorn", epsilon=0.5, tol=1e-11)
    flat = grid_plan(a.ravel(), b.ravel(), "sinkhorn", shape=shape, epsilon=0.5, tol=1e-11)
    assert flat.shape == shape
    np.testing.assert_array_equal(flat.dense(), grid.dense())
    exact = grid_plan(a.ravel(), b.ravel(), "exact", shape=shape)
    assert exact.cost == pytest.approx(_emd2(a, b), rel=1e-10)


# ----------------------------------------------------------------- 2. vs exact OT (emd2)
def test_entropic_cost_decreases_to_exact_w2():
    shape = (7, 7)
    rng = np.random.default_rng(5)
    a, b = _hist(rng, shape), _hist(rng, shape)
    exact = _emd2(a, b)
    eps_list = [2.0, 1.0, 0.5, 0.2, 0.05]
    costs = [GridSinkhorn(shape, epsilon=e, tol=1e-10).solve(a, b).cost for e in eps_list]
    # The entropic plan is feasible, so it cannot beat the optimum; <T_eps, C> grows with eps.
    assert all(c >= exact - 1e-9 for c in costs)
    assert all(hi >= lo - 1e-9 for hi, lo in itertools.pairwise(costs))
    rel = [(c - exact) / exact for c in costs]
    assert rel[-1] < rel[1]
    assert rel[0] > 0.1  # eps = 2 blurs visibly: the comparison is not vacuous
    assert rel[-1] < 0.02


@pytest.mark.parametrize(
    ("shape", "zeros_a", "zeros_b"),
    [((4, 4), [], []), ((5, 6), [0, 3, 7, 20], [1, 3, 8, 15, 29]), ((3, 8), [5], list(range(8)))],
)
def test_exact_grid_wasserstein_matches_emd2(shape, zeros_a, zeros_b):
    rng = np.random.default_rng(sum(shape))
    a, b = _hist(rng, shape, zeros_a), _hist(rng, shape, zeros_b)
    expected = math.sqrt(_emd2(a, b))
    assert grid_wasserstein(a, b, method="exact") == pytest.approx(expected, rel=0, abs=1e-9)
    assert grid_wasserstein(a, b) == pytest.approx(expected, rel=0, abs=1e-9)  # auto: exact


@pytest.mark.parametrize(
    ("shape", "zeros_a", "zeros_b"),
    [
        ((5, 6), [0, 3, 7, 20], [1, 3, 8, 15, 29]),
        ((6, 6), list(range(6, 12)), list(range(0, 36, 6))),
        ((4, 7), [], [27]),
    ],
)
def test_exact_plan_entries_form_an_optimal_plan(shape, zeros_a, zeros_b):
    rng = np.random.default_rng(17)
    a, b = 2.0 * _hist(rng, shape, zeros_a), 2.0 * _hist(rng, shape, zeros_b)  # mass 2
    plan = grid_plan(a, b, method="exact")
    assert isinstance(plan, ExactGridPlan)
    n = a.size
    support = np.flatnonzero((a.ravel() > 0) | (b.ravel() > 0))
    np.testing.assert_array_equal(np.sort(plan.support), support)

    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    dense = plan.at(ii, jj)
    assert dense.shape == (n, n)
    assert np.all(dense >= 0.0)
    np.testing.assert_allclose(dense.sum(axis=1), a.ravel(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dense.sum(axis=0), b.ravel(), rtol=0, atol=1e-12)
    exact = _emd2(a, b)
    assert float(np.sum(dense * _cost(shape))) == pytest.approx(exact, rel=1e-10)
    assert plan.cost == pytest.approx(exact, rel=1e-10)
    assert plan.wasserstein() == pytest.approx(math.sqrt(exact), rel=1e-10)
    assert np.all(dense[zeros_a, :] == 0.0)
    assert np.all(dense[:, zeros_b] == 0.0)
    # Cells outside the support (empty in both) answer 0 from any pair.
    outside = np.setdiff1d(np.arange(n), support)
    if outside.size:
        assert np.all(plan.at(outside, np.zeros_like(outside)) == 0.0)
        assert np.all(plan.at(np.full_like(outside, support[0]), outside) == 0.0)
    # Scalars and arbitrary index shapes are answered entrywise.
    i, j = int(support[0]), int(support[-1])
    assert float(plan.at(i, j)) == dense[i, j]
    np.testing.assert_array_equal(plan.at(ii[:3, :4], jj[:3, :4]), dense[:3, :4])


def test_debiased_sinkhorn_is_closer_to_exact():
    shape = (12, 12)
    a, b = _blob(shape, (3.5, 4.0), 6.0), _blob(shape, (7.5, 7.0), 6.0)
    exact = grid_wasserstein(a, b, "exact") ** 2
    kw = {"epsilon": 2.0, "tol": 1e-9}
    biased = grid_wasserstein(a, b, "sinkhorn", **kw) ** 2
    debiased = grid_wasserstein(a, b, "sinkhorn", debiased=True, **kw) ** 2
    assert biased - exact > 1.0  # about eps per unit mass
    assert abs(debiased - exact) < 0.1 * (biased - exact)
    assert grid_wasserstein(a, a, "sinkhorn", debiased=True, **kw) == pytest.approx(0.0, abs=1e-4)


# ------------------------------------------------------------------- 4. small epsilon
@pytest.mark.parametrize("eps", [1e-2, 1e-3])
def test_small_epsilon_is_stable_and_near_exact(eps):
    shape = (10, 10)
    a, b = _blob(shape, (2.5, 3.0), 4.0), _blob(shape, (6.5, 6.0), 6.0)
    exact = _emd2(a, b)
    plan = GridSinkhorn(shape, epsilon=eps, tol=1e-6, max_iter=20_000).solve(a, b)
    assert plan.info.converged
    assert plan.info.marginal_error <= 1e-6
    f, g = plan.potentials()
    assert np.all(np.isfinite(f))
    assert np.all(np.isfinite(g))
    assert np.abs(f).max() < 2 * _cost(shape).max()  # potentials are costs, not eps-blown
    rows, cols = plan.marginals()
    assert np.all(np.isfinite(rows))
    assert _l1(rows, a) <= 1.01 * plan.info.marginal_error
    assert _l1(cols, b) <= 1e-5
    assert np.isfinite(plan.cost)
    assert plan.cost == pytest.approx(exact, rel=1e-3)


def test_small_epsilon_with_obstacles():
    # eps = 0.05 (diameter^2 / 3240); at 0.01 with this wall, Sinkhorn needs > 3000 iterations.
    shape, eps = (10, 10), 5e-2
    wall = [r * 10 + 4 for r in range(2, 8)] + [22, 23, 25, 26]
    rng = np.random.default_rng(9)
    a, b = _hist(rng, shape, wall), _hist(rng, shape, [*wall, *range(10)])
    plan = GridSinkhorn(shape, epsilon=eps, tol=1e-4).solve(a, b)
    f, g = plan.potentials()
    assert np.all(np.isfinite(f))
    assert np.all(np.isfinite(g))
    assert plan.cost == pytest.approx(_emd2(a, b), rel=1e-3)
    rows, cols = plan.marginals()
    assert np.all(rows.flat[wall] == 0.0)
    assert np.all(cols.flat[[*wall, *range(10)]] == 0.0)


def test_iteration_budget_exhausted():
    shape = (10, 10)
    a, b = _blob(shape, (2.5, 3.0), 4.0), _blob(shape, (6.5, 6.0), 6.0)
    with pytest.raises(ConvergenceError, match=r"tol=1e-09.*max_iter=1"):
        GridSinkhorn(shape, epsilon=1e-2, tol=1e-9, max_iter=1).solve(a, b)
    plan = GridSinkhorn(shape, epsilon=1e-2, tol=1e-9, max_iter=1, strict=False).solve(a, b)
    assert not plan.info.converged
    assert math.isfinite(plan.info.marginal_error)
    assert plan.info.marginal_error > plan.info.tol
    # The reported error is the row marginal's error of the plan returned.
    rows, _ = plan.marginals()
    assert _l1(rows, a) == pytest.approx(plan.info.marginal_error, rel=1e-6)


# --------------------------------------------------------------- 5. float32 vs float64
def test_float32_matches_float64():
    shape = (10, 10)
    rng = np.random.default_rng(1)
    a, b = _hist(rng, shape), _hist(rng, shape)
    p64 = GridSinkhorn(shape, epsilon=1.0, tol=1e-10).solve(a, b)
    p32 = GridSinkhorn(shape, epsilon=1.0, tol=1e-5, dtype="float32").solve(a, b)
    assert p32.f.dtype == torch.float32
    assert p64.f.dtype == torch.float64
    f32, _ = p32.potentials()
    assert f32.dtype == np.float64
    dense64 = p64.dense()
    assert dense64.max() > 1e-3  # the tolerance below is meaningful against the entries
    np.testing.assert_allclose(p32.dense(), dense64, rtol=0, atol=1e-5)
    assert p32.cost == pytest.approx(p64.cost, rel=1e-4)
    # Same with torch dtypes.
    p32t = GridSinkhorn(shape, epsilon=1.0, tol=1e-5, dtype=torch.float32).solve(a, b)
    np.testing.assert_array_equal(p32t.dense(), p32.dense())


def test_float32_unreachable_tol_is_not_reported_converged():
    shape = (10, 10)
    rng = np.random.default_rng(1)
    a, b = _hist(rng, shape), _hist(rng, shape)
    kw = {"epsilon": 1.0, "tol": 1e-12, "max_iter": 400}
    assert GridSinkhorn(shape, **kw).solve(a, b).info.converged  # float64 reaches it
    with pytest.raises(ConvergenceError, match="float64"):
        GridSinkhorn(shape, dtype="float32", **kw).solve(a, b)
    plan = GridSinkhorn(shape, dtype="float32", strict=False, **kw).solve(a, b)
    assert not plan.info.converged
    assert 1e-12 < plan.info.marginal_error < 1e-4


def test_float32_dirac_unreachable_tol_is_not_reported_converged():
    a = np.zeros((10, 10))
    b = np.zeros((10, 10))
    a[0, 0] = b[9, 9] = 1.0
    solver = GridSinkhorn(
        (10, 10), epsilon=0.1, tol=1e-12, dtype="float32", strict=False, max_iter=200
    )
    plan = solver.solve(a, b)
    rows, _ = plan.marginals()
    assert _l1(rows, a) <= 10 * plan.info.tol or not plan.info.converged


# ------------------------------------------------------------------------ 6. warm start
def test_warm_start_after_target_change():
    shape, eps, tol = (8, 8), 1.0, 1e-4
    rng = np.random.default_rng(0)
    a, b = _hist(rng, shape), _hist(rng, shape)
    solver = GridSinkhorn(shape, epsilon=eps, tol=tol)
    first = solver.solve(a, b)
    b2 = b * (1.0 + 1e-3 * rng.standard_normal(shape))
    b2 *= a.sum() / b2.sum()
    reference = GridSinkhorn(shape, epsilon=eps, tol=1e-12).solve(a, b2).dense()
    cold = solver.solve(a, b2)
    warm = solver.solve(a, b2, warm_start=first)
    assert warm.info.converged
    assert warm.info.iterations < cold.info.iterations / 2
    # Both are the entropic plan of (a, b2) to within the tolerance (about 1.5 tol in l1).
    assert _l1(cold.dense(), reference) <= 5 * tol
    assert _l1(warm.dense(), reference) <= 5 * tol
    rows, cols = warm.marginals()
    assert _l1(rows, a) <= tol
    assert _l1(cols, b2) <= 2 * tol


def test_warm_start_to_tight_tolerance_gives_the_cold_plan():
    shape = (8, 8)
    rng = np.random.default_rng(0)
    a, b = _hist(rng, shape), _hist(rng, shape)
    solver = GridSinkhorn(shape, epsilon=0.5, tol=1e-10)
    b2 = b * (1.0 + 0.01 * rng.standard_normal(shape))
    b2 *= a.sum() / b2.sum()
    cold = solver.solve(a, b2)
    for start in (
        solver.solve(a, b),
        GridSinkhorn(shape, epsilon=0.5, tol=1e-5, dtype="float32").solve(a, b),
        GridSinkhorn(shape, epsilon=4.0, tol=1e-3).solve(b, a),  # a poor start
    ):
        warm = solver.solve(a, b2, warm_start=start)
        assert warm.f.dtype == torch.float64
        assert warm.info.converged
        np.testing.assert_allclose(warm.dense(), cold.dense(), rtol=0, atol=1e-9)
        _, cols = warm.marginals()
        assert _l1(cols, b2) <= 1e-9


def test_warm_start_after_source_change():
    shape = (8, 8)
    rng = np.random.default_rng(0)
    a, b = _hist(rng, shape), _hist(rng, shape)
    solver = GridSinkhorn(shape, epsilon=0.5, tol=1e-10)
    first = solver.solve(a, b)
    a2 = a * (1.0 + 0.05 * rng.standard_normal(shape))
    a2 *= b.sum() / a2.sum()
    warm = solver.solve(a2, b, warm_start=first)
    _, cols = warm.marginals()
    assert _l1(cols, b) <= 1e-8  # 2.7e-2 observed, with info.converged True


def test_column_marginal_within_tol_with_default_omega():
    shape = (6, 6)
    rng = np.random.default_rng(5)
    a = rng.random(shape)
    b = rng.random(shape) ** 3
    a, b = a / a.sum(), b / b.sum()
    plan = GridSinkhorn(shape, epsilon=0.5, tol=1e-2).solve(a, b)
    assert plan.info.converged
    _, cols = plan.marginals()
    assert _l1(cols, b) <= plan.info.tol  # 0.0117 observed


def test_default_omega_converges_on_a_tiny_problem():
    a = np.array([[0.31962496, 0.23393468], [0.16693612, 0.27950424]])
    b = np.array([[0.76315999, 0.23684001], [0.0, 0.0]])
    a, b = a / a.sum(), b / b.sum()
    plain = GridSinkhorn((2, 2), epsilon=0.5, tol=1e-10, omega=1.0).solve(a, b)
    assert plain.info.iterations < 100
    plan = GridSinkhorn((2, 2), epsilon=0.5, tol=1e-10, max_iter=1000, strict=False).solve(a, b)
    assert plan.info.converged


@pytest.mark.parametrize(
    ("shape", "eps", "omega", "stage_iter"),
    [((100, 100), 2.0, 1.9, 1), ((100, 100), 1.9, 1.95, 20), ((30, 30), 0.05, 1.95, 20)],
)
def test_auto_iteration_settings_follow_epsilon_over_squared_diameter(
    shape, eps, omega, stage_iter
):
    # 100 x 100: squared diameter 19,602, so the threshold 1e-4 * D^2 lies between 1.9 and 2.
    solver = GridSinkhorn(shape, epsilon=eps)
    assert (solver.omega, solver.stage_iter) == (omega, stage_iter)


def test_converged_annealing_stages_pay_off_at_small_epsilon():
    # eps / D^2 = 3e-5: one iteration per stage and omega = 1.9 (the settings until stop 18) took
    # 4,981 iterations here; converged stages and omega = 1.95 take 467.
    shape = (30, 30)
    a, b = _blob(shape, (6.0, 9.0), 90.0) + 1e-3, _blob(shape, (21.0, 18.0), 45.0) + 1e-3
    a, b = a / a.sum(), b / b.sum()
    auto = GridSinkhorn(shape, epsilon=0.05, tol=1e-3, max_iter=600).solve(a, b)
    assert auto.info.converged
    old = GridSinkhorn(
        shape, epsilon=0.05, tol=1e-3, max_iter=600, omega=1.9, stage_iter=1, strict=False
    ).solve(a, b)
    assert not old.info.converged
    exact = ot.emd2(a.ravel(), b.ravel(), sqeuclidean_cost(grid_coordinates(shape)))
    assert abs(auto.wasserstein() ** 2 - exact) <= 0.01 * exact


def test_column_marginal_exact_without_over_relaxation():
    shape = (6, 6)
    rng = np.random.default_rng(5)
    a, b = _hist(rng, shape), _hist(rng, shape)
    plan = GridSinkhorn(shape, epsilon=0.5, tol=1e-2, omega=1.0).solve(a, b)
    rows, cols = plan.marginals()
    assert _l1(cols, b) <= 1e-13
    assert 1e-6 < _l1(rows, a) <= 1e-2  # loose tol: the row marginal is visibly off


# ------------------------------------------------------------------------ 7. determinism
@pytest.mark.parametrize(("shape", "eps"), [((20, 20), 0.5), ((10, 10), 1e-2)])
def test_deterministic_potentials(shape, eps):
    a, b = _blob(shape, (2.5, 3.0), 4.0), _blob(shape, (6.5, 6.0), 6.0)
    first = GridSinkhorn(shape, epsilon=eps, tol=1e-7).solve(a, b)
    second = GridSinkhorn(shape, epsilon=eps, tol=1e-7).solve(a, b)
    for x, y in zip(first.potentials(), second.potentials(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert first.info.iterations == second.info.iterations
    # Re-solving on the same instance may use a different (adapted) block size, which changes
    # the rounding only.
    again = GridSinkhorn(shape, epsilon=eps, tol=1e-7)
    again.solve(a, b)
    for x, y in zip(first.potentials(), again.solve(a, b).potentials(), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------ 8. bad input
_A = np.full((3, 3), 1 / 9)


def _with(value: float, index=(1, 1)) -> np.ndarray:
    x = _A.copy()
    x[index] = value
    return x


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "pattern"),
    [
        (_A, 2 * _A, {}, "same total mass"),
        (_with(-0.1), _A, {}, r"^a has negative"),
        (_A, _with(-0.1), {}, r"^b has negative"),
        (_with(np.nan), _A, {}, r"^a has NaN"),
        (_A, _with(np.inf), {}, r"^b has NaN or infinite"),
        (_A, _with(-np.inf), {}, r"^b has NaN or infinite"),
        (np.zeros((3, 3)), _A, {}, r"^a has zero total mass"),
        (_A, np.full((3, 4), 1 / 12), {}, "different grids"),
        (_A.ravel(), _A.ravel(), {"shape": (3, 4)}, r"^a has shape \(9,\)"),
        (_A.ravel(), _A.ravel()[:8], {"shape": (3, 3)}, r"^b has shape \(8,\)"),
        (_A.ravel(), _A.ravel(), {}, r"^a must be an \(H, W\)"),
        (np.ones((2, 2, 2)) / 8, np.ones((2, 2, 2)) / 8, {}, r"^a must be an \(H, W\)"),
    ],
)
@pytest.mark.parametrize("method", ["exact", "sinkhorn", "auto"])
def test_bad_histograms(a, b, kwargs, pattern, method):
    with pytest.raises(DistributionError, match=pattern):
        grid_plan(a, b, method, **kwargs)


def test_solver_rejects_histograms_of_another_grid():
    solver = GridSinkhorn((4, 4))
    with pytest.raises(DistributionError, match=r"^a has shape \(3, 3\).*\(4, 4\)"):
        solver.solve(_A, _A)
    with pytest.raises(DistributionError, match=r"^b has shape"):
        solver.solve(np.full((4, 4), 1 / 16), _A)


def test_two_dimensional_histogram_of_wrong_shape_is_rejected():
    rng = np.random.default_rng(0)
    a, b = _hist(rng, (3, 4)), _hist(rng, (3, 4))
    with pytest.raises(DistributionError, match=r"^a has shape"):
        GridSinkhorn((4, 3)).solve(a, b)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"epsilon": 0.0}, r"^epsilon"),
        ({"epsilon": -1.0}, r"^epsilon"),
        ({"epsilon": math.nan}, r"^epsilon"),
        ({"epsilon": math.inf}, r"^epsilon"),
        ({"tol": 0.0}, r"^tol"),
        ({"tol": -1e-3}, r"^tol"),
        ({"tol": math.nan}, r"^tol"),
        ({"max_iter": 0}, r"^max_iter"),
        ({"max_iter": -5}, r"^max_iter"),
        ({"scaling": 0.0}, r"^scaling"),
        ({"scaling": 1.0}, r"^scaling"),
        ({"scaling": 1.5}, r"^scaling"),
        ({"scaling": math.nan}, r"^scaling"),
        ({"omega": 0.9}, r"^omega"),
        ({"omega": 2.0}, r"^omega"),
        ({"omega": math.nan}, r"^omega"),
        ({"omega": "fast"}, r"^epsilon, tol, scaling and omega"),
        ({"stage_iter": 0}, r"^stage_iter"),
        ({"stage_iter": 2.5}, r"^stage_iter"),
        ({"stage_iter": True}, r"^stage_iter"),
        ({"stage_iter": "many"}, r"^stage_iter"),
        ({"dtype": "float16"}, r"^dtype"),
        ({"dtype": torch.float16}, r"^dtype"),
        ({"dtype": "int64"}, r"^dtype"),
        ({"device": "tpu"}, r"^device"),
        ({"device": "garbage"}, r"^device"),
        ({"device": "meta"}, r"^device"),
        ({"device": object()}, r"^device"),
    ],
)
def test_bad_solver_settings(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        GridSinkhorn((3, 3), **kwargs)
    grid_kwargs = {k: v for k, v in kwargs.items() if k not in ("scaling", "omega", "stage_iter")}
    if grid_kwargs:  # grid_plan passes them through to GridSinkhorn
        with pytest.raises(ConfigError, match=pattern):
            grid_plan(_A, _A, "sinkhorn", **grid_kwargs)


def test_bad_grid_shape():
    with pytest.raises(ConfigError, match="shape"):
        GridSinkhorn((0, 3))


@pytest.mark.parametrize("method", ["emd", "Exact", "", None])
def test_unknown_method(method):
    with pytest.raises(ConfigError, match=r"^method"):
        grid_plan(_A, _A, method)
    with pytest.raises(ConfigError, match=r"^method"):
        grid_wasserstein(_A, _A, method)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_requested_without_cuda(device):
    with pytest.raises(ConfigError, match="CUDA"):
        GridSinkhorn((3, 3), device=device)
    with pytest.raises(ConfigError, match="CUDA"):
        grid_plan(_A, _A, "sinkhorn", device=device)


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_exact_method_is_cpu_only(device):
    with pytest.raises(ConfigError, match="exact"):
        grid_plan(_A, _A, "exact", device=device)
    assert isinstance(grid_plan(_A, _A, "exact", device="cpu"), ExactGridPlan)
    assert isinstance(grid_plan(_A, _A, "exact", device=torch.device("cpu")), ExactGridPlan)


@pytest.mark.parametrize("device", ["cpu:0", torch.device("cpu", 0)])
def test_exact_method_accepts_indexed_cpu_device(device):
    assert isinstance(grid_plan(_A, _A, "exact", device=device), ExactGridPlan)


@pytest.fixture(scope="module")
def small_plans():
    rng = np.random.default_rng(2)
    a, b = _hist(rng, (3, 4), [0]), _hist(rng, (3, 4), [5])
    plans = [GridSinkhorn((3, 4), epsilon=1.0, tol=1e-9).solve(a, b), grid_plan(a, b, "exact")]
    return plans, a, b


@pytest.mark.parametrize("which", [0, 1], ids=["sinkhorn", "exact"])
@pytest.mark.parametrize(
    ("i", "j", "pattern"),
    [
        (12, 0, r"\[0, 12\)"),
        (0, 12, r"\[0, 12\)"),
        (-1, 0, r"\[0, 12\)"),
        ([0, 1], [2, -3], r"\[0, 12\)"),
        ([0, 1], [1, 2, 3], "same shape"),
        (np.zeros((2, 3), int), np.zeros((3, 2), int), "same shape"),
    ],
)
def test_plan_at_rejects_bad_indices(small_plans, which, i, j, pattern):
    with pytest.raises(DistributionError, match=pattern):
        small_plans[0][which].at(i, j)


@pytest.mark.parametrize("which", [0, 1], ids=["sinkhorn", "exact"])
def test_plan_at_empty_and_scalar(small_plans, which):
    plans, a, b = small_plans
    plan = plans[which]
    assert plan.at([], []).shape == (0,)
    assert plan.at(0, 3).shape == ()
    assert float(plan.at(0, 3)) == 0.0  # cell 0 is empty in the source
    assert float(plan.at(3, 5)) == 0.0  # cell 5 is empty in the target
    cells = np.arange(12)
    assert plan.at(np.full(12, 3), cells).sum() == pytest.approx(a.flat[3], rel=1e-8)
    assert plan.at(cells, np.full(12, 4)).sum() == pytest.approx(b.flat[4], rel=1e-8)


def test_dense_refuses_large_grids():
    shape = (65, 65)  # 4225 cells > 4096
    u = np.full(shape, 1.0)
    plan = GridSinkhorn(shape, epsilon=50.0, tol=1e-2).solve(u, u)
    with pytest.raises(DistributionError, match=r"dense\(\).*4225"):
        plan.dense()
    assert plan.at([0, 4224], [0, 4224]).shape == (2,)  # entries remain available


def test_errors_are_value_errors():
    for err in (ConfigError, ConvergenceError, DistributionError):
        assert issubclass(err, OtsafeError)
        assert issubclass(err, ValueError)


# ------------------------------------------------------------------- 9. property tests
@st.composite
def _grid_problem(draw):
    h, w = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    zero_a = draw(st.sampled_from([0.0, 0.3]))
    zero_b = draw(st.sampled_from([0.0, 0.3]))
    rng = np.random.default_rng(seed)

    def hist(zero_frac: float) -> np.ndarray:
        # Masses of at least ~1% of the largest keep Sinkhorn's convergence rate reasonable.
        x = (0.05 + rng.random((h, w))) * (rng.random((h, w)) >= zero_frac)
        x.flat[rng.integers(h * w)] += 0.5  # never all zero
        return x / x.sum()

    return hist(zero_a), hist(zero_b)


@PROPERTY
@given(problem=_grid_problem(), eps=st.sampled_from([0.5, 1.0, 4.0]))
def test_property_sinkhorn_is_feasible_and_above_exact(problem, eps):
    a, b = problem
    tol = 1e-10
    # Plain Sinkhorn (omega = 1): the default over-relaxation can stall on rare tiny problems,
    # see test_default_omega_converges_on_a_tiny_problem.
    plan = GridSinkhorn(a.shape, epsilon=eps, tol=tol, omega=1.0).solve(a, b)
    dense = plan.dense()
    assert np.all(dense >= 0.0)
    assert np.all(dense[a.ravel() == 0, :] == 0.0)
    assert np.all(dense[:, b.ravel() == 0] == 0.0)
    row_err, col_err = _l1(dense.sum(axis=1), a), _l1(dense.sum(axis=0), b)
    assert plan.info.marginal_error <= tol
    assert row_err <= plan.info.marginal_error + 1e-14
    assert col_err <= 10 * tol
    cost_matrix = _cost(a.shape)
    exact = _emd2(a, b)
    slack = cost_matrix.max() * (row_err + col_err) + 1e-12
    assert plan.cost >= exact - slack
    assert plan.cost == pytest.approx(float(np.sum(dense * cost_matrix)), rel=1e-9, abs=1e-12)


@PROPERTY
@given(problem=_grid_problem())
def test_property_exact_grid_plan_matches_emd2(problem):
    a, b = problem
    plan = grid_plan(a, b, method="exact")
    assert plan.cost == pytest.approx(_emd2(a, b), rel=1e-9, abs=1e-12)


@PROPERTY
@given(problem=_grid_problem(), eps=st.sampled_from([1.0, 4.0]))
def test_property_self_transport_costs_order_epsilon(problem, eps):
    # (For (a, a) at small eps the plan is nearly diagonal and Sinkhorn converges slowly, POT's
    # as well: with empty cells splitting the support, eps = 0.5 on a 6 x 2 grid misses
    # tol = 1e-10 after 10,000 iterations. Hence eps >= 1 here.)
    a, _ = problem
    plan = GridSinkhorn(a.shape, epsilon=eps, tol=1e-8, omega=1.0).solve(a, a)
    # OT_eps(a, a) <= <I_a, C> + eps KL(diag(a) | a x a) = eps H(a), and <T, C> <= OT_eps.
    pos = a[a > 0]
    entropy = float(-np.sum(pos * np.log(pos)))
    slack = 1e-7 * _cost(a.shape).max()
    assert -slack <= plan.cost <= plan.dual_value + slack
    assert plan.dual_value <= eps * entropy + slack


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    block=st.sampled_from([1, 2, 8, 64]),
    eps=st.sampled_from([0.25, 1.0, 16.0]),
    weighted=st.booleans(),
)
def test_property_axis_pass_is_the_dense_log_sum_exp(seed, block, eps, weighted):
    """One axis of the separable soft-min, LSE_l (h[k, l] + logk[j, l]), against torch's dense
    logsumexp: rows at heights 1e3 apart with slopes of up to 50 per cell (potentials over a
    small eps look like this), cells of zero mass (-inf), a row with no mass at all, and the
    cost-weighted kernel (log 0 = -inf on its diagonal). Every block size gives the dense value."""
    from otsafe.transport.grid_sinkhorn import _AxisPass

    rng = np.random.default_rng(seed)
    n_rows, n = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    cells = np.arange(n, dtype=np.float64)
    h = (
        rng.normal(size=(n_rows, n)) * 5.0
        + rng.normal(size=(n_rows, 1)) * 1e3
        + rng.normal(size=(n_rows, 1)) * 50.0 * cells
    )
    h[rng.random(h.shape) < 0.1] = -np.inf
    h[rng.integers(n_rows)] = -np.inf
    sq = (cells[:, None] - cells[None, :]) ** 2
    with np.errstate(divide="ignore"):
        logk = -sq / eps + (np.log(sq) if weighted else 0.0)
    h_t, logk_t = torch.tensor(h), torch.tensor(logk)
    got = _AxisPass(block)(h_t, logk_t)
    want = torch.logsumexp(h_t[:, None, :] + logk_t[None, :, :], dim=2)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite)
    assert bool((got[~finite] == -math.inf).all())
    rel = (got[finite] - want[finite]).abs() / (1.0 + want[finite].abs())
    if rel.numel():
        assert float(rel.max()) < 1e-13


def test_axis_pass_shares_blocks_between_rows_at_different_heights():
    """Rows that differ only by a constant (1e4 apart, far beyond exp's range) need no smaller
    blocks: each row is shifted to a maximum of 0 before the block products."""
    from otsafe.transport.grid_sinkhorn import _AxisPass

    cells = torch.arange(32, dtype=torch.float64)
    logk = -((cells[:, None] - cells[None, :]) ** 2) / 2.0
    base = -0.1 * (cells - 10.0) ** 2
    h = base[None, :] + 1e4 * torch.arange(16, dtype=torch.float64)[:, None]
    axis_pass = _AxisPass(16)
    got = axis_pass(h, logk)
    want = torch.logsumexp(h[:, None, :] + logk[None, :, :], dim=2)
    assert axis_pass.fallbacks == 0
    assert torch.allclose(got, want, rtol=1e-14, atol=0.0)


def test_axis_pass_block_size_drops_at_once_and_grows_back():
    """The adaptive block size. Rows that can share blocks of 4 but no larger ones (16 groups of
    4 equal rows, each group peaked at its own cell) take a new pass from 256 rows to blocks of 4
    in its first call (halving, the old rule, took several calls); after a run of passes that
    recompute nothing it tries blocks of 8, and drops again when they fail (to 2, the first
    smaller size tried)."""
    from otsafe.transport.grid_sinkhorn import _GROW_AFTER, _MAX_BLOCK, _AxisPass

    cells = torch.arange(64, dtype=torch.float64)
    logk = -((cells[:, None] - cells[None, :]) ** 2) / 0.5
    peaks = 4.0 * torch.arange(16, dtype=torch.float64).repeat_interleave(4)
    h = -2.0 * (cells[None, :] - peaks[:, None]) ** 2
    want = torch.logsumexp(h[:, None, :] + logk[None, :, :], dim=2)
    axis_pass = _AxisPass()
    assert axis_pass.block == _MAX_BLOCK
    assert torch.allclose(axis_pass(h, logk), want, rtol=1e-13, atol=0.0)
    assert axis_pass.block == 4
    assert axis_pass.fallbacks == 64  # every row, once
    for _ in range(_GROW_AFTER):
        assert torch.allclose(axis_pass(h, logk), want, rtol=1e-13, atol=0.0)
    assert axis_pass.fallbacks == 64  # blocks of 4 recompute nothing
    assert axis_pass.block == 8
    assert torch.allclose(axis_pass(h, logk), want, rtol=1e-13, atol=0.0)
    assert axis_pass.fallbacks - 64 > 64 // 4  # more than a quarter of the rows recomputed
    assert axis_pass.block == 2  # blocks of 2, the first fallback size, left at most a quarter


# ------------------------------------------------------------------------------ 10. CUDA
@CUDA
def test_cuda_float64_matches_cpu():
    shape = (12, 9)
    rng = np.random.default_rng(4)
    a, b = _hist(rng, shape, [0, 5]), _hist(rng, shape, [7])
    cpu = GridSinkhorn(shape, epsilon=0.5, tol=1e-11).solve(a, b)
    gpu = GridSinkhorn(shape, epsilon=0.5, tol=1e-11, device="cuda").solve(a, b)
    assert gpu.f.device.type == "cuda"
    for x, y in zip(cpu.potentials(), gpu.potentials(), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-9)
    n = a.size
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    np.testing.assert_allclose(gpu.at(ii, jj), cpu.dense(), rtol=0, atol=1e-12)
    assert isinstance(gpu.at(1, 2), np.ndarray)
    assert gpu.cost == pytest.approx(cpu.cost, rel=1e-9)
    via_grid = grid_plan(a, b, "sinkhorn", epsilon=0.5, tol=1e-11, device="cuda")
    assert via_grid.cost == pytest.approx(cpu.cost, rel=1e-9)


# ------------------------------------------------------------------------- 11. auto rule
def _cells_with_mass(count: int, shape: tuple[int, int], offset: int = 0) -> np.ndarray:
    h = np.zeros(shape)
    h.flat[offset : offset + count] = 1.0
    return h


def test_auto_is_exact_up_to_threshold():
    shape = (51, 51)
    assert shape[0] * shape[1] > AUTO_EXACT_MAX_CELLS + 1
    a = _cells_with_mass(AUTO_EXACT_MAX_CELLS, shape)
    plan = grid_plan(a, a, epsilon=50.0, tol=1e-2)
    assert isinstance(plan, ExactGridPlan)
    assert plan.support.size == AUTO_EXACT_MAX_CELLS
    assert plan.cost == pytest.approx(0.0, abs=1e-9)
    assert float(plan.at(7, 7)) == pytest.approx(1.0)


def test_auto_is_sinkhorn_above_threshold():
    shape = (51, 51)
    # Each histogram has AUTO_EXACT_MAX_CELLS cells, their union one more: the union counts.
    a = _cells_with_mass(AUTO_EXACT_MAX_CELLS, shape)
    b = _cells_with_mass(AUTO_EXACT_MAX_CELLS, shape, offset=1)
    plan = grid_plan(a, b, epsilon=50.0, tol=1e-2)
    assert isinstance(plan, GridSinkhornPlan)
    assert plan.info.epsilon == 50.0
    assert plan.info.converged
    full = np.ones(shape)
    assert isinstance(grid_plan(full, full, epsilon=50.0, tol=1e-2), GridSinkhornPlan)
    # An explicit method wins over the rule.
    small = _cells_with_mass(4, shape)
    assert isinstance(grid_plan(small, small, "sinkhorn", epsilon=50.0), GridSinkhornPlan)


def test_adaptive_state_round_trip_continues_bit_for_bit() -> None:
    """A solver that loads another's adaptive block state solves exactly like it from then on."""
    rng = np.random.default_rng(7)
    a, b = _hist(rng, (24, 24)), _hist(rng, (24, 24))
    first = GridSinkhorn((24, 24), epsilon=0.5, tol=1e-9)
    first.solve(a, b)
    state = first.adaptive_state()
    assert state  # the passes have adapted
    second = GridSinkhorn((24, 24), epsilon=0.5, tol=1e-9)
    second.load_adaptive_state(state)
    assert second.adaptive_state() == state
    a2 = _hist(rng, (24, 24))
    p1, p2 = first.solve(a2, b), second.solve(a2, b)
    assert torch.equal(p1.f, p2.f)
    assert torch.equal(p1.g, p2.g)


@pytest.mark.parametrize(
    "state",
    [[1, 2], {"f:00": [[8, 0, 0, 0]]}, {"f:00": [[0, 0, 0, 0], [8, 0, 0, 0]]}, {"f:00": "x"}],
)
def test_malformed_adaptive_state_is_refused_and_changes_nothing(state: object) -> None:
    solver = GridSinkhorn((8, 8), epsilon=1.0)
    before = solver.adaptive_state()
    with pytest.raises(ValueError, match=r"expected|block|passes"):
        solver.load_adaptive_state(state)
    assert solver.adaptive_state() == before


def test_plan_from_potentials_rebuilds_the_plan_on_the_solver() -> None:
    rng = np.random.default_rng(5)
    a, b = _hist(rng, (9, 7)), _hist(rng, (9, 7))
    solver = GridSinkhorn((9, 7), epsilon=1.0)
    plan = solver.solve(a, b)
    other = GridSinkhorn((9, 7), epsilon=1.0, dtype="float32")
    rebuilt = other.plan_from_potentials(
        plan.f, plan.g, plan.log_a, plan.log_b, epsilon=plan.epsilon, mass=plan.mass, info=plan.info
    )
    assert rebuilt.f.dtype == torch.float32
    assert rebuilt.f.data_ptr() != plan.f.data_ptr()  # a copy
    i, j = np.divmod(np.arange(63 * 63), 63)
    np.testing.assert_allclose(rebuilt.at(i, j), plan.at(i, j), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match=r"g has shape \(9, 6\)"):
        solver.plan_from_potentials(
            plan.f, plan.g[:, :6], plan.log_a, plan.log_b, epsilon=1.0, mass=1.0, info=plan.info
        )


def test_plan_source_is_the_input_histogram() -> None:
    rng = np.random.default_rng(3)
    a, b = _hist(rng, (9, 7)), _hist(rng, (9, 7))
    plan = GridSinkhorn((9, 7), epsilon=1.0).solve(3.0 * a, 3.0 * b)
    np.testing.assert_allclose(plan.source(), 3.0 * a, rtol=1e-12, atol=0)
