"""Statistics over seeds: Student-t means, bootstrap intervals, IQM, probability of improvement.

With a handful of seeds a normal-approximation interval is too narrow; :func:`mean_ci` uses the
Student-t interval with ``n - 1`` degrees of freedom. Everything else here is a percentile
bootstrap over seeds computed by :func:`scipy.stats.bootstrap` (never a hand-written resampler),
following the protocol of Agarwal et al. (2021), *Deep Reinforcement Learning at the Edge of the
Statistical Precipice* (the ``rliable`` library):

* :func:`iqm`: the interquartile mean, a robust alternative to the mean;
* :func:`bootstrap_ci`: mean or IQM of one sample (one method on one task) with a percentile
  interval;
* :func:`stratified_bootstrap_ci`: the same statistic aggregated over several tasks (strata), each
  task's seeds resampled independently;
* :func:`probability_of_improvement`: the probability that a random seed of a method beats a
  random seed of a baseline, with an interval that resamples both independently;
* :func:`relative_reduction`: ``1 - mean(treatment) / mean(baseline)``.

Conventions shared by the bootstrap functions
---------------------------------------------
* Non-finite entries (``nan``, ``inf``) are dropped first.
* An :class:`Estimate` holds the point estimate of the statistic in ``mean`` (the IQM, the
  probability, ... -- the field name is historical) and ``n``, the number of values used.
* No values: every field is ``nan`` (``n = 0``).
* The interval is ``nan`` (the point estimate is still given) when the bootstrap cannot say
  anything: a sample (stratum) with fewer than two values, which :func:`scipy.stats.bootstrap`
  refuses, or data that are constant in every sample, whose bootstrap distribution is a single
  point. No SciPy warning is emitted in these cases.
* Resampling is seeded: the same ``seed`` gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = [
    "Estimate",
    "Statistic",
    "bootstrap_ci",
    "iqm",
    "mean_ci",
    "probability_of_improvement",
    "relative_reduction",
    "stratified_bootstrap_ci",
]

#: Statistics accepted by :func:`bootstrap_ci` and :func:`stratified_bootstrap_ci`.
Statistic = Literal["mean", "iqm"]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval (``nan`` where undefined)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def mean_ci(x: ArrayLike, confidence: float = 0.95) -> Estimate:
    """Mean of the finite entries of ``x`` with a Student-t confidence interval."""
    arr = np.asarray(x, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(arr.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1)
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sem
    return Estimate(mean, mean - half, mean + half, n)


def relative_reduction(
    baseline: ArrayLike,
    treatment: ArrayLike,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> Estimate:
    """``1 - mean(treatment) / mean(baseline)`` with a percentile-bootstrap interval.

    Positive means the treatment has less of the metric (e.g. fewer collisions).
    """
    x = np.asarray(baseline, dtype=np.float64)
    y = np.asarray(treatment, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size == 0 or y.size == 0 or x.mean() == 0:
        return Estimate(math.nan, math.nan, math.nan, int(min(x.size, y.size)))
    point = 1.0 - y.mean() / x.mean()
    if x.size < 2 or y.size < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        return Estimate(float(point), math.nan, math.nan, int(min(x.size, y.size)))

    def statistic(b: np.ndarray, t: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(1.0 - t.mean(axis=axis) / b.mean(axis=axis))

    res = stats.bootstrap(
        (x, y),
        statistic,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return Estimate(
        float(point),
        float(res.confidence_interval.low),
        float(res.confidence_interval.high),
        int(min(x.size, y.size)),
    )


# ------------------------------------------------------------------------------ bootstrap
def _finite(x: ArrayLike) -> NDArray[np.float64]:
    """The finite entries of ``x``, flattened to one dimension."""
    arr = np.asarray(x, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def _mean_along(x: NDArray[np.float64], axis: int = -1) -> NDArray[np.float64]:
    return np.asarray(np.mean(x, axis=axis), dtype=np.float64)


def _iqm_along(x: NDArray[np.float64], axis: int = -1) -> NDArray[np.float64]:
    return np.asarray(stats.trim_mean(x, 0.25, axis=axis), dtype=np.float64)


_STATISTICS: dict[str, Callable[..., NDArray[np.float64]]] = {
    "mean": _mean_along,
    "iqm": _iqm_along,
}


def _statistic_function(statistic: str) -> Callable[..., NDArray[np.float64]]:
    try:
        return _STATISTICS[statistic]
    except KeyError:
        raise ValueError(
            f"statistic must be one of {sorted(_STATISTICS)}, got {statistic!r}"
        ) from None


def _check_options(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


def _percentile_interval(
    samples: Sequence[NDArray[np.float64]],
    statistic: Callable[..., NDArray[np.float64]],
    confidence: float,
    n_resamples: int,
    seed: int,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic(*samples)``, each sample resampled
    independently; ``(nan, nan)`` when undefined (see the module docstring)."""
    if any(s.size < 2 for s in samples) or all(np.ptp(s) == 0 for s in samples):
        return math.nan, math.nan
    res = stats.bootstrap(
        tuple(samples),
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def iqm(x: ArrayLike) -> float:
    r"""Interquartile mean of the finite entries of ``x``.

    The mean of the middle half of the sorted values: with :math:`x_{(1)} \le \dots \le x_{(n)}`
    and :math:`k = \lfloor n / 4 \rfloor`,

    .. math:: \mathrm{IQM}(x) = \frac{1}{n - 2k} \sum_{i=k+1}^{n-k} x_{(i)},

    which is :func:`scipy.stats.trim_mean` with ``proportiontocut=0.25``, the convention of
    ``rliable`` (Agarwal et al., 2021). It is robust to outlying seeds, unlike the mean, and less
    noisy than the median. For fewer than 4 values nothing is cut and the IQM is the mean.

    Parameters
    ----------
    x : array_like
        Values, one per seed; non-finite entries are dropped.

    Returns
    -------
    float
        The IQM, ``nan`` when ``x`` has no finite entry.

    Examples
    --------
    >>> iqm([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0])  # mean of 3, 4, 5, 6
    4.5
    """
    arr = _finite(x)
    if arr.size == 0:
        return math.nan
    return float(_iqm_along(arr))


def bootstrap_ci(
    x: ArrayLike,
    statistic: Statistic = "mean",
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> Estimate:
    r"""Mean or IQM over seeds with a percentile-bootstrap confidence interval.

    The point estimate is :math:`\hat\theta = T(x)`, with :math:`T` the mean or the :func:`iqm`.
    The interval comes from :func:`scipy.stats.bootstrap` (``method="percentile"``): draw
    ``n_resamples`` resamples :math:`x^{*b}` of the :math:`n` seeds with replacement and report
    the :math:`(1 - c)/2` and :math:`(1 + c)/2` quantiles of :math:`T(x^{*b})`, where :math:`c`
    is ``confidence``.

    Parameters
    ----------
    x : array_like
        One value per seed; non-finite entries are dropped.
    statistic : {"mean", "iqm"}
        The statistic :math:`T`.
    confidence : float
        Confidence level of the interval, in (0, 1).
    n_resamples : int
        Number of bootstrap resamples.
    seed : int
        Seed of the resampling generator (:func:`numpy.random.default_rng`).

    Returns
    -------
    Estimate
        ``mean`` holds :math:`\hat\theta` (the IQM when ``statistic="iqm"``) and ``n`` the
        number of finite values. No values: all ``nan``; one value, or all values equal: the
        point estimate with a ``nan`` interval.

    Examples
    --------
    >>> est = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    >>> est.mean, est.n, est.ci_low <= est.mean <= est.ci_high
    (3.0, 5, True)
    """
    fn = _statistic_function(statistic)
    _check_options(confidence, n_resamples)
    arr = _finite(x)
    if arr.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    low, high = _percentile_interval([arr], fn, confidence, n_resamples, seed)
    return Estimate(float(fn(arr)), low, high, int(arr.size))


def stratified_bootstrap_ci(
    samples: Sequence[ArrayLike],
    statistic: Statistic = "mean",
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> Estimate:
    r"""A statistic aggregated over several tasks, with a stratified-bootstrap interval.

    Given the seeds :math:`x_1, \dots, x_K` of one method on :math:`K` tasks (strata, e.g. maps),
    the point estimate is the statistic of all the values together,
    :math:`\hat\theta = T(x_1 \cup \dots \cup x_K)` (for the IQM, the rliable "aggregate IQM").
    Each resample draws :math:`|x_k|` values with replacement from every stratum :math:`x_k`
    independently and recomputes :math:`T` on their concatenation; the interval is the percentile
    interval of those values. This is the *stratified bootstrap* of Agarwal et al. (2021)
    (rliable), and exactly what :func:`scipy.stats.bootstrap` does when given several samples.

    Scores should be on a comparable scale across tasks (e.g. normalised returns); otherwise the
    task with the largest values dominates the aggregate.

    Parameters
    ----------
    samples : sequence of array_like
        One array of per-seed values per stratum; non-finite entries are dropped, and strata left
        empty are ignored.
    statistic : {"mean", "iqm"}
        The statistic :math:`T`.
    confidence, n_resamples, seed
        As in :func:`bootstrap_ci`.

    Returns
    -------
    Estimate
        ``n`` is the total number of finite values. The interval is ``nan`` when a non-empty
        stratum has a single value or every stratum is constant.

    Examples
    --------
    >>> stratified_bootstrap_ci([[1.0, 2.0, 3.0], [10.0, 20.0]]).mean
    7.2
    """
    fn = _statistic_function(statistic)
    _check_options(confidence, n_resamples)
    strata = [s for s in (_finite(x) for x in samples) if s.size > 0]
    if not strata:
        return Estimate(math.nan, math.nan, math.nan, 0)

    def pooled(*resampled: NDArray[np.float64], axis: int = -1) -> NDArray[np.float64]:
        return fn(np.concatenate(resampled, axis=axis), axis=axis)

    point = float(pooled(*strata))
    low, high = _percentile_interval(strata, pooled, confidence, n_resamples, seed)
    return Estimate(point, low, high, int(sum(s.size for s in strata)))


def _prob_greater(
    x: NDArray[np.float64], y: NDArray[np.float64], axis: int = -1
) -> NDArray[np.float64]:
    """``P(X > Y) + P(X = Y) / 2`` over all pairs, along ``axis``, via the Mann-Whitney U.

    ``U = R_x - n (n + 1) / 2`` with ``R_x`` the sum of the (average, for ties) ranks of ``x``
    in the pooled sample counts the pairs with ``x_i > y_j`` plus half the ties.
    """
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    n, m = x.shape[-1], y.shape[-1]
    batch = np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    pooled = np.concatenate(
        [np.broadcast_to(x, (*batch, n)), np.broadcast_to(y, (*batch, m))], axis=-1
    )
    ranks = stats.rankdata(pooled, axis=-1)
    u = ranks[..., :n].sum(axis=-1) - n * (n + 1) / 2.0
    return np.asarray(u / (n * m), dtype=np.float64)


def probability_of_improvement(
    x: ArrayLike,
    y: ArrayLike,
    higher_is_better: bool = True,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> Estimate:
    r"""Probability that a seed of a method improves on a seed of a baseline, with a bootstrap CI.

    With :math:`x_1, \dots, x_n` the per-seed values of the method and :math:`y_1, \dots, y_m`
    those of the baseline, and higher values better,

    .. math::
        P(X > Y) = \frac{1}{nm} \sum_{i=1}^{n} \sum_{j=1}^{m}
            \Big( \mathbb{1}[x_i > y_j] + \tfrac12\, \mathbb{1}[x_i = y_j] \Big),

    the Mann-Whitney :math:`U` statistic divided by :math:`nm` (the "probability of improvement"
    of rliable, Agarwal et al., 2021). When lower is better (collisions, violation rates) an
    improvement is :math:`x_i < y_j`, and the result is :math:`P(X < Y) + \tfrac12 P(X = Y)`.
    0.5 means no tendency either way; for the same data
    ``P(x improves on y) + P(y improves on x) = 1``.

    The interval is the percentile bootstrap of :func:`scipy.stats.bootstrap` with two samples:
    the method's and the baseline's seeds are resampled independently.

    Parameters
    ----------
    x : array_like
        Per-seed values of the method; non-finite entries are dropped.
    y : array_like
        Per-seed values of the baseline; non-finite entries are dropped.
    higher_is_better : bool
        Whether larger values are better (returns) or worse (collisions, violations).
    confidence, n_resamples, seed
        As in :func:`bootstrap_ci`.

    Returns
    -------
    Estimate
        ``mean`` holds the probability and ``n`` is ``min(len(x), len(y))`` (finite values).
        An empty side gives all ``nan``; the interval is ``nan`` when a side has a single value
        or both sides are constant.

    Examples
    --------
    >>> probability_of_improvement([3.0, 4.0], [1.0, 3.0]).mean  # pairs: >, >, =, >
    0.875
    >>> probability_of_improvement([3.0, 4.0], [1.0, 3.0], higher_is_better=False).mean
    0.125
    """
    _check_options(confidence, n_resamples)
    a, b = _finite(x), _finite(y)
    n = int(min(a.size, b.size))
    if a.size == 0 or b.size == 0:
        return Estimate(math.nan, math.nan, math.nan, n)
    if not higher_is_better:
        a, b = -a, -b
    point = float(_prob_greater(a, b))
    low, high = _percentile_interval([a, b], _prob_greater, confidence, n_resamples, seed)
    return Estimate(point, low, high, n)
