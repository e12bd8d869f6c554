"""Ground costs on grids.

The OT-Q paper (Sec. III) uses the squared Euclidean cost :math:`c(s, s') = \\|s - s'\\|^2` between
cells in ``(row, col)`` coordinates.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from otsafe.errors import DistributionError

__all__ = ["grid_coordinates", "sqeuclidean_cost"]


def grid_coordinates(shape: tuple[int, int]) -> NDArray[np.float64]:
    """``(H * W, 2)`` array of the ``(row, col)`` coordinates of an ``H x W`` grid, row-major.

    Examples
    --------
    >>> grid_coordinates((2, 3))[:4]
    array([[0., 0.],
           [0., 1.],
           [0., 2.],
           [1., 0.]])
    """
    h, w = (int(x) for x in shape)
    if h < 1 or w < 1:
        raise DistributionError(f"grid shape must be positive, got {shape!r}")
    rows, cols = np.divmod(np.arange(h * w), w)
    return np.stack([rows, cols], axis=1).astype(np.float64)


def sqeuclidean_cost(x: ArrayLike, y: ArrayLike | None = None) -> NDArray[np.float64]:
    r"""Squared Euclidean cost matrix :math:`C_{ij} = \|x_i - y_j\|^2`.

    Computed coordinate by coordinate, so integer grid coordinates give exact integer costs
    (the expansion :math:`\|x\|^2 + \|y\|^2 - 2 x\cdot y` does not).

    Parameters
    ----------
    x : array-like, shape (n, d)
    y : array-like, shape (m, d), optional
        Defaults to ``x``.

    Returns
    -------
    ndarray, shape (n, m)
    """
    xa = np.asarray(x, dtype=np.float64)
    ya = xa if y is None else np.asarray(y, dtype=np.float64)
    if xa.ndim != 2 or ya.ndim != 2 or xa.shape[1] != ya.shape[1]:
        raise DistributionError(
            f"point sets must be (n, d) and (m, d) arrays, got {xa.shape} and {ya.shape}"
        )
    cost = np.zeros((xa.shape[0], ya.shape[0]))
    for k in range(xa.shape[1]):
        cost += (xa[:, k, None] - ya[None, :, k]) ** 2
    return cost
