"""Tests of the bootstrap statistics: IQM, bootstrap CIs, stratified bootstrap, P(improvement)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from otsafe.experiments.stats import (
    Estimate,
    bootstrap_ci,
    iqm,
    probability_of_improvement,
    stratified_bootstrap_ci,
)

X = np.array([3.1, 5.0, 4.2, 8.9, 6.3, 2.2, 7.7, 5.5, 4.8, 30.0])
Y = np.array([2.0, 4.5, 4.2, 3.3, 6.0, 1.1, 2.9])


def scipy_interval(data: tuple[Any, ...], statistic: Any, seed: int) -> tuple[float, float]:
    res = stats.bootstrap(
        data,
        statistic,
        n_resamples=9999,
        vectorized=True,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def brute_force_improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 by comparing every pair (an independent implementation)."""
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    a, b = x[..., :, None], y[..., None, :]
    return np.asarray(((a > b) + 0.5 * (a == b)).mean(axis=(-2, -1)))


# ------------------------------------------------------------------------------------ IQM
def test_iqm_of_eight_values_is_mean_of_middle_four() -> None:
    values = [10.0, -50.0, 1.0, 2.0, 3.0, 4.0, 1000.0, 5.0]
    # sorted: -50, 1, 2, 3, 4, 5, 10, 1000 -> middle four 2, 3, 4, 5
    assert iqm(values) == pytest.approx(3.5)


def test_iqm_cuts_floor_of_a_quarter_from_each_end() -> None:
    assert iqm([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(3.0)  # cuts 1 each side
    assert iqm([1.0, 2.0, 9.0]) == pytest.approx(4.0)  # n < 4: nothing cut, the mean
    assert iqm([1.0, 2.0, 3.0, 4.0]) == pytest.approx(2.5)


def test_iqm_equals_scipy_trim_mean_and_drops_non_finite() -> None:
    assert iqm(X) == pytest.approx(stats.trim_mean(X, 0.25))
    assert iqm([*X.tolist(), math.nan, math.inf]) == pytest.approx(stats.trim_mean(X, 0.25))
    assert math.isnan(iqm([]))
    assert math.isnan(iqm([math.nan]))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=30),
    st.floats(-1e3, 1e3),
    st.floats(0.1, 10.0),
)
def test_iqm_is_translation_and_scale_equivariant(
    values: list[float], shift: float, scale: float
) -> None:
    x = np.array(values)
    assert iqm(x + shift) == pytest.approx(iqm(x) + shift, abs=1e-8)
    assert iqm(scale * x) == pytest.approx(scale * iqm(x), abs=1e-8)


# ---------------------------------------------------------------------------- bootstrap
@pytest.mark.parametrize("seed", [0, 7])
def test_bootstrap_mean_interval_equals_scipy(seed: int) -> None:
    est = bootstrap_ci(X, "mean", seed=seed)
    low, high = scipy_interval((X,), np.mean, seed)
    assert est.mean == pytest.approx(X.mean())
    assert est.n == X.size
    assert est.ci_low == pytest.approx(low, rel=1e-12)
    assert est.ci_high == pytest.approx(high, rel=1e-12)
    assert est.ci_low < est.mean < est.ci_high


