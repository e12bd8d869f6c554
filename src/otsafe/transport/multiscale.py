r"""Exact grid OT at scale: multiscale sparse arc sets with a global optimality check.

The transport LP (Eq. 3) between histograms on :math:`n` grid cells has :math:`n^2` arcs, but an
optimal plan uses at most :math:`n_a + n_b - 1` of them, and where they go is predicted well by
the optimal plan of the same problem at half the resolution. This solver finds an optimal plan on
a *sparse* arc set and *proves* it optimal for the full problem, without forming the
:math:`n \times n` cost:

1. **Coarsen.** Sum :math:`a` and :math:`b` over :math:`2 \times 2` blocks of cells, recursively,
   until a level has at most :data:`DENSE_MAX_PAIRS` (source, target) pairs; solve that level on
   all its arcs.
2. **Refine.** On the next finer level, keep the arcs whose coarse parents carry mass: every
   coarse arc :math:`(I, J)` of the coarse optimal plan gives all pairs :math:`(i \in I, j \in J)`.
   This restricted problem is feasible, since :math:`T(i, j) = T_c(I, J)\, a_i b_j / (A_I B_J)`
   has the right marginals.
3. **Solve** the restricted problem with POT's network simplex (LEMON) in its sparse mode: a plan
   :math:`T` and dual potentials :math:`(u, v)` with :math:`c_{ij} - u_i - v_j \ge 0` on the
   arcs present.
4. **Check optimality on all pairs** (pricing). If :math:`c_{ij} - u_i - v_j \ge 0` for *every*
   pair, :math:`(u, v)` is feasible for the dual of the full problem and has the same value as
   :math:`T`, so :math:`T` is optimal (LP duality). Otherwise add, for every source, its most
   violated arc and, for every target, its most violated arc, and go back to 3 (column
   generation; each round adds arcs that violate, so it terminates).

The check costs :math:`O(n (H + W))`, not :math:`O(n^2)`, because the squared Euclidean cost is
separable: the smallest reduced cost of source :math:`i` at cell :math:`(r_i, c_i)` is

.. math::

    \min_j \big(c_{ij} - v_j\big) - u_i
    = \min_{r'} \Big[(r_i - r')^2 + \min_{c'} \big((c_i - c')^2 - v(r', c')\big)\Big] - u_i ,

one pass along the columns of every row (an :math:`H \times W \times W` array, in blocks) and one
along the rows (:math:`n \times H`) -- the c-transform computed like a separable distance
transform, with the minimisers kept.

**Exactness.** Cell coordinates are integers, so every cost is an integer, and the potentials the
network simplex returns (sums and differences of arc costs along its spanning tree) are integers
too: every reduced cost is an integer computed without rounding, and a violation is at least 1.
The check uses a tolerance of :data:`REDUCED_COST_TOL`, far from both.

**Why not a library?** POT's ``ot.emd`` needs the dense cost (10^8 entries at 100 x 100, 65 s and
4 GB on this project's CPU) and its lazy variant stops at its iteration cap without an optimal
plan; the tripartite network (:mod:`otsafe.transport.tripartite`) is exact with :math:`n (H + W)`
arcs but still grows quadratically (10 s at 100 x 100). Multiscale sparse solvers of this kind are
known to work (Schmitzer, *A sparse multiscale algorithm for dense optimal transport*, JMIV 2016,
with shielding neighbourhoods; Gottschlich & Schuhmacher, *The shortlist method*, 2014); no
maintained Python package provides one, and the pieces here are small: POT's network simplex on a
sparse arc set and a separable pricing pass in NumPy.

**The plan** is a vertex of the transport polytope, like ``ot.emd``'s, not the proportional
decomposition of the tripartite solver; where the optimal plan is not unique the two can differ
while having the same cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from otsafe.errors import ConvergenceError, DistributionError
from otsafe.transport._pot import ot
from otsafe.transport.exact import _NUM_ITER_MAX, OTSolution, _check_result, check_marginals

__all__ = [
    "DENSE_MAX_PAIRS",
    "MAX_ROUNDS",
    "REDUCED_COST_TOL",
    "GridMultiscaleOT",
    "MultiscaleInfo",
]

#: A level with at most this many (source, target) pairs is solved on all its arcs.
DENSE_MAX_PAIRS = 250_000

#: Reduced costs below ``-REDUCED_COST_TOL`` count as violations. Costs and potentials are
#: integers (see the module docstring), so any value in (0, 1) gives the same answer.
REDUCED_COST_TOL = 1e-6

#: Column generation stops with an error after this many rounds on one level (never reached in
#: the tests and benchmarks, which take 1 to 10 rounds per level).
MAX_ROUNDS = 100

# Elements per block of the pricing passes (float64): about 32 MB.
_BLOCK = 4_000_000

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass
class MultiscaleInfo:
    """What the last :meth:`GridMultiscaleOT.solve` did, finest level first.

    Attributes
    ----------
    pairs : list of int
        Number of (source, target) pairs with mass on both sides, per level.
    arcs : list of int
        Arcs of the final restricted problem, per level.
    rounds : list of int
        Network-simplex solves per level (1 = the first arc set was already optimal).
    """

    pairs: list[int] = field(default_factory=list)
    arcs: list[int] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)


class GridMultiscaleOT:
    """Exact OT between histograms on integer grid points, squared Euclidean cost, sparse arcs.

    Parameters
    ----------
    sources : array-like, shape (n, 2)
        Distinct integer ``(row, col)`` coordinates of the source points (e.g. the reachable
        cells).
    targets : array-like, shape (m, 2), optional
        Distinct integer coordinates of the target points; defaults to ``sources``.

    Notes
    -----
    See the module docstring for the method. :meth:`solve` returns an
    :class:`~otsafe.transport.OTSolution` indexed like ``sources`` and ``targets``, whose dual
    potentials satisfy :math:`c_{ij} - u_i - v_j \\ge 0` on *all* pairs (for points without mass,
    :math:`u` and :math:`v` are the c-transforms of the other side); :attr:`info` describes the
    last solve.

    Examples
    --------
    >>> from otsafe.transport import grid_coordinates
    >>> solver = GridMultiscaleOT(grid_coordinates((2, 2)))
    >>> plan = solver.solve([0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5])
    >>> plan.cost
    1.0
    """

    def __init__(self, sources: ArrayLike, targets: ArrayLike | None = None) -> None:
        xs = _check_points("sources", sources)
        ys = xs if targets is None else _check_points("targets", targets)
        origin = np.minimum(xs.min(axis=0), ys.min(axis=0))
        self._xs, self._ys = xs - origin, ys - origin
        self.n, self.m = xs.shape[0], ys.shape[0]
        self.info = MultiscaleInfo()

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.m

    def solve(self, a: ArrayLike, b: ArrayLike) -> OTSolution:
        """Solve Eq. 3 exactly for source histogram ``a`` and target histogram ``b``.

        Raises
        ------
        DistributionError
            Invalid histograms (see :func:`~otsafe.transport.check_marginals`) or sizes that do
            not match the points.
        ConvergenceError
            The column generation needed more than :data:`MAX_ROUNDS` rounds on one level.
        RuntimeError
            The network simplex stopped without an optimal plan.
        """
        a_arr, b_arr, _ = check_marginals(a, b)
        if (a_arr.size, b_arr.size) != self.shape:
            raise DistributionError(
                f"a and b have sizes ({a_arr.size}, {b_arr.size}); the grid points are {self.shape}"
            )
        b_arr = b_arr * (a_arr.sum() / b_arr.sum())
        ia, ib = np.flatnonzero(a_arr > 0), np.flatnonzero(b_arr > 0)
        self.info = MultiscaleInfo()
        rows, cols, flow, u, v = _solve_level(
            self._xs[ia], a_arr[ia], self._ys[ib], b_arr[ib], self.info
        )
        # Potentials of points without mass: c-transforms, which keep c - u - v >= 0 on all
        # pairs: u from the targets with mass, then v from all sources.
        u_all, v_all = u, v
        if ia.size < self.n:
            u_all, _ = _c_transform(self._ys[ib], v, self._xs)
            u_all[ia] = u
        if ib.size < self.m:
            v_all, _ = _c_transform(self._xs, u_all, self._ys)
            v_all[ib] = v
        src, dst = ia[rows], ib[cols]
        cost = float(np.sum(flow * _sqdist(self._xs[src], self._ys[dst])))
        return OTSolution(
            rows=src, cols=dst, mass=flow, cost=cost, u=u_all, v=v_all, shape=self.shape
        )


def _check_points(name: str, points: ArrayLike) -> IntArray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
        raise DistributionError(f"{name} must be a non-empty (k, 2) array, got {pts.shape}")
    if not np.all(np.isfinite(pts)) or np.any(pts != np.round(pts)):
        raise DistributionError(f"{name} must have finite integer (row, col) coordinates")
    ints = pts.astype(np.int64)
    if np.unique(ints, axis=0).shape[0] != ints.shape[0]:
        raise DistributionError(f"{name} has repeated points; merge their masses first")
    return ints


def _sqdist(x: IntArray, y: IntArray) -> FloatArray:
    """Row-wise squared Euclidean distance between integer points (exact in float64)."""
    d = x - y
    return np.asarray((d * d).sum(axis=1), dtype=np.float64)


def _solve_level(
    xa: IntArray, a: FloatArray, xb: IntArray, b: FloatArray, info: MultiscaleInfo
) -> tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray]:
    """Optimal plan (arcs with mass) and potentials for positive histograms on points xa, xb."""
    level = len(info.pairs)
    info.pairs.append(a.size * b.size)
    info.arcs.append(0)
    info.rounds.append(0)
    if a.size * b.size <= DENSE_MAX_PAIRS:  # step 1: small enough for all arcs
        src = np.repeat(np.arange(a.size), b.size)
        dst = np.tile(np.arange(b.size), a.size)
    else:  # step 2: the children of the coarse plan's arcs
        ca, parent_a = np.unique(xa // 2, axis=0, return_inverse=True)
        cb, parent_b = np.unique(xb // 2, axis=0, return_inverse=True)
        parent_a, parent_b = parent_a.ravel(), parent_b.ravel()
        coarse_a = np.bincount(parent_a, a, ca.shape[0]).astype(np.float64)
        coarse_b = np.bincount(parent_b, b, cb.shape[0]).astype(np.float64)
        rows, cols, _, _, _ = _solve_level(ca, coarse_a, cb, coarse_b, info)
        src, dst = _children(rows, cols, parent_a, parent_b)
    for round_ in range(1, MAX_ROUNDS + 1):
        info.arcs[level], info.rounds[level] = src.size, round_
        rows, cols, flow, u, v = _restricted_emd(a, b, src, dst, _sqdist(xa[src], xb[dst]))
        # Step 4: the most violated arc of every source and of every target.
        best_u, arg_j = _c_transform(xb, v, xa)
        best_v, arg_i = _c_transform(xa, u, xb)
        bad_i = np.flatnonzero(best_u - u < -REDUCED_COST_TOL)
        bad_j = np.flatnonzero(best_v - v < -REDUCED_COST_TOL)
        if bad_i.size == 0 and bad_j.size == 0:
            return rows, cols, flow, u, v
        new_src = np.concatenate([bad_i, arg_i[bad_j]])
        new_dst = np.concatenate([arg_j[bad_i], bad_j])
        keys = np.unique(np.concatenate([src * b.size + dst, new_src * b.size + new_dst]))
        src, dst = np.divmod(keys, b.size)
    raise ConvergenceError(
        f"multiscale OT: no optimal arc set after {MAX_ROUNDS} rounds on a level with "
        f"{a.size} x {b.size} points"
    )


def _children(
    rows: IntArray, cols: IntArray, parent_a: IntArray, parent_b: IntArray
) -> tuple[IntArray, IntArray]:
    """All fine pairs (i, j) whose parents (parent_a[i], parent_b[j]) are an arc (rows, cols)."""
    kids_a, kids_b = _child_table(parent_a), _child_table(parent_b)
    src = np.broadcast_to(kids_a[rows][:, :, None], (rows.size, 4, 4))
    dst = np.broadcast_to(kids_b[cols][:, None, :], (rows.size, 4, 4))
    keep = (src >= 0) & (dst >= 0)
    return src[keep], dst[keep]


def _child_table(parent: IntArray) -> IntArray:
    """``(n_parents, 4)`` table of the (at most four) children of each coarse point, -1 padded."""
    order = np.argsort(parent, kind="stable")
    sorted_parent = parent[order]
    first = np.searchsorted(sorted_parent, sorted_parent)  # start of each parent's run
    slot = np.arange(parent.size) - first
    table = np.full((int(parent.max()) + 1, 4), -1, dtype=np.int64)
    table[sorted_parent, slot] = order
    return table


def _restricted_emd(
    a: FloatArray, b: FloatArray, src: IntArray, dst: IntArray, cost: FloatArray
) -> tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray]:
    """POT's network simplex on the arcs (src, dst): arcs with mass, and potentials (u, v)."""
    arcs = sp.coo_array((cost, (src, dst)), shape=(a.size, b.size))
    plan, log = ot.emd(
        a, b, arcs, numItermax=_NUM_ITER_MAX, log=True, center_dual=False, check_marginals=False
    )
    _check_result(log)
    plan = sp.coo_array(plan)
    keep = plan.data > 0
    return (
        plan.row[keep].astype(np.int64),
        plan.col[keep].astype(np.int64),
        np.asarray(plan.data[keep], dtype=np.float64),
        np.asarray(log["u"], dtype=np.float64),
        np.asarray(log["v"], dtype=np.float64),
    )


