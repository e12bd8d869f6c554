"""Per-episode metrics and the convergence episode (DESIGN §1).

Metrics per episode: environment return (without the OT bonus), shaped return (with it), length,
collisions, visits to risky cells (steps ending in a cell with safety value below 1),
W2(P^pi, P^s) and the total bonus paid.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from otsafe.errors import ConfigError

__all__ = ["METRIC_COLUMNS", "convergence_episode", "moving_average"]

#: Columns of ``metrics.csv`` after the identifying ``method, beta, seed, episode``.
METRIC_COLUMNS = (
    "env_return",
    "shaped_return",
    "length",
    "collisions",
    "risky_visits",
    "w2",
    "bonus",
    "epsilon",
    "success",
)


def moving_average(x: ArrayLike, window: int) -> np.ndarray:
    """Trailing moving average: entry ``k`` is the mean of ``x[k : k + window]``."""
    arr = np.asarray(x, dtype=np.float64)
    if window < 1:
        raise ConfigError(f"window must be >= 1, got {window}")
    if arr.size < window:
        return np.empty(0)
    c = np.cumsum(np.concatenate([[0.0], arr]))
    return np.asarray((c[window:] - c[:-window]) / window)


def convergence_episode(
    lengths: ArrayLike, window: int = 20, tail: int = 50, tolerance: float = 0.1
) -> float:
    """First episode after which the moving-average episode length stays near its final level.

    DESIGN §1: the first episode after which the ``window``-episode moving average of the episode
    length stays within ``tolerance`` (relative) of the mean of the last ``tail`` episodes.

    Episodes are numbered from 1, and the moving average first exists at episode ``window``, so
    the result is at least ``window``. Returns ``nan`` when the run is shorter than ``window`` or
    ``tail``.

    Examples
    --------
    >>> convergence_episode([100] * 30 + [10] * 70, window=5, tail=20)
    35.0
    """
    arr = np.asarray(lengths, dtype=np.float64)
    if arr.size < max(window, tail):
        return math.nan
    reference = arr[-tail:].mean()
    ma = moving_average(arr, window)  # ma[k] ends at episode k + window (1-based)
    inside = np.abs(ma - reference) <= tolerance * reference
    if not inside[-1]:
        return math.nan
    outside = np.flatnonzero(~inside)
    first = 0 if outside.size == 0 else int(outside[-1]) + 1
    return float(first + window)
