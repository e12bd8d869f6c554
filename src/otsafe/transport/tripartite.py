r"""Exact optimal transport on a 2-D grid with the squared Euclidean cost, via a tripartite network.

Why not POT's ``ot.emd`` directly? On a grid of :math:`n` cells the dense problem has :math:`n^2`
arcs (36 864 on the 192 free cells of the 15x15 ``paper`` map, where ``ot.emd`` takes about 5 ms,
and OT-Q solves one problem per episode). The squared Euclidean cost is *separable*,

.. math:: c(x, y) = (x_1 - y_1)^2 + (x_2 - y_2)^2,

so a transport from :math:`x` to :math:`y` can be routed through the intermediate grid point
:math:`(x_1, y_2)`: first along the row of :math:`x` (cost :math:`(x_2 - y_2)^2`), then along the
column of :math:`y` (cost :math:`(x_1 - y_1)^2`). The two legs cost exactly :math:`c(x, y)`, and
every
flow through the three layers (sources -> intermediate points -> targets) decomposes into such
paths, so the minimum-cost flow on this tripartite network has exactly the optimal transport cost
(Auricchio, Bassetti, Gualandi & Veneroni, *Computing Kantorovich-Wasserstein distances on
d-dimensional histograms using (d+1)-partite graphs*, NeurIPS 2018). The network has
:math:`n (H + W)` arcs instead of :math:`n^2`: 6k instead of 37k on the paper map, 3.5x faster.

The min-cost flow is solved by POT's network simplex (LEMON) in its sparse mode. POT exposes only
bipartite transportation problems, so each intermediate node :math:`k` becomes a sink
:math:`k_{in}` and a source :math:`k_{out}`, both of mass :math:`M` (the total mass), joined by a
zero-cost arc; :math:`k_{in}` then receives :math:`M - t_k` from :math:`k_{out}` and :math:`t_k`
from
the sources, which forces conservation of the throughput :math:`t_k` (a standard reduction).

**The plan.** A flow determines the optimal cost but not a unique plan. otsafe decomposes the flow
at each intermediate node proportionally,

.. math:: T(x, y) = \frac{f_{row}(x \to k)\, f_{col}(k \to y)}{t_k}, \qquad k = (x_1, y_2),

which has the right marginals and the optimal cost, so it *is* an optimal plan of Eq. 3. Optimal
plans on grids are often not unique (any 4-cycle with :math:`(x - x') \perp (y - y')` has zero
cycle cost), so this plan can differ from the vertex that ``ot.emd`` returns on the dense problem
while having the same cost. :meth:`GridPlan.at` evaluates single entries (e.g. the neighbour
transitions OT-Q needs) without forming the :math:`n \times m` plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from otsafe.errors import DistributionError
from otsafe.transport._pot import ot
from otsafe.transport.exact import _NUM_ITER_MAX, _check_result, check_marginals

__all__ = ["GridExactOT", "GridPlan"]


@dataclass(frozen=True, eq=False)
class GridPlan:
    """An optimal plan on grid points, stored as the row and column flows of the tripartite network.

    Attributes
    ----------
    cost : float
        :math:`\\langle T^*, C \\rangle` with the squared Euclidean cost.
    shape : tuple of int
        ``(n_sources, n_targets)``.
    """

    row_flow: NDArray[np.float64]  # (n, n_cols): source i -> intermediate (row of i, column c)
    col_flow: NDArray[np.float64]  # (n_rows, m): intermediate (r, column of j) -> target j
    src_row: NDArray[np.int64]  # row index (into the intermediate rows) of each source
    tgt_col: NDArray[np.int64]  # column index (into the intermediate columns) of each target
    cost: float
    shape: tuple[int, int]

    def at(self, i: ArrayLike, j: ArrayLike) -> NDArray[np.float64]:
        """:math:`T^*_{ij}` for arrays of source indices ``i`` and target indices ``j``."""
        ii = np.asarray(i, dtype=np.int64)
        jj = np.asarray(j, dtype=np.int64)
        r, c = self.src_row[ii], self.tgt_col[jj]
        through = self.row_flow[ii, c]
        out = self.col_flow[r, jj]
        total = self._throughput[r, c]
        safe = np.where(total > 0, total, 1.0)
        return np.asarray(np.where(total > 0, through * out / safe, 0.0), dtype=np.float64)

    def dense(self) -> NDArray[np.float64]:
        """The plan as a dense ``(n, m)`` array."""
        n, m = self.shape
        return self.at(np.arange(n)[:, None], np.arange(m)[None, :])

    def wasserstein(self, p: float = 2) -> float:
        """:math:`W_2 = \\langle T^*, C\\rangle^{1/2}`; only ``p = 2`` matches the cost."""
        if p != 2:
            raise DistributionError("a squared-Euclidean plan gives W2 only (p = 2)")
        return float(max(self.cost, 0.0) ** 0.5)

    @property
    def _throughput(self) -> NDArray[np.float64]:
        cached = self.__dict__.get("_t")
        if cached is None:  # t_k: total flow through intermediate k = (r, c)
            n_rows, n_cols = self.col_flow.shape[0], self.row_flow.shape[1]
            flat = (np.arange(n_rows)[:, None] * n_cols + self.tgt_col[None, :]).ravel()
            cached = np.bincount(flat, self.col_flow.ravel(), n_rows * n_cols)
            cached = cached.reshape(n_rows, n_cols)
            object.__setattr__(self, "_t", cached)
        return np.asarray(cached)


class GridExactOT:
    """Exact OT between histograms on fixed 2-D grid points with the squared Euclidean cost.

    Parameters
    ----------
    sources : array-like, shape (n, 2)
        Coordinates of the source points (e.g. ``(row, col)`` of the reachable cells).
    targets : array-like, shape (m, 2), optional
        Coordinates of the target points; defaults to ``sources``.

    Notes
    -----
    The network has one intermediate node per (distinct source row, distinct target column),
    so it pays off when the points lie on a lattice (few distinct rows and columns); for
    scattered points use :class:`~otsafe.transport.ExactOT`.

    Examples
    --------
    >>> from otsafe.transport import grid_coordinates
    >>> solver = GridExactOT(grid_coordinates((2, 2)))
    >>> plan = solver.solve([0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5])
    >>> round(plan.cost, 12)
    1.0
    """

    def __init__(self, sources: ArrayLike, targets: ArrayLike | None = None) -> None:
        xs = np.asarray(sources, dtype=np.float64)
        ys = xs if targets is None else np.asarray(targets, dtype=np.float64)
        for name, pts in (("sources", xs), ("targets", ys)):
            if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
                raise DistributionError(f"{name} must be a non-empty (k, 2) array, got {pts.shape}")
            if not np.all(np.isfinite(pts)):
                raise DistributionError(f"{name} has NaN or infinite coordinates")
        self.n, self.m = xs.shape[0], ys.shape[0]
        rows, src_row = np.unique(xs[:, 0], return_inverse=True)  # intermediate rows
        cols, tgt_col = np.unique(ys[:, 1], return_inverse=True)  # intermediate columns
        self._src_row = src_row.astype(np.int64)
        self._tgt_col = tgt_col.astype(np.int64)
        self._n_rows, self._n_cols = rows.size, cols.size
        n_mid = rows.size * cols.size
        self.n_intermediate = n_mid
        # Arcs of the bipartite reduction. Sources: [x_0..x_{n-1}, out_0..out_{K-1}];
        # sinks: [in_0..in_{K-1}, y_0..y_{m-1}].
        # 1) row legs: x_i -> in_(row(i), c), cost (x_i2 - c)^2
        r1 = np.repeat(np.arange(self.n), cols.size)
        c1 = np.tile(np.arange(cols.size), self.n)
        s1 = r1
        d1 = src_row[r1] * cols.size + c1
        w1 = (xs[r1, 1] - cols[c1]) ** 2
        # 2) pass-through: out_k -> in_k, cost 0
        s2 = self.n + np.arange(n_mid)
        d2 = np.arange(n_mid)
        w2 = np.zeros(n_mid)
        # 3) column legs: out_(r, col(j)) -> y_j, cost (r - y_j1)^2
        r3 = np.repeat(np.arange(rows.size), self.m)
        j3 = np.tile(np.arange(self.m), rows.size)
        s3 = self.n + r3 * cols.size + tgt_col[j3]
        d3 = n_mid + j3
        w3 = (rows[r3] - ys[j3, 0]) ** 2
        src = np.concatenate([s1, s2, s3])
        dst = np.concatenate([d1, d2, d3])
        self._arc_cost = sp.coo_array(
            (np.concatenate([w1, w2, w3]), (src, dst)),
            shape=(self.n + n_mid, n_mid + self.m),
        )
        self.n_arcs = int(src.size)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.m

    def solve(self, a: ArrayLike, b: ArrayLike) -> GridPlan:
        """Solve Eq. 3 exactly for source histogram ``a`` and target histogram ``b``."""
        a_arr, b_arr, _ = check_marginals(a, b)
        if (a_arr.size, b_arr.size) != self.shape:
            raise DistributionError(
                f"a and b have sizes ({a_arr.size}, {b_arr.size}); the grid points are {self.shape}"
            )
        mass = float(a_arr.sum())
        b_arr = b_arr * (mass / b_arr.sum())
        n_mid = self.n_intermediate
        supply = np.concatenate([a_arr, np.full(n_mid, mass)])
        demand = np.concatenate([np.full(n_mid, mass), b_arr])
        flow, log = ot.emd(
            supply,
            demand,
            self._arc_cost,
            numItermax=_NUM_ITER_MAX,
            log=True,
            check_marginals=False,
        )
        _check_result(log)
        flow = sp.coo_array(flow)
        src, dst, val = flow.row, flow.col, flow.data
        n_cols = self._n_cols
        # Row legs: x_i -> in_(row(i), c).
        leg = (src < self.n) & (dst < n_mid)
        row_flow = np.zeros((self.n, n_cols))
        row_flow[src[leg], dst[leg] % n_cols] = val[leg]
        # Column legs: out_(r, c) -> y_j (c is the column of y_j).
        leg = (src >= self.n) & (dst >= n_mid)
        col_flow = np.zeros((self._n_rows, self.m))
        col_flow[(src[leg] - self.n) // n_cols, dst[leg] - n_mid] = val[leg]
        return GridPlan(
            row_flow=np.clip(row_flow, 0.0, None),
            col_flow=np.clip(col_flow, 0.0, None),
            src_row=self._src_row,
            tgt_col=self._tgt_col,
            cost=float(log["cost"]),
            shape=self.shape,
        )