def _c_transform(
    points: IntArray, potential: FloatArray, queries: IntArray
) -> tuple[FloatArray, IntArray]:
    r"""For each query point :math:`q`: :math:`\min_k \|q - x_k\|^2 - \phi_k` and its minimiser.

    ``points`` must be distinct non-negative integer points; queries non-negative integers.

    Separable in two passes (module docstring): along the columns of every row that holds a
    point, then along the rows, in blocks of about :data:`_BLOCK` elements.
    """
    rows, row_of = np.unique(points[:, 0], return_inverse=True)
    row_of = row_of.ravel()
    width = int(max(points[:, 1].max(), queries[:, 1].max())) + 1
    # -phi on a (point rows x width) grid, +inf where there is no point.
    neg = np.full((rows.size, width), np.inf)
    neg[row_of, points[:, 1]] = -potential
    index = np.full((rows.size, width), -1, dtype=np.int64)
    index[row_of, points[:, 1]] = np.arange(points.shape[0])
    # Pass 1, along the columns: m1[r, c] = min_c' (c - c')^2 - phi(r, c').
    col = np.arange(width, dtype=np.float64)
    along = (col[:, None] - col[None, :]) ** 2  # (c, c')
    m1 = np.empty((rows.size, width))
    a1 = np.empty((rows.size, width), dtype=np.int64)
    step = max(1, _BLOCK // (width * width))
    for lo in range(0, rows.size, step):
        block = along[None, :, :] + neg[lo : lo + step, None, :]  # (r, c, c')
        a1[lo : lo + step] = block.argmin(axis=2)
        m1[lo : lo + step] = np.take_along_axis(block, a1[lo : lo + step, :, None], 2)[..., 0]
    # Pass 2, along the rows: min_r (q_row - r)^2 + m1[r, q_col].
    best = np.empty(queries.shape[0])
    arg = np.empty(queries.shape[0], dtype=np.int64)
    rows_f = rows.astype(np.float64)
    step = max(1, _BLOCK // rows.size)
    for lo in range(0, queries.shape[0], step):
        q = queries[lo : lo + step]
        total = (q[:, 0, None] - rows_f[None, :]) ** 2 + m1[:, q[:, 1]].T  # (query, r)
        r_best = total.argmin(axis=1)
        best[lo : lo + step] = total[np.arange(q.shape[0]), r_best]
        arg[lo : lo + step] = index[r_best, a1[r_best, q[:, 1]]]
    return best, arg
