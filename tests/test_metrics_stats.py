"""Tests of the convergence episode (DESIGN §1) and of the statistics over seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from otsafe.experiments.metrics import convergence_episode, moving_average
from otsafe.experiments.stats import mean_ci, relative_reduction


def brute_force_convergence(lengths: list[float], window: int, tail: int, tol: float) -> float:
    """Literal reading of DESIGN §1, episode by episode."""
    n = len(lengths)
    ref = sum(lengths[-tail:]) / tail
    ma = {e: sum(lengths[e - window : e]) / window for e in range(window, n + 1)}
    for e in range(window, n + 1):
        if all(abs(ma[k] - ref) <= tol * ref + 1e-12 for k in range(e, n + 1)):
            return float(e)
    return math.nan


def test_convergence_step_function() -> None:
    lengths = [100.0] * 30 + [10.0] * 70
    assert convergence_episode(lengths, window=5, tail=20) == 35.0
    assert convergence_episode(lengths, window=20, tail=50) == 50.0


def test_convergence_constant_series_converges_at_first_window() -> None:
    assert convergence_episode([7.0] * 100, window=20, tail=50) == 20.0


def test_convergence_too_short_is_nan() -> None:
    assert math.isnan(convergence_episode([1.0] * 10, window=20, tail=50))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=60), min_size=30, max_size=120),
    st.integers(min_value=1, max_value=15),
    st.integers(min_value=1, max_value=30),
)
def test_convergence_matches_brute_force(lengths: list[int], window: int, tail: int) -> None:
    values = [float(x) for x in lengths]
    got = convergence_episode(values, window=window, tail=tail, tolerance=0.1)
    want = brute_force_convergence(values, window, tail, 0.1)
    assert (math.isnan(got) and math.isnan(want)) or got == want


def test_moving_average() -> None:
    np.testing.assert_allclose(moving_average([1, 2, 3, 4], 2), [1.5, 2.5, 3.5])


def test_mean_ci_matches_scipy_t_interval() -> None:
    x = np.array([3.0, 5.0, 4.0, 8.0, 6.0])
    est = mean_ci(x)
    lo, hi = stats.t.interval(0.95, df=4, loc=x.mean(), scale=stats.sem(x))
    assert est.mean == pytest.approx(x.mean())
    assert est.ci_low == pytest.approx(lo)
    assert est.ci_high == pytest.approx(hi)


def test_mean_ci_drops_nan_and_handles_single_value() -> None:
    est = mean_ci([1.0, math.nan, 3.0])
    assert est.n == 2
    assert est.mean == 2.0
    single = mean_ci([4.0]).as_dict()
    assert single["mean"] == 4.0
    assert single["ci_low"] is None


def test_relative_reduction_matches_scipy_bootstrap() -> None:
    base = np.array([100.0, 120.0, 90.0, 110.0, 105.0])
    treat = np.array([70.0, 80.0, 75.0, 60.0, 85.0])
    est = relative_reduction(base, treat, seed=0)
    assert est.mean == pytest.approx(1 - treat.mean() / base.mean())
    ref = stats.bootstrap(
        (base, treat),
        lambda b, t, axis=-1: 1 - t.mean(axis=axis) / b.mean(axis=axis),
        confidence_level=0.95,
        n_resamples=9999,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(0),
    )
    assert est.ci_low == pytest.approx(ref.confidence_interval.low)
    assert est.ci_high == pytest.approx(ref.confidence_interval.high)
    assert est.ci_low < est.mean < est.ci_high