def test_bootstrap_iqm_interval_equals_scipy() -> None:
    est = bootstrap_ci(X, "iqm", seed=3)

    def trimmed(a: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(stats.trim_mean(a, 0.25, axis=axis))

    low, high = scipy_interval((X,), trimmed, 3)
    assert est.mean == pytest.approx(stats.trim_mean(X, 0.25))
    assert (est.ci_low, est.ci_high) == pytest.approx((low, high), rel=1e-12)
    # The IQM ignores the outlying seed (30.0); its interval is narrower than the mean's.
    mean = bootstrap_ci(X, "mean", seed=3)
    assert est.ci_high - est.ci_low < mean.ci_high - mean.ci_low


def test_bootstrap_confidence_level_is_passed_on() -> None:
    narrow = bootstrap_ci(X, confidence=0.5)
    wide = bootstrap_ci(X, confidence=0.99)
    assert wide.ci_low < narrow.ci_low < narrow.ci_high < wide.ci_high


def test_bootstrap_drops_non_finite_values() -> None:
    with_nan = bootstrap_ci([*X.tolist(), math.nan, -math.inf], seed=1)
    assert with_nan == bootstrap_ci(X, seed=1)


@pytest.mark.parametrize("statistic", ["mean", "iqm"])
@pytest.mark.parametrize("data", [[], [math.nan, math.nan], [math.inf]])
def test_bootstrap_without_finite_values_is_nan(statistic: Any, data: list[float]) -> None:
    est = bootstrap_ci(data, statistic)
    assert est.n == 0
    assert all(math.isnan(v) for v in (est.mean, est.ci_low, est.ci_high))


@pytest.mark.parametrize("data", [[4.0], [4.0, math.nan], [2.5, 2.5, 2.5, 2.5]])
def test_bootstrap_single_or_constant_values_give_point_without_interval(
    data: list[float],
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no SciPy warning may leak
        for statistic in ("mean", "iqm"):
            est = bootstrap_ci(data, statistic)  # type: ignore[arg-type]
            assert est.mean == data[0]
            assert math.isnan(est.ci_low)
            assert math.isnan(est.ci_high)
            assert est.as_dict()["ci_low"] is None


def test_bootstrap_is_deterministic_given_the_seed() -> None:
    assert bootstrap_ci(X, "iqm", seed=5) == bootstrap_ci(X, "iqm", seed=5)
    assert bootstrap_ci(X, seed=5) != bootstrap_ci(X, seed=6)


def test_bootstrap_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_ci(X, "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(X, confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(X, n_resamples=0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=12),
    st.sampled_from(["mean", "iqm"]),
    st.integers(0, 2**32 - 1),
)
def test_bootstrap_interval_is_ordered(values: list[float], statistic: Any, seed: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = bootstrap_ci(values, statistic, n_resamples=200, seed=seed)
    assert est.n == len(values)
    if not math.isnan(est.ci_low):
        assert est.ci_low <= est.ci_high
        slack = 1e-12 * max(1.0, *(abs(v) for v in values))  # rounding of the mean
        assert min(values) - slack <= est.ci_low
        assert est.ci_high <= max(values) + slack


# ------------------------------------------------------------------------ stratified
@pytest.mark.parametrize("statistic", ["mean", "iqm"])
def test_stratified_bootstrap_equals_scipy_with_several_samples(statistic: Any) -> None:
    strata = [X, Y, np.array([10.0, 12.0, 11.0])]
    est = stratified_bootstrap_ci(strata, statistic, seed=2)

    def pooled(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        data = np.concatenate(samples, axis=axis)
        if statistic == "mean":
            return np.asarray(data.mean(axis=axis))
        return np.asarray(stats.trim_mean(data, 0.25, axis=axis))

    everything = np.concatenate(strata)
    assert est.mean == pytest.approx(float(pooled(everything)))
    assert est.n == everything.size
    low, high = scipy_interval(tuple(strata), pooled, 2)
    assert (est.ci_low, est.ci_high) == pytest.approx((low, high), rel=1e-12)


def test_stratified_bootstrap_with_one_stratum_is_bootstrap_ci() -> None:
    assert stratified_bootstrap_ci([X], "iqm", seed=4) == bootstrap_ci(X, "iqm", seed=4)


def test_stratified_bootstrap_edge_cases() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = stratified_bootstrap_ci([[], [math.nan]])
        assert empty.n == 0
        assert math.isnan(empty.mean)
        # empty strata are ignored
        assert stratified_bootstrap_ci([X, [], [math.nan]], seed=1) == bootstrap_ci(X, seed=1)
        # a stratum with a single value: point estimate only
        single = stratified_bootstrap_ci([X, [100.0]])
        assert single.mean == pytest.approx(np.append(X, 100.0).mean())
        assert math.isnan(single.ci_low)
        # every stratum constant: point estimate only
        constant = stratified_bootstrap_ci([[1.0, 1.0], [3.0, 3.0, 3.0]])
        assert constant.mean == pytest.approx(2.2)
        assert math.isnan(constant.ci_high)


# ------------------------------------------------------------ probability of improvement
def test_probability_of_improvement_equals_mann_whitney_u() -> None:
    x = np.array([1.0, 3.0, 3.0, 5.0, 7.0, 2.0])
    y = np.array([2.0, 3.0, 4.0, 0.5, 3.0])  # ties with x on purpose
    u = stats.mannwhitneyu(x, y).statistic
    est = probability_of_improvement(x, y)
    assert est.mean == pytest.approx(u / (x.size * y.size))
    assert est.n == min(x.size, y.size)
    lower = probability_of_improvement(x, y, higher_is_better=False)
    assert lower.mean == pytest.approx(stats.mannwhitneyu(y, x).statistic / (x.size * y.size))


def test_probability_of_improvement_interval_equals_scipy_two_sample_bootstrap() -> None:
    est = probability_of_improvement(X, Y, seed=11)
    low, high = scipy_interval((X, Y), brute_force_improvement, 11)
    assert est.mean == pytest.approx(float(brute_force_improvement(X, Y)))
    assert (est.ci_low, est.ci_high) == pytest.approx((low, high), rel=1e-12)
    assert 0.0 <= est.ci_low < est.mean < est.ci_high <= 1.0


def test_probability_of_improvement_lower_is_better() -> None:
    collisions_method = [10.0, 12.0, 9.0]
    collisions_baseline = [20.0, 25.0, 18.0]
    est = probability_of_improvement(collisions_method, collisions_baseline, False)
    assert est.mean == 1.0
    assert probability_of_improvement(collisions_method, collisions_baseline).mean == 0.0


def test_probability_of_improvement_edge_cases() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = probability_of_improvement([], [1.0, 2.0])
        assert math.isnan(empty.mean)
        assert empty.n == 0
        nan_only = probability_of_improvement([1.0, 2.0], [math.nan])
        assert math.isnan(nan_only.mean)
        one = probability_of_improvement([3.0], [1.0, 2.0, 4.0])
        assert one.mean == pytest.approx(2 / 3)
        assert math.isnan(one.ci_low)
        constant = probability_of_improvement([1.0, 1.0], [1.0, 1.0, 1.0])
        assert constant.mean == 0.5
        assert math.isnan(constant.ci_high)


def test_probability_of_improvement_is_deterministic_given_the_seed() -> None:
    first = probability_of_improvement(X, Y, seed=9)
    assert first == probability_of_improvement(X, Y, seed=9)
    assert isinstance(first, Estimate)


finite_lists = st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=15)


@settings(max_examples=80, deadline=None)
@given(finite_lists, finite_lists)
def test_probability_of_improvement_is_complementary(x: list[float], y: list[float]) -> None:
    forward = probability_of_improvement(x, y, n_resamples=50).mean
    backward = probability_of_improvement(y, x, n_resamples=50).mean
    assert forward + backward == pytest.approx(1.0)
    assert 0.0 <= forward <= 1.0
    lower = probability_of_improvement(x, y, higher_is_better=False, n_resamples=50).mean
    assert lower == pytest.approx(backward)
    assert forward == pytest.approx(float(brute_force_improvement(np.array(x), np.array(y))))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=10),
    st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=10),
)
def test_probability_of_improvement_interval_is_ordered(x: list[float], y: list[float]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = probability_of_improvement(x, y, n_resamples=100)
    if not math.isnan(est.ci_low):
        assert 0.0 <= est.ci_low <= est.ci_high <= 1.0
