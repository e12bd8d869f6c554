"""Statistics over seeds: means with Student-t confidence intervals, and bootstrap ratios.

With 5 seeds a normal-approximation interval is too narrow; the t interval with ``n - 1``
degrees of freedom is the standard choice. The relative reduction of a metric between two
methods is a ratio of means, whose interval comes from SciPy's percentile bootstrap over seeds
(resampling each method's seeds independently).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = ["Estimate", "mean_ci", "relative_reduction"]


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
