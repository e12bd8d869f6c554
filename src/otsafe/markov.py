r"""State distributions of policy-induced Markov chains on a grid map.

The OT-Q paper transports "the stationary distribution of the policy" :math:`P^\pi`. With an
absorbing goal that stationary distribution is degenerate (all mass on the goal), so DESIGN §1
defines :math:`P^\pi` as the **normalised expected visits per episode** of the behaviour policy
started at the start cell. Two exact variants are offered:

``mode="visits"`` (default)
    Episodes are not truncated. With :math:`Q` the transition matrix restricted to the transient
    cells (every reachable cell except the goal) and :math:`e_0` the start indicator, the expected
    visits are the row vector

    .. math:: n = e_0^\top (I - Q)^{-1},

    one visit to the goal per episode is added, and :math:`P^\pi = n / \sum n`. This is exactly the
    stationary distribution of the chain in which the goal restarts at the start cell. It is
    computed with one sparse solve of :math:`(I - Q)^\top n = e_0`, never by sampling.

``mode="truncated"``
    Episodes stop after ``max_steps`` moves, as in the environment. With :math:`x_0 = e_0` and
    :math:`x_{t+1} = x_t Q`, the visits are :math:`\sum_{t=0}^{T} x_t` on the transient cells plus
    the goal arrivals :math:`\sum_{t=1}^{T} x_{t-1} r` (:math:`r` the one-step goal probability),
    :math:`T` = ``max_steps``. Computed by sparse matrix-vector recursion, stopping early once
    the mass still in the transient cells falls below ``1e-18`` (the remaining terms then change no
    entry above double rounding).

Cells not connected to the start are never visited and get zero mass, as do obstacles.

Solvers for ``mode="visits"`` (``solver=``, NumPy/SciPy on the CPU)
--------------------------------------------------------------------
``"banded"``
    LAPACK banded LU (:func:`scipy.linalg.solve_banded`) in the row-major cell order, whose
    half-bandwidth is the map width. Used by ``"auto"`` when the bandwidth is at most 64: paper
    15x15, rooms30 and maze50 give the same results as before, bit for bit.
``"spsolve"``
    SuperLU through :func:`scipy.sparse.linalg.spsolve` (COLAMD column ordering, partial
    pivoting). Used by ``"auto"`` for wider maps with at most 4096 transient cells (milliseconds
    there), as before. Policies with zero-probability actions are solved on the cells they can
    visit, with this solver up to 4096 such cells and with ``"lu"`` above.
``"lu"``
    The large-map path, used by ``"auto"`` above 4096 transient cells. SuperLU
    (:func:`scipy.sparse.linalg.splu`) of the matrix symmetrically permuted by a **geometric
    nested-dissection ordering** of the cells: each box of the grid is cut by the row or column
    with the fewest cells in its middle half (obstacles make some lines cheap), the separator
    numbered after both halves, down to boxes of 16 positions. The ordering depends only on the
    map, so it is computed once per :class:`ChainModel` (about 1 s at :math:`10^6` cells,
    vectorised) and cached. SuperLU then runs with ``permc_spec="NATURAL"``, ``SymmetricMode``
    and ``diag_pivot_thresh=0``, i.e. without any row pivoting. That is stable here because
    :math:`(I - Q)^\top` is column diagonally dominant (each of its columns is a row of
    :math:`I - Q`: diagonal :math:`1 - Q_{ss}`, off-diagonal magnitudes summing to at most
    that), a property Gaussian elimination preserves, so every pivot is the positive diagonal.
    The solution is checked: the normwise backward error
    :math:`\eta = \lVert r \rVert_\infty / (\lVert A \rVert_\infty \lVert n \rVert_\infty + 1)`
    with :math:`r = e_0 - A n`, :math:`A = (I - Q)^\top`, must be at most ``tol`` (default
    ``1e-10``; OT-Q passes ``1e-8``). A residual relative to :math:`\lVert e_0 \rVert = 1` alone
    is too strict: nearly greedy policies can have very large expected visits, and rounding then
    leaves a residual far above 1e-10 (OT-Q's ``rooms100`` preset stopped at 1.5e-7 with that
    check). Up to three
    steps of iterative refinement with the same factors are taken if it is not met, and
    :class:`~otsafe.errors.ChainError` is raised if it still is not (a policy that practically
    never reaches the goal). The residual is recorded in
    :attr:`ChainModel.last_solve` (measured: 1e-15 to 4e-12 at :math:`10^6` cells). The goal's
    count is set to exactly 1 (every episode ends there; summing :math:`n \cdot r` over
    :math:`10^6` cells instead would add up to 2e-10 of rounding and residual to it).

    Why this choice. Measured with ``benchmarks/bench_markov.py`` (2 CPU cores shared with other
    jobs, median of 3) on 1000x1000 grids, uniform policy / epsilon-greedy (0.1) around a shortest
    path, time and peak memory: open grid (:math:`10^6` unknowns) ``spsolve`` 12.3 / 24.1 s and 1.9
    GiB, ``"lu"`` 5.3 / 9.7 s and 1.5 GiB; 20% rectangular obstacles (8e5 unknowns) ``spsolve`` 3.6
    / 5.0 s and 1.1 GiB, ``"lu"`` 2.5 / 3.5 s and 0.9 GiB. SuperLU's own ``MMD_AT_PLUS_A`` ordering
    (with the same diagonal pivots; without ``SymmetricMode`` and ``diag_pivot_thresh=0`` its
    pivoting spoils the ordering, about 20x slower on a 256x256 map) needs less memory (1.2 / 0.8
    GiB) but recomputes the ordering, ~2 s, in every call: 7.5 / 11.6 s and 5.0 / 5.5 s. Cutting
    boxes in the middle instead of along sparse lines was as fast on the open grid and 40-70% slower
    with obstacles. An incomplete LU (``spilu``, drop tolerance ``1e-4``) as the preconditioner of
    GMRES, LGMRES or BiCGSTAB costs as much to build as the exact factorisation (2.5-11 s at
    :math:`10^6`), then needs 2-38 Krylov iterations (BiCGSTAB broke down on the uniform policy), so
    it never won. A warm start does not remove that cost, and the stale factorisation of the
    previous policy as a preconditioner needed 2-4 GMRES iterations when :math:`\varepsilon` changed
    by 1% at small :math:`\varepsilon` but 27 at :math:`\varepsilon = 1`; OT-Q decays
    :math:`\varepsilon` after every episode, so every row of :math:`Q` changes between calls, hence
    no warm-start cache. The direct solve is also indifferent to conditioning, which no
    unpreconditioned iteration is: the uniform policy's expected episode on a :math:`10^6`-cell grid
    is ~:math:`10^7` steps, and noisy greedy fields form basins that take
    :math:`10^6`-:math:`10^{10}` steps to leave even on 30x30 maps. Limits at :math:`10^6` cells:
    SuperLU is single-threaded, and subnormal numbers in the factors of strongly drifting policies
    slow it (the epsilon-greedy rows above) by up to 2x.

Large maps in ``mode="truncated"`` (more than 4096 transient cells and bandwidth above 64)
    use the same recursion with the goal arrivals summed once at the end
    (:math:`\sum_{t<T} x_t \cdot r`) instead of one BLAS dot product per step, which a
    multi-threaded BLAS on a busy machine made 400x slower than the mat-vec itself, and with
    subnormal entries flushed to zero (they change no entry above 1e-290).

Device path (``device="cpu" | "cuda" | torch.device``)
-----------------------------------------------------
With a ``device``, :math:`Q^\top` is built as a float64 ``torch`` sparse CSR tensor on it (the
sparsity structure is cached per device in the :class:`ChainModel`; each call only scatters the
policy's probabilities), and only sparse matrix-vector products run there:

* ``mode="truncated"``: the same recursion, the stop test synchronised every 32 steps.
* ``mode="visits"``: first the Neumann series :math:`n = \sum_t e_0^\top Q^t` (the truncated
  recursion run on), whose residual after :math:`T` terms is exactly the transient mass vector
  :math:`x_T` still left. Policies that drift to the goal converge in 2.5-10 (H + W) steps
  (measured); the series gets at most ``8 (H + W) + 512`` and stops earlier, after
  ``4 (H + W)``, once its observed rate says it will not make it. The rest,
  :math:`(I - Q)^\top d = x_T`, is solved by BiCGSTAB (seeded random shadow residual, true
  residual replaced every 50 iterations, restart after a breakdown), which handles the
  diffusive, near-uniform policies on which the series would need ~:math:`10^7` steps. The
  result must reach the relative residual ``tol`` within about ``max_iter`` matrix-vector
  products in all, or :class:`~otsafe.errors.ChainError` is raised with the residual reached
  (then use the CPU ``"lu"``, which has no such limit). The goal's count is 1, as for ``"lu"``.

``torch`` is imported only when a device is given.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike, NDArray
from scipy.linalg import solve_banded
from scipy.sparse import csgraph

from otsafe.envs.gridmap import GridMap
from otsafe.envs.gridworld import GridWorld
from otsafe.errors import ChainError, DistributionError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ChainModel",
    "SolveInfo",
    "StateDistributionMode",
    "VisitsSolver",
    "epsilon_greedy_policy",
    "policy_state_distribution",
]

StateDistributionMode = Literal["visits", "truncated"]
VisitsSolver = Literal["auto", "banded", "spsolve", "lu"]

_TRUNCATION_MASS_TOL = 1e-18
_MAX_BANDWIDTH = 64
_SPSOLVE_MAX_CELLS = 4096  # "auto": SuperLU's default up to here, the ordered LU above
_ND_LEAF_CELLS = 16  # nested dissection stops at boxes of at most this many grid cells
_MAX_REFINEMENTS = 3
_DEFAULT_TOL = 1e-10
_DEFAULT_MAX_ITER = 100_000
_DEVICE_CHECK_EVERY = 32  # device loops synchronise (read a scalar back) this often
_RESIDUAL_REPLACE_EVERY = 50
_SHADOW_SEED = 0x5EED
_EXACT_GOAL_METHODS = frozenset({"lu", "series", "series+bicgstab"})
_TINY = float(np.finfo(np.float64).tiny)  # smallest normal double; below it arithmetic is slow


def epsilon_greedy_policy(q_values: ArrayLike, epsilon: float) -> NDArray[np.float64]:
    r"""Action probabilities of the :math:`\varepsilon`-greedy policy of a Q-table.

    Each action gets :math:`\varepsilon/|A|`; the remaining :math:`1-\varepsilon` is split equally
    among the greedy actions (exact ties), matching the agents' uniform tie-breaking.

    Parameters
    ----------
    q_values : array-like, shape (n_states, n_actions)
    epsilon : float in [0, 1]

    Returns
    -------
    ndarray, shape (n_states, n_actions)
    """
    q = np.asarray(q_values, dtype=np.float64)
    if q.ndim != 2:
        raise DistributionError(f"q_values must be 2-D (states x actions), got shape {q.shape}")
    if not 0.0 <= epsilon <= 1.0:
        raise DistributionError(f"epsilon must lie in [0, 1], got {epsilon!r}")
    greedy = q == q.max(axis=1, keepdims=True)
    probs = greedy / greedy.sum(axis=1, keepdims=True)
    return np.asarray(epsilon / q.shape[1] + (1.0 - epsilon) * probs, dtype=np.float64)


@dataclass(frozen=True)
class SolveInfo:
    """How the last :meth:`ChainModel.state_distribution` call was computed.

    Attributes
    ----------
    mode : {"visits", "truncated"}
    method : str
        ``"banded"``, ``"spsolve"`` or ``"lu"`` (NumPy/SciPy), ``"series"`` or
        ``"series+bicgstab"`` (device visits), ``"recursion"`` (truncated, either path).
    device : str
        ``"numpy"`` or the torch device, e.g. ``"cpu"``, ``"cuda:0"``.
    residual : float
        Relative residual :math:`\\lVert e_0 - (I - Q)^\\top n \\rVert_2 / \\lVert e_0 \\rVert_2`
        of the expected visits; ``nan`` where it is not computed (``"banded"``, ``"spsolve"``
        and truncated episodes, which are finite sums).
    iterations : int
        Refinement steps (``"lu"``), matrix-vector products (device and truncated paths), else 0.
    """

    mode: str
    method: str
    device: str
    residual: float
    iterations: int


@dataclass(frozen=True, eq=False)
class ChainModel:
    """Pre-computed structure of the chains a grid map induces, reused across policies.

    Building the sparsity pattern once makes every later :meth:`state_distribution` call a
    scatter of the policy's probabilities plus one sparse solve. The fill-reducing ordering of
    the large-map solver and the device copies of the sparsity structure are computed on first
    use and cached in the model.
    """

    grid: GridMap
    transient: NDArray[np.int64]  # flat indices of the reachable non-goal cells
    rows: NDArray[np.int64]  # transient position of (s, a), for the moves that stay transient
    cols: NDArray[np.int64]  # transient position of next(s, a)
    stay_mask: NDArray[np.bool_]  # (n_transient * 4,) move stays among transient cells
    bandwidth: int  # max |row - col| of (I - Q), in transient positions
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_grid(cls, grid: GridMap) -> ChainModel:
        """Build the model of ``grid`` (transient cells, sparsity pattern of :math:`Q`)."""
        reachable = grid.reachable.ravel()
        reachable_cells = np.flatnonzero(reachable)
        transient = reachable_cells[reachable_cells != grid.goal_index]
        pos = np.full(grid.n_cells, -1, dtype=np.int64)
        pos[transient] = np.arange(transient.size)
        nxt = grid.transitions.next_state[transient].ravel()
        stay = nxt != grid.goal_index
        rows = np.repeat(np.arange(transient.size), 4)[stay]
        cols = pos[nxt[stay]]
        bandwidth = int(np.abs(rows - cols).max()) if rows.size else 0
        return cls(
            grid=grid,
            transient=transient,
            rows=rows,
            cols=cols,
            stay_mask=stay,
            bandwidth=bandwidth,
        )

    @property
    def last_solve(self) -> SolveInfo | None:
        """The :class:`SolveInfo` of the last :meth:`state_distribution` call (None before)."""
        info = self._cache.get("last_solve")
        return info if isinstance(info, SolveInfo) else None

    def _check_policy(self, policy: ArrayLike) -> NDArray[np.float64]:
        pi = np.asarray(policy, dtype=np.float64)
        if pi.shape != (self.grid.n_cells, 4):
            raise DistributionError(
                f"policy must have shape ({self.grid.n_cells}, 4) (cells x actions), got {pi.shape}"
            )
        sub = pi[self.transient]
        if not np.all(np.isfinite(sub)) or np.any(sub < 0):
            raise DistributionError("policy probabilities must be finite and non-negative")
        if not np.allclose(sub.sum(axis=1), 1.0, rtol=0, atol=1e-9):
            raise DistributionError("policy rows must sum to 1 on every reachable cell")
        return sub

    def state_distribution(
        self,
        policy: ArrayLike,
        mode: StateDistributionMode = "visits",
        max_steps: int | None = None,
        *,
        solver: VisitsSolver = "auto",
        device: str | torch.device | None = None,
        tol: float = _DEFAULT_TOL,
        max_iter: int = _DEFAULT_MAX_ITER,
    ) -> NDArray[np.float64]:
        """See :func:`policy_state_distribution`."""
        if solver not in ("auto", "banded", "spsolve", "lu"):
            raise ChainError(f"solver must be 'auto', 'banded', 'spsolve' or 'lu', got {solver!r}")
        try:
            tol_value = float(tol)
        except (TypeError, ValueError):
            tol_value = math.nan
        if not 0.0 < tol_value < 1.0:  # also rejects NaN, True and False
            raise ChainError(f"tol must be a number in (0, 1), got {tol!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)):
            raise ChainError(f"max_iter must be a positive integer, got {max_iter!r}")
        if max_iter < 1:
            raise ChainError(f"max_iter must be a positive integer, got {max_iter!r}")
        if device is not None and solver != "auto":
            raise ChainError(
                f"solver={solver!r} selects a NumPy/SciPy solver; it cannot be combined with "
                f"device={device!r} (leave solver='auto')"
            )
        dev = None if device is None else _resolve_device(device)
        sub = self._check_policy(policy)
        n_t = self.transient.size
        flat = sub.ravel()
        q_values = flat[self.stay_mask]  # the nonzeros of Q at (rows, cols)
        to_goal = flat.copy()
        to_goal[self.stay_mask] = 0.0
        r = to_goal.reshape(n_t, 4).sum(axis=1)  # one-step probability of entering the goal
        start = int(np.searchsorted(self.transient, self.grid.start_index))
        if mode == "visits":
            if dev is not None:
                if not np.all(flat > 0):
                    self._support(q_values, r, start)  # raises if expected visits are infinite
                visits = self._device_visits(q_values, start, dev, tol_value, int(max_iter))
            elif np.all(flat > 0):
                # Every action has positive probability: moves are reversible, so every reachable
                # cell reaches the goal and I - Q is non-singular.
                visits = self._solve_visits(q_values, start, solver, tol_value)
            else:
                visits = self._visits_on_support(q_values, r, start, solver, tol_value)
            info = self.last_solve
            if info is not None and info.method in _EXACT_GOAL_METHODS:
                # Every episode ends at the goal: n . r = 1 exactly; the dot product over 10^6
                # cells would add up to ~1e-10 of rounding and residual.
                goal = 1.0
            else:
                goal = float(visits @ r)  # unchanged on the small-map paths
        elif mode == "truncated":
            if max_steps is None or max_steps < 1:
                raise ChainError("mode='truncated' needs a positive max_steps")
            if dev is not None:
                visits, goal = self._device_truncated(q_values, r, start, int(max_steps), dev)
            else:
                visits, goal = self._truncated(q_values, r, start, int(max_steps))
        else:
            raise ChainError(f"unknown state-distribution mode {mode!r} (visits, truncated)")
        out = np.zeros(self.grid.n_cells)
        out[self.transient] = visits
        out[self.grid.goal_index] = goal
        return np.asarray(out / out.sum(), dtype=np.float64)

    # ------------------------------------------------------------------ NumPy / SciPy paths
    def _record(self, mode: str, method: str, device: str, residual: float, its: int) -> None:
        self._cache["last_solve"] = SolveInfo(mode, method, device, float(residual), int(its))

    def _solve_visits(
        self,
        q_values: NDArray[np.float64],
        start: int,
        solver: VisitsSolver = "auto",
        tol: float = _DEFAULT_TOL,
    ) -> NDArray[np.float64]:
        """Solve (I - Q)^T n = e_0 on all transient cells (banded LU or SuperLU)."""
        # Entry (j, i) of (I - Q)^T holds -Q[i, j].
        n_t = self.transient.size
        chosen = solver == "auto"
        if solver == "auto":
            if self.bandwidth <= _MAX_BANDWIDTH:
                solver = "banded"
            else:
                solver = "spsolve" if n_t <= _SPSOLVE_MAX_CELLS else "lu"
        if solver == "banded":
            e0 = np.zeros(n_t)
            e0[start] = 1.0
            bw = self.bandwidth
            # LAPACK band storage: ab[bw + i - j, j] = A[i, j] with i = col, j = row of Q.
            flat_index = (bw + self.cols - self.rows) * n_t + self.rows
            ab = -np.bincount(flat_index, weights=q_values, minlength=(2 * bw + 1) * n_t)
            ab = ab.reshape(2 * bw + 1, n_t)
            ab[bw] += 1.0
            visits = solve_banded((bw, bw), ab, e0, check_finite=False)
            self._record("visits", "banded", "numpy", math.nan, 0)
        elif solver == "spsolve":
            visits = _sparse_visits(self.rows, self.cols, q_values, n_t, start)
            self._record("visits", "spsolve", "numpy", math.nan, 0)
        else:
            try:
                visits, res, its = _ordered_lu_visits(
                    self.rows, self.cols, q_values, n_t, start, self._nd_order(), tol
                )
                self._record("visits", "lu", "numpy", res, its)
                if not _plausible_counts(visits):
                    raise ChainError("implausible counts")
            except ChainError:
                if not chosen:  # solver="lu" was asked for explicitly: report its failure
                    raise
                # The LU without pivoting is not robust on every nearly greedy policy (measured
                # on OT-Q's rooms100 preset: all counts negative, -9e14 to -1e-4, yet a small
                # backward error); SuperLU with partial pivoting is.
                visits = _sparse_visits(self.rows, self.cols, q_values, n_t, start)
                res = _backward_error(self.rows, self.cols, q_values, n_t, start, visits)
                if not res <= tol:
                    raise ChainError(
                        "the expected-visits system is numerically singular: relative residual "
                        f"{res:.3g} > tol={tol:g} (LU, then SuperLU with pivoting)"
                    ) from None
                self._record("visits", "spsolve-fallback", "numpy", res, 0)
        # Rounding can leave tiny negative counts where the true ones are ~0; relative to the
        # largest count (which can be huge for nearly greedy policies) they must stay tiny.
        if not _plausible_counts(visits):
            raise ChainError(
                "the expected-visits system is numerically singular: "
                f"min count {visits.min():.3g}, max count {visits.max():.3g}"
            )
        return np.asarray(np.clip(visits, 0.0, None), dtype=np.float64)

    def _nd_order(self) -> NDArray[np.int64]:
        """The cached nested-dissection ordering of the transient cells."""
        order = self._cache.get("nd_order")
        if order is None:
            r, c = np.divmod(self.transient, self.grid.shape[1])
            order = _nested_dissection(r, c, _ND_LEAF_CELLS)
            self._cache["nd_order"] = order
        return np.asarray(order, dtype=np.int64)

    def _support(
        self, q_values: NDArray[np.float64], r: NDArray[np.float64], start: int
    ) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
        """The live moves and the sorted transient positions the policy can visit.

        Raises
        ------
        ChainError
            If one of the visited cells can never reach the goal.
        """
        n_t = self.transient.size
        live = q_values > 0
        rows, cols = self.rows[live], self.cols[live]
        forward = sp.csr_array((np.ones(rows.size), (rows, cols)), shape=(n_t, n_t))
        visited = np.sort(csgraph.breadth_first_order(forward, start, return_predecessors=False))
        exits = np.flatnonzero(r > 0)
        # Reverse graph plus a virtual node n_t pointing at every cell with a move into the goal.
        backward = sp.csr_array(
            (
                np.ones(rows.size + exits.size),
                (np.concatenate([cols, np.full(exits.size, n_t)]), np.concatenate([rows, exits])),
            ),
            shape=(n_t + 1, n_t + 1),
        )
        reaches_goal = np.zeros(n_t + 1, dtype=bool)
        reaches_goal[csgraph.breadth_first_order(backward, n_t, return_predecessors=False)] = True
        trapped = visited[~reaches_goal[visited]]
        if trapped.size:
            w = self.grid.shape[1]
            cell = divmod(int(self.transient[trapped[0]]), w)
            raise ChainError(
                f"the policy can reach cell {cell} from the start but never reaches the goal from "
                "there, so expected visits per episode are infinite; use mode='truncated' "
                "(or a policy with epsilon > 0)"
            )
        return live, np.asarray(visited, dtype=np.int64)

    def _visits_on_support(
        self,
        q_values: NDArray[np.float64],
        r: NDArray[np.float64],
        start: int,
        solver: VisitsSolver = "auto",
        tol: float = _DEFAULT_TOL,
    ) -> NDArray[np.float64]:
        """Expected visits of a policy with zero-probability actions.

        Only the cells the policy can visit from the start matter; if one of them can never reach
        the goal, expected visits are infinite.
        """
        n_t = self.transient.size
        live, visited = self._support(q_values, r, start)
        pos = np.full(n_t, -1, dtype=np.int64)
        pos[visited] = np.arange(visited.size)
        keep = live & (pos[self.rows] >= 0) & (pos[self.cols] >= 0)
        sub_rows, sub_cols = pos[self.rows[keep]], pos[self.cols[keep]]
        use_lu = solver == "lu" or (solver == "auto" and visited.size > _SPSOLVE_MAX_CELLS)
        if use_lu:
            rr, cc = np.divmod(self.transient[visited], self.grid.shape[1])
            sub_visits, res, its = _ordered_lu_visits(
                sub_rows,
                sub_cols,
                q_values[keep],
                visited.size,
                int(pos[start]),
                _nested_dissection(rr, cc, _ND_LEAF_CELLS),
                tol,
            )
            self._record("visits", "lu", "numpy", res, its)
        else:
            sub_visits = _sparse_visits(
                sub_rows, sub_cols, q_values[keep], visited.size, int(pos[start])
            )
            self._record("visits", "spsolve", "numpy", math.nan, 0)
        visits = np.zeros(n_t)
        visits[visited] = np.clip(sub_visits, 0.0, None)
        return visits

    def _truncated(
        self, q_values: NDArray[np.float64], r: NDArray[np.float64], start: int, max_steps: int
    ) -> tuple[NDArray[np.float64], float]:
        n_t = self.transient.size
        qt = sp.csr_array((q_values, (self.cols, self.rows)), shape=(n_t, n_t))
        x = np.zeros(n_t)
        x[start] = 1.0
        visits = x.copy()
        goal = 0.0
        steps = 0
        if self.bandwidth <= _MAX_BANDWIDTH or n_t <= _SPSOLVE_MAX_CELLS:
            # Small maps: unchanged, bit for bit.
            for _ in range(max_steps):
                goal += float(x @ r)
                x = qt @ x
                steps += 1
                visits += x
                if x.sum() < _TRUNCATION_MASS_TOL:
                    break
        else:
            # Large maps: one dot product at the end (sum_{t<T} x_t = visits - x_T) instead of a
            # BLAS call per step (multi-threaded BLAS on a busy machine made those 50x slower
            # than the mat-vec), and subnormal entries flushed to zero (they change no entry
            # above 1e-290 but make arithmetic on them ~100x slower).
            for _ in range(max_steps):
                x = qt @ x
                steps += 1
                x[x < _TINY] = 0.0
                visits += x
                if x.sum() < _TRUNCATION_MASS_TOL:
                    break
            goal = float(np.sum((visits - x) * r))
        self._record("truncated", "recursion", "numpy", math.nan, steps)
        return visits, goal

    # --------------------------------------------------------------------------- torch paths
    def _device_matrix(self, q_values: NDArray[np.float64], dev: torch.device) -> torch.Tensor:
        """Q^T as a float64 sparse CSR tensor on ``dev`` (structure cached per device)."""
        import torch

        host = self._cache.get("qt_csr")
        if host is None:
            n_t = self.transient.size
            # CSR of Q^T: row = col of Q. Duplicate (row, col) pairs (two moves bumping into the
            # same cell) are summed into one slot.
            key = self.cols * n_t + self.rows
            uniq, slot = np.unique(key, return_inverse=True)
            indptr = np.zeros(n_t + 1, dtype=np.int64)
            np.cumsum(np.bincount(uniq // n_t, minlength=n_t), out=indptr[1:])
            host = (indptr, uniq % n_t, slot.ravel())
            self._cache["qt_csr"] = host
        indptr, indices, slot = host
        cached = self._cache.get(("torch", str(dev)))
        if cached is None:
            cached = (torch.from_numpy(indptr).to(dev), torch.from_numpy(indices).to(dev))
            self._cache[("torch", str(dev))] = cached
        crow, col = cached
        values = np.bincount(slot, weights=q_values, minlength=indices.size)
        n_t = self.transient.size
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            qt = torch.sparse_csr_tensor(
                crow,
                col,
                torch.from_numpy(values).to(dev),
                size=(n_t, n_t),
                dtype=torch.float64,
                check_invariants=False,
            )
        return qt

    def _device_truncated(
        self,
        q_values: NDArray[np.float64],
        r: NDArray[np.float64],
        start: int,
        max_steps: int,
        dev: torch.device,
    ) -> tuple[NDArray[np.float64], float]:
        import torch

        qt = self._device_matrix(q_values, dev)
        flush = dev.type == "cpu"
        x = torch.zeros(self.transient.size, dtype=torch.float64, device=dev)
        x[start] = 1.0
        visits = x.clone()
        steps = 0
        for step in range(1, max_steps + 1):
            x = torch.mv(qt, x)
            steps = step
            if flush:
                x.masked_fill_(x < _TINY, 0.0)
            visits += x
            if step % _DEVICE_CHECK_EVERY == 0 and float(x.sum()) < _TRUNCATION_MASS_TOL:
                break
        r_t = torch.from_numpy(r).to(dev)
        goal = float(torch.dot(visits - x, r_t))
        self._record("truncated", "recursion", str(dev), math.nan, steps)
        return visits.cpu().numpy().astype(np.float64), goal

    def _device_visits(
        self,
        q_values: NDArray[np.float64],
        start: int,
        dev: torch.device,
        tol: float,
        max_iter: int,
    ) -> NDArray[np.float64]:
        """Solve (I - Q)^T n = e_0 on ``dev``: Neumann series, then BiCGSTAB on what is left."""
        import torch

        qt = self._device_matrix(q_values, dev)
        flush = dev.type == "cpu"
        n_t = self.transient.size

        def clean(v: torch.Tensor) -> torch.Tensor:
            if flush:
                v.masked_fill_(v.abs() < _TINY, 0.0)
            return v

        def apply(v: torch.Tensor) -> torch.Tensor:  # (I - Q^T) v
            return clean(v - torch.mv(qt, v))

        e0 = torch.zeros(n_t, dtype=torch.float64, device=dev)
        e0[start] = 1.0
        # Phase 1: n_T = sum_{t<T} x_t has residual e_0 - (I - Q^T) n_T = x_T exactly.
        budget, min_steps = _series_budget(self.grid.shape, max_iter)
        n = e0.clone()
        x = e0.clone()
        spmv = 0
        converged = False
        last_norm = 1.0
        while spmv < budget:
            x = clean(torch.mv(qt, x))
            spmv += 1
            if spmv % _DEVICE_CHECK_EVERY == 0:
                norm = float(torch.linalg.vector_norm(x))
                if norm <= tol:
                    converged = True
                    break
                if spmv >= min_steps and not _series_on_time(norm, last_norm, spmv, budget, tol):
                    n += x
                    break
                last_norm = norm
            n += x
        if converged:
            res = float(torch.linalg.vector_norm(e0 - apply(n)))
            spmv += 1
            method = "series"
        else:
            # Phase 2: BiCGSTAB for (I - Q^T) d = e_0 - (I - Q^T) n, the residual of the series
            # (the transient mass it leaves, x_{T+1}).
            d, spmv, res = _bicgstab(apply, e0 - apply(n), tol, max_iter, spmv + 1, clean)
            n += d
            method = "series+bicgstab"
        if not math.isfinite(res) or res > tol:
            raise ChainError(
                f"the device solve of the expected-visits system stopped at relative residual "
                f"{res:.3g} > tol={tol:g} after {spmv} matrix-vector products (max_iter="
                f"{max_iter}); the policy may take extremely long to reach the goal. Use "
                "device=None for the direct sparse LU, a larger max_iter, or mode='truncated'"
            )
        visits = n.cpu().numpy().astype(np.float64)
        if visits.min() < -1e-9 * max(1.0, float(visits.max())):  # pragma: no cover
            raise ChainError("the device solve of the expected-visits system is inaccurate")
        self._record("visits", method, str(dev), res, spmv)
        return np.asarray(np.clip(visits, 0.0, None), dtype=np.float64)


def _series_budget(shape: tuple[int, int], max_iter: int) -> tuple[int, int]:
    """Step budget of the device Neumann series and the steps it always gets.

    Policies that drift to the goal need about 2.5-10 (H + W) steps for a residual of 1e-12
    (measured); diffusive ones far more, so after 4 (H + W) steps the series stops as soon as its
    observed rate predicts it will not make the budget.
    """
    h, w = shape
    return min(max_iter, 8 * (h + w) + 512), min(max_iter, 4 * (h + w))


def _series_on_time(norm: float, last_norm: float, steps: int, budget: int, tol: float) -> bool:
    """Whether a series whose residual fell from ``last_norm`` to ``norm`` in the last
    ``_DEVICE_CHECK_EVERY`` steps is predicted to reach ``tol`` within ``budget`` steps."""
    if not 0.0 < norm < last_norm:
        return False
    rate = math.log(norm / last_norm) / _DEVICE_CHECK_EVERY  # log of the per-step reduction
    return steps + math.log(tol / norm) / rate <= budget


def _bicgstab(
    apply: Any,
    rhs: torch.Tensor,
    tol: float,
    max_iter: int,
    spmv: int,
    clean: Any,
) -> tuple[torch.Tensor, int, float]:
    """Unpreconditioned BiCGSTAB for ``apply(d) = rhs`` from ``d = 0``; ``||e_0|| = 1`` scaling.

    Returns the solution, the running count of matrix-vector products and the true relative
    residual. Stops when that residual is at most ``tol`` or ``spmv`` reaches ``max_iter``.
    """
    import torch

    gen = torch.Generator(device="cpu").manual_seed(_SHADOW_SEED)
    shadow = torch.rand(rhs.numel(), generator=gen, dtype=torch.float64).to(rhs.device)
    d = torch.zeros_like(rhs)
    r = rhs.clone()
    p = torch.zeros_like(rhs)
    v = torch.zeros_like(rhs)
    rho = alpha = omega = 1.0
    since_replace = 0
    while spmv + 2 <= max_iter:
        rho_new = float(torch.dot(shadow, r))
        if rho_new == 0.0 or omega == 0.0 or not math.isfinite(rho_new):
            # Breakdown: restart from the true residual with it as the shadow vector.
            r = rhs - apply(d)
            spmv += 1
            shadow = r.clone()
            p.zero_()
            v.zero_()
            rho = alpha = omega = 1.0
            rho_new = float(torch.dot(shadow, r))
            if rho_new == 0.0:
                break
        beta = (rho_new / rho) * (alpha / omega)
        p = clean(r + beta * (p - omega * v))
        v = apply(p)
        sv = float(torch.dot(shadow, v))
        alpha = rho_new / sv if sv != 0.0 else 0.0
        s = clean(r - alpha * v)
        d += alpha * p
        t = apply(s)
        spmv += 2
        tt = float(torch.dot(t, t))
        omega = float(torch.dot(t, s)) / tt if tt > 0.0 else 0.0
        d += omega * s
        r = clean(s - omega * t)
        rho = rho_new
        since_replace += 1
        estimate = float(torch.linalg.vector_norm(r))
        if estimate <= tol or since_replace >= _RESIDUAL_REPLACE_EVERY:
            r = rhs - apply(d)  # true residual
            spmv += 1
            since_replace = 0
            if float(torch.linalg.vector_norm(r)) <= tol:
                break
    final = float(torch.linalg.vector_norm(rhs - apply(d)))
    return d, spmv + 1, final


def _resolve_device(device: Any) -> torch.device:
    """A CPU or CUDA ``torch.device`` from a string or device; ChainError naming ``device``."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ChainError(
            f"device must be 'cpu', 'cuda', 'cuda:<index>' or a torch.device, got {device!r}"
        ) from None
    if dev.type not in ("cpu", "cuda"):
        raise ChainError(f"device must be a CPU or CUDA device, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ChainError(f"device={device!r} was requested but no CUDA device is available")
    return dev


def _nested_dissection(r: NDArray[np.int64], c: NDArray[np.int64], leaf: int) -> NDArray[np.int64]:
    """Geometric nested-dissection ordering of grid cells at rows ``r`` and columns ``c``.

    Every box of the grid (the whole grid first) is split across its longer side by one row or
    column, the one holding the fewest cells in the middle half of the box (ties: the one nearest
    the middle; obstacles make some lines sparse, and an empty line splits for free). The cells
    on that separator are numbered after the cells of both halves, recursively, until a box
    spans at most ``leaf`` grid positions (its cells keep their input order). Computed level by
    level, vectorised over the boxes.

    Returns
    -------
    ndarray of int64
        ``order`` with ``order[k]`` the input position of the ``k``-th unknown.
    """
    n = r.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    r = np.asarray(r, dtype=np.int64)
    c = np.asarray(c, dtype=np.int64)
    r0 = np.full(n, int(r.min()))
    r1 = np.full(n, int(r.max()) + 1)
    c0 = np.full(n, int(c.min()))
    c1 = np.full(n, int(c.max()) + 1)
    path = np.zeros(n, dtype=np.int64)  # binary path of each cell's box in the dissection tree
    done: list[tuple[NDArray[np.int64], NDArray[np.int64], int, bool]] = []
    active = np.arange(n)
    depth = 0
    while active.size:
        height = r1[active] - r0[active]
        width = c1[active] - c0[active]
        small = height * width <= leaf
        done.append((active[small], path[active[small]], depth, True))
        a = active[~small]
        if a.size == 0:
            break
        by_row = height[~small] >= width[~small]
        lo = np.where(by_row, r0[a], c0[a])
        length = np.where(by_row, height[~small], width[~small])
        coord = np.where(by_row, r[a], c[a])
        # Cells per candidate line of every box (the path identifies a box at this depth).
        _, first, box = np.unique(path[a], return_index=True, return_inverse=True)
        box = box.ravel()
        n_box, l_max = first.size, int(length.max())
        counts = np.bincount(box * l_max + (coord - lo), minlength=n_box * l_max)
        box_len = length[first][:, None]
        offset = np.arange(l_max)[None, :]
        quarter = box_len // 4
        window = (offset >= quarter) & (offset < box_len - quarter)
        score = np.where(
            window,
            counts.reshape(n_box, l_max) + np.abs(offset - box_len // 2) / (l_max + 1.0),
            np.inf,
        )
        mid = (lo[first] + np.argmin(score, axis=1))[box]
        on_sep = coord == mid
        done.append((a[on_sep], path[a[on_sep]], depth, False))
        keep = ~on_sep
        a, by_row, mid, low = a[keep], by_row[keep], mid[keep], coord[keep] < mid[keep]
        r1[a] = np.where(by_row & low, mid, r1[a])
        r0[a] = np.where(by_row & ~low, mid + 1, r0[a])
        c1[a] = np.where(~by_row & low, mid, c1[a])
        c0[a] = np.where(~by_row & ~low, mid + 1, c0[a])
        path[a] = 2 * path[a] + (~low)
        depth += 1
        active = a
    # Post-order key: a box at depth d with path p owns the leaf range [p, p + 1) << (D - d);
    # its separator takes the range's last slot, after every descendant (deeper first).
    key = np.empty(n, dtype=np.int64)
    for cells, p, d, is_leaf in done:
        primary = ((p + 1) << (depth - d)) - 1
        key[cells] = primary * (depth + 2) + (0 if is_leaf else depth + 1 - d)
    return np.asarray(np.argsort(key, kind="stable"), dtype=np.int64)


def _backward_error(
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    q_values: NDArray[np.float64],
    n: int,
    start: int,
    visits: NDArray[np.float64],
) -> float:
    """Normwise backward error of ``visits`` for (I - Q)^T n = e_start (see the module docs)."""
    a = sp.csr_array(
        (
            np.concatenate([np.ones(n), -q_values]),
            (np.concatenate([np.arange(n), cols]), np.concatenate([np.arange(n), rows])),
        ),
        shape=(n, n),
    )
    resid = -(a @ visits)
    resid[start] += 1.0
    norm_a = float(abs(a).sum(axis=1).max())
    return float(np.abs(resid).max()) / (norm_a * float(np.abs(visits).max()) + 1.0)


def _plausible_counts(visits: NDArray[np.float64]) -> bool:
    """Finite, and negative only by rounding relative to the largest count."""
    return bool(
        np.all(np.isfinite(visits)) and visits.min() >= -1e-9 * max(1.0, float(visits.max()))
    )


def _ordered_lu_visits(
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    q_values: NDArray[np.float64],
    n: int,
    start: int,
    order: NDArray[np.int64],
    tol: float,
) -> tuple[NDArray[np.float64], float, int]:
    """Solve (I - Q)^T n = e_start by SuperLU in a given symmetric ordering, without pivoting.

    Returns the solution, its relative residual and the number of refinement steps taken.

    Raises
    ------
    ChainError
        If the relative residual stays above ``tol`` after the refinement steps.
    """
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.arange(n)
    diag = np.arange(n)
    # Entry (j, i) of (I - Q)^T is -Q[i, j]; in the new numbering (inv[j], inv[i]).
    a = sp.csc_array(
        (
            np.concatenate([np.ones(n), -q_values]),
            (np.concatenate([diag, inv[cols]]), np.concatenate([diag, inv[rows]])),
        ),
        shape=(n, n),
    )
    a.sum_duplicates()
    b = np.zeros(n)
    b[inv[start]] = 1.0
    lu = spla.splu(
        a,
        permc_spec="NATURAL",
        diag_pivot_thresh=0.0,
        options={"SymmetricMode": True},
    )
    y = lu.solve(b)
    steps = 0
    norm_a = float(abs(a).sum(axis=1).max())  # ||A||_inf
    while True:
        resid = b - a @ y
        # Normwise backward error ||r||_inf / (||A||_inf ||y||_inf + ||b||_inf) (Rigal & Gaches):
        # expected visits can reach 1e8 for nearly greedy policies, and then a residual of 1e-7
        # relative to ||b|| = 1 is still rounding-level.
        res = float(np.abs(resid).max()) / (norm_a * float(np.abs(y).max()) + 1.0)
        if res <= tol or steps == _MAX_REFINEMENTS:  # False for a NaN residual
            break
        y = y + lu.solve(resid)
        steps += 1
    del lu
    if not (res <= tol):
        raise ChainError(
            f"the expected-visits system is numerically singular: relative residual {res:.3g} "
            f"> tol={tol:g} after {steps} refinement steps (the policy takes practically "
            "forever to reach the goal from some visited cell)"
        )
    return np.asarray(y[inv], dtype=np.float64), res, steps


def _sparse_visits(
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    q_values: NDArray[np.float64],
    n: int,
    start: int,
) -> NDArray[np.float64]:
    """Solve (I - Q)^T n = e_start with SuperLU, Q given by its nonzeros at (rows, cols)."""
    a = sp.csc_array(
        (
            np.concatenate([np.ones(n), -q_values]),
            (np.concatenate([np.arange(n), cols]), np.concatenate([np.arange(n), rows])),
        ),
        shape=(n, n),
    )
    e0 = np.zeros(n)
    e0[start] = 1.0
    return np.asarray(spla.spsolve(a, e0), dtype=np.float64)


def policy_state_distribution(
    env: GridWorld | GridMap | ChainModel,
    policy: ArrayLike,
    mode: StateDistributionMode = "visits",
    max_steps: int | None = None,
    *,
    solver: VisitsSolver = "auto",
    device: str | torch.device | None = None,
    tol: float = _DEFAULT_TOL,
    max_iter: int = _DEFAULT_MAX_ITER,
) -> NDArray[np.float64]:
    r"""The policy state distribution :math:`P^\pi` of DESIGN §1, exactly.

    Parameters
    ----------
    env : GridWorld, GridMap or ChainModel
        The map (a :class:`ChainModel` reuses pre-computed structure across calls).
    policy : array-like, shape (H*W, 4)
        Action probabilities per cell (rows of unreachable cells and obstacles are ignored).
    mode : {"visits", "truncated"}
        Untruncated expected visits (restart-chain stationary distribution) or visits within
        ``max_steps`` moves; see the module docstring.
    max_steps : int, optional
        Truncation horizon for ``mode="truncated"``; defaults to ``env.max_steps`` for a
        :class:`GridWorld`.
    solver : {"auto", "banded", "spsolve", "lu"}
        CPU solver for ``mode="visits"`` (see the module docstring): ``"auto"`` takes the banded
        LU up to bandwidth 64, SuperLU's default up to 4096 transient cells, and the
        nested-dissection LU with residual check above.
    device : str or torch.device, optional
        ``None`` (default): NumPy/SciPy. ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a
        :class:`torch.device`: compute with float64 ``torch`` sparse tensors there.
    tol : float
        Relative residual the ``"lu"`` and device visits solves must reach (default ``1e-10``).
    max_iter : int
        Budget of sparse matrix-vector products of the device visits solve.

    Returns
    -------
    ndarray, shape (H*W,)
        Non-negative float64, sums to 1, zero on obstacles and unreachable cells.

    Raises
    ------
    DistributionError
        If ``policy`` has the wrong shape or is not a probability table.
    ChainError
        If ``mode="visits"`` and the policy can circle forever without reaching the goal, if a
        solve does not reach ``tol``, or for an invalid ``mode``, ``max_steps``, ``solver``,
        ``device``, ``tol`` or ``max_iter``.
    """
    if isinstance(env, GridWorld):
        if max_steps is None:
            max_steps = env.max_steps
        model = ChainModel.from_grid(env.grid)
    elif isinstance(env, GridMap):
        model = ChainModel.from_grid(env)
    else:
        model = env
    return model.state_distribution(
        policy,
        mode=mode,
        max_steps=max_steps,
        solver=solver,
        device=device,
        tol=tol,
        max_iter=max_iter,
    )
