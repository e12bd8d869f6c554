r"""Exact discrete optimal transport (OT-Q paper, Eq. 3-4).

Given histograms :math:`a \in \mathbb{R}^n_+`, :math:`b \in \mathbb{R}^m_+` of equal mass and a cost
:math:`C \in \mathbb{R}^{n \times m}`, the optimal plan solves the linear program (Eq. 3)

.. math::

    T^* \in \arg\min_{T \ge 0} \langle T, C \rangle
    \quad\text{s.t.}\quad T \mathbf 1 = a,\; T^\top \mathbf 1 = b,

and for :math:`C = d^p` the Wasserstein distance is
:math:`W_p = \langle T^*, C\rangle^{1/p}` (Eq. 4).

:func:`ot_plan` and :func:`wasserstein` solve one problem with POT's network simplex
(``ot.emd``, Bonneel et al. 2011); :class:`ExactOT` re-solves problems on a fixed cost matrix and
returns the plan in sparse form with its dual potentials. For grid points with the squared
Euclidean cost, :class:`otsafe.transport.GridExactOT` is exact too and several times faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from otsafe.errors import DistributionError
from otsafe.transport._pot import ot

__all__ = [
    "ExactOT",
    "OTSolution",
    "check_marginals",
    "ot_plan",
    "wasserstein",
]

_MASS_RTOL = 1e-9
_NUM_ITER_MAX = 10_000_000


def check_histogram_values(arr: NDArray[np.float64], name: str) -> None:
    """Raise :class:`~otsafe.errors.DistributionError` naming ``name`` if the histogram ``arr``
    has NaN, infinite or negative entries, or no mass."""
    if not np.all(np.isfinite(arr)):
        raise DistributionError(f"{name} has NaN or infinite entries")
    if np.any(arr < 0):
        raise DistributionError(f"{name} has negative entries (min {arr.min():g})")
    if arr.sum() <= 0:
        raise DistributionError(f"{name} has zero total mass")


def check_same_mass(a: NDArray[np.float64], b: NDArray[np.float64]) -> None:
    """Raise :class:`~otsafe.errors.DistributionError` unless ``a`` and ``b`` have the same
    total mass (relative tolerance 1e-9)."""
    sa, sb = a.sum(), b.sum()
    if abs(sa - sb) > _MASS_RTOL * max(sa, sb):
        raise DistributionError(f"a and b must have the same total mass, got {sa!r} and {sb!r}")


def check_marginals(
    a: ArrayLike, b: ArrayLike, cost: ArrayLike | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64] | None]:
    """Validate two histograms (and a cost) for an OT problem.

    Returns float64 copies. Raises :class:`~otsafe.errors.DistributionError` naming the argument
    for wrong dimensions, negative or non-finite entries, zero mass, unequal masses (relative
    tolerance 1e-9) or a cost of the wrong shape.
    """
    arrays = []
    for name, x in (("a", a), ("b", b)):
        arr = np.array(x, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise DistributionError(
                f"{name} must be a non-empty 1-D histogram, got shape {arr.shape}"
            )
        check_histogram_values(arr, name)
        arrays.append(arr)
    a_arr, b_arr = arrays
    check_same_mass(a_arr, b_arr)
    c_arr = None
    if cost is not None:
        c_arr = np.array(cost, dtype=np.float64)
        if c_arr.shape != (a_arr.size, b_arr.size):
            raise DistributionError(
                f"cost has shape {c_arr.shape}, expected ({a_arr.size}, {b_arr.size})"
            )
        if not np.all(np.isfinite(c_arr)):
            raise DistributionError("cost has NaN or infinite entries")
    return a_arr, b_arr, c_arr


def ot_plan(a: ArrayLike, b: ArrayLike, cost: ArrayLike) -> NDArray[np.float64]:
    r"""Exact optimal transport plan :math:`T^*` (Eq. 3), dense ``(n, m)``.

    Parameters
    ----------
    a : array-like, shape (n,)
        Source histogram (the policy distribution :math:`P^\pi` in OT-Q).
    b : array-like, shape (m,)
        Target histogram (the safety distribution :math:`P^s`), same total mass as ``a``.
    cost : array-like, shape (n, m)
        Ground cost :math:`c(s, s')`.

    Returns
    -------
    ndarray, shape (n, m)
        Non-negative, with row sums ``a`` and column sums ``b`` (to solver precision).

    Examples
    --------
    >>> ot_plan([0.5, 0.5], [0.5, 0.5], [[0.0, 1.0], [1.0, 0.0]])
    array([[0.5, 0. ],
           [0. , 0.5]])
    """
    a_arr, b_arr, c_arr = check_marginals(a, b, cost)
    assert c_arr is not None
    plan = ot.emd(a_arr, b_arr, c_arr, numItermax=_NUM_ITER_MAX)
    return np.asarray(plan, dtype=np.float64)


def wasserstein(a: ArrayLike, b: ArrayLike, cost: ArrayLike, p: float = 2) -> float:
    r"""Wasserstein distance :math:`W_p = \langle T^*, C \rangle^{1/p}` (Eq. 4).

    ``cost`` must already be the ground distance to the power ``p`` (for ``p = 2`` and grid cells,
    :func:`~otsafe.transport.sqeuclidean_cost`).
    """
    if not p >= 1:
        raise DistributionError(f"p must be >= 1, got {p!r}")
    a_arr, b_arr, c_arr = check_marginals(a, b, cost)
    assert c_arr is not None
    if np.any(c_arr < 0):
        raise DistributionError("cost must be non-negative for a Wasserstein distance")
    plan = ot_plan(a_arr, b_arr, c_arr)
    return float(max(float(np.sum(plan * c_arr)), 0.0) ** (1.0 / p))


@dataclass(frozen=True, eq=False)
class OTSolution:
    """An optimal plan in sparse (coordinate) form with its cost and dual potentials.

    Attributes
    ----------
    rows, cols : ndarray of int64
        Arcs carrying mass (at most ``n + m - 1`` of them).
    mass : ndarray of float64
        :math:`T^*_{ij}` on those arcs.
    cost : float
        :math:`\\langle T^*, C \\rangle`.
    u, v : ndarray
        Dual potentials with :math:`C_{ij} - u_i - v_j \\ge -\\tau` on all arcs.
    shape : tuple of int
    """

    rows: NDArray[np.int64]
    cols: NDArray[np.int64]
    mass: NDArray[np.float64]
    cost: float
    u: NDArray[np.float64]
    v: NDArray[np.float64]
    shape: tuple[int, int]

    def dense(self) -> NDArray[np.float64]:
        """The plan as a dense ``(n, m)`` array."""
        out = np.zeros(self.shape)
        np.add.at(out, (self.rows, self.cols), self.mass)
        return out

    def csr(self) -> sp.csr_array:
        """The plan as a SciPy CSR array."""
        return sp.csr_array((self.mass, (self.rows, self.cols)), shape=self.shape)

    def at(self, i: ArrayLike, j: ArrayLike) -> NDArray[np.float64]:
        """:math:`T^*_{ij}` for arrays of index pairs (zero off the support)."""
        ii = np.asarray(i, dtype=np.int64)
        jj = np.asarray(j, dtype=np.int64)
        key = self.rows * self.shape[1] + self.cols
        order = np.argsort(key)
        key_sorted = key[order]
        query = (ii * self.shape[1] + jj).ravel()
        pos = np.clip(np.searchsorted(key_sorted, query), 0, max(key_sorted.size - 1, 0))
        found = key_sorted.size > 0
        out = np.zeros(query.shape)
        if found:
            hit = key_sorted[pos] == query
            out[hit] = self.mass[order[pos[hit]]]
        return out.reshape(ii.shape)

    def wasserstein(self, p: float = 2) -> float:
        """:math:`\\langle T^*, C\\rangle^{1/p}` (Eq. 4)."""
        return float(max(self.cost, 0.0) ** (1.0 / p))


class ExactOT:
    """Exact OT on a fixed cost matrix, solved for changing marginals (POT's network simplex).

    Parameters
    ----------
    cost : array-like, shape (n, m)
        Ground cost, fixed across solves.

    Examples
    --------
    >>> solver = ExactOT([[0.0, 1.0], [1.0, 0.0]])
    >>> solver.solve([0.5, 0.5], [0.5, 0.5]).cost
    0.0
    """

    def __init__(self, cost: ArrayLike) -> None:
        c = np.array(cost, dtype=np.float64)
        if c.ndim != 2 or c.size == 0 or not np.all(np.isfinite(c)):
            raise DistributionError("cost must be a finite, non-empty 2-D array")
        self.cost = np.ascontiguousarray(c)

    @property
    def shape(self) -> tuple[int, int]:
        n, m = self.cost.shape
        return int(n), int(m)

    def solve(self, a: ArrayLike, b: ArrayLike) -> OTSolution:
        """Solve Eq. 3 for histograms ``a`` (rows) and ``b`` (columns) of equal mass."""
        a_arr, b_arr, _ = check_marginals(a, b)
        if (a_arr.size, b_arr.size) != self.shape:
            raise DistributionError(
                f"a and b have sizes ({a_arr.size}, {b_arr.size}); the cost is {self.shape}"
            )
        # ot.emd rescales b to the mass of a itself.
        plan, log = ot.emd(
            a_arr, b_arr, self.cost, numItermax=_NUM_ITER_MAX, log=True, center_dual=False
        )
        _check_result(log)
        rows, cols = np.nonzero(plan)
        return OTSolution(
            rows=rows.astype(np.int64),
            cols=cols.astype(np.int64),
            mass=np.asarray(plan[rows, cols], dtype=np.float64),
            cost=float(log["cost"]),
            u=np.asarray(log["u"], dtype=np.float64),
            v=np.asarray(log["v"], dtype=np.float64),
            shape=self.shape,
        )


def _check_result(log: dict[str, object]) -> None:
    """Raise if POT's network simplex stopped without an optimal plan."""
    warning = log.get("warning")
    if warning:
        raise RuntimeError(f"network simplex did not reach an optimal plan: {warning}")
