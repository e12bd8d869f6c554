r"""Entropic optimal transport on an H x W grid with the squared Euclidean cost, at scale.

Problem
-------
For histograms :math:`a, b` on the cells :math:`x = (x_1, x_2)` of an :math:`H \times W` grid and
the cost :math:`c(x, y) = \|x - y\|^2` (cell units), the entropic problem

.. math::

    \mathrm{OT}_\varepsilon(a, b) = \min_{T \in \Pi(a, b)} \langle T, c\rangle
        + \varepsilon\, \mathrm{KL}(T \,|\, a \otimes b)

has the solution :math:`T(x, y) = a(x)\, b(y)\, \exp\big((f(x) + g(y) - c(x, y))/\varepsilon\big)`
with potentials found by the Sinkhorn iterations, in the log domain (stable at any
:math:`\varepsilon`):

.. math::

    f(x) = -\varepsilon \mathrm{LSE}_y\big[(g(y) - c(x, y))/\varepsilon + \log b(y)\big],
    \qquad
    g(y) = -\varepsilon \mathrm{LSE}_x\big[(f(x) - c(x, y))/\varepsilon + \log a(x)\big].

Neither the :math:`n \times n` cost nor the plan is ever formed (:math:`n = HW`).

Separable soft-min
------------------
The cost is separable, :math:`c(x, y) = (x_1 - y_1)^2 + (x_2 - y_2)^2`, so each log-sum-exp over the
:math:`n` cells splits into one over the columns followed by one over the rows:

.. math::

    \mathrm{LSE}_{k,l}\big[h(k, l) - c/\varepsilon\big]
    = \mathrm{LSE}_k\Big[-\tfrac{(i-k)^2}{\varepsilon}
        + \mathrm{LSE}_l\big[h(k, l) - \tfrac{(j-l)^2}{\varepsilon}\big]\Big],

:math:`O(HW(H + W))` work instead of :math:`O(H^2W^2)` (GeomLoss does the same with dense
log-sum-exps). A dense log-sum-exp over one axis still costs :math:`HW^2` exponentials, too slow on
a CPU at 100 x 100, so each axis pass here is a **block-stabilised matrix product**: for a block
:math:`B` of rows :math:`k`, with :math:`t_l = \max_{k \in B} h(k, l)` and
:math:`u_j = \max_l [t_l - (j - l)^2/\varepsilon]`,

.. math::

    \mathrm{LSE}_l\big[h(k, l) - \tfrac{(j-l)^2}{\varepsilon}\big]
    = u_j + \log \sum_l \underbrace{e^{h(k, l) - t_l}}_{\le 1}\;
      \underbrace{e^{t_l - (j-l)^2/\varepsilon - u_j}}_{\le 1},

one batched matrix product per block (BLAS / cuBLAS) and only :math:`W^2` exponentials per block.
Both factors are at most 1. Factors below :math:`e^{-340}` (:math:`e^{-42}` in float32) are set
to zero, so no product is a subnormal number (products over subnormals ran 20x slower here),
and a dropped term is below :math:`e^{-340}`. A sum is trusted when it is at least
:math:`n_{in}\, e^{-340 + 37}` (:math:`e^{17}` in float32), i.e. the dropped terms are below the
rounding error; rows with an untrusted entry are recomputed with blocks four times smaller, down
to single rows, which are exact by construction (:math:`t_l = h(k, l)`, so the largest term is 1).
Before any of this every row is shifted to a maximum of 0 (the shift is added back to its
outputs): a row far below the others would otherwise have all its terms under the block's
stabiliser :math:`t_l` and need a smaller block. On converged potentials this lets blocks of 8 to
16 rows be trusted where 2 to 4 were (128 x 128 at :math:`\varepsilon = 1`, 256 x 256 at
:math:`\varepsilon = 4`); with the kernel blocks built in place, solves at 100 x 100 to
256 x 256 became 2 to 4 times faster (``docs/benchmarks.md``). Tilting each row by its mean
slope as well (an exact identity for the plain kernel, the row read at shifted outputs) let
blocks grow twice more, but it was slower up to 100 x 100 and only 1.2 times faster at
128 x 128, :math:`\varepsilon = 1`; it was left out.
The starting block size adapts from pass to pass: it starts at 256 rows, drops at once to the
first smaller size that left at most a quarter of the rows to recompute, and doubles after a run
of passes that recomputed at most 1/16 of them. The result depends on it only through rounding;
the speed depends on it a lot (starting at 8 rows and doubling only after 32 passes with nothing
recomputed, as until stop 17, made a 1000 x 1000 solve at :math:`\varepsilon = 64` twice as
slow: after its first 44 iterations the blocks had only grown to 16 rows).

Iterations
----------
:math:`\varepsilon`-scaling: :math:`\varepsilon` starts at the squared diameter :math:`D^2` and
is halved stage by stage until it reaches the target. Sinkhorn then iterates at the target with
over-relaxation (:math:`f \leftarrow (1-\omega) f + \omega f^{new}`, the same for :math:`g`;
Thibault et al. 2017; ``omega = 1`` is plain Sinkhorn) until the :math:`\ell_1` error of the row
marginal of the current plan is at most ``tol`` times the mass. That error is read off the next
update at no cost: the row marginal of :math:`(f, g)` is :math:`a\, e^{(f - f^{new})/\varepsilon}`.
The plan returned is completed by an exact :math:`g`-update, so its column marginal is exact, and
its row error is measured again (and iterations continue if it no longer meets ``tol``).
Over-relaxation is only locally convergent: when the error grows tenfold above the best seen, or
does not improve for 100 iterations, the solver restarts from the best iterate with :math:`\omega`
moved halfway to 1.

How long each stage lasts, and :math:`\omega`, depend on how hard the problem is (``"auto"``):

* :math:`\varepsilon \ge 10^{-4} D^2` (e.g. 100 x 100 at :math:`\varepsilon \ge 2`): one
  iteration per stage and :math:`\omega = 1.9`, the fastest settings measured on such problems.
* :math:`\varepsilon < 10^{-4} D^2` (a blur of under 1% of the diameter): each stage iterates
  plain Sinkhorn until its column-marginal error is at most ``max(tol, 1e-2)``, at most 20 times,
  and the target uses :math:`\omega = 1.95`. Over-relaxation converges only near the solution;
  from one iteration per stage, 1.95 diverged at these sizes; from converged stages it is 2 to 4
  times faster than before. Measured (stop 18, ``docs/benchmarks.md``): iterations to
  ``tol = 1e-3`` fell from 283 to 183 (100 x 100, :math:`\varepsilon = 1`), 464 to 209
  (256 x 256, :math:`\varepsilon = 4`) and 2,932 to 1,242 (OT-Q's ``city1000`` distributions
  pooled to 250 x 250, :math:`\varepsilon = 1`). On easier problems converged stages took up to
  40% more iterations in all (twice as many with 1.95), hence the threshold.

A solve that does not reach ``tol`` within ``max_iter`` iterations raises
:class:`~otsafe.errors.ConvergenceError` (or, with ``strict=False``, returns a plan whose
:attr:`SinkhornInfo.converged` is False). A previous plan can warm-start the next solve (OT-Q
re-solves once per episode); a warm start gets 25 iterations, after which the solver starts
afresh with :math:`\varepsilon`-scaling: from potentials of a different problem, Sinkhorn at a
small :math:`\varepsilon` can stall for thousands of iterations (measured on OT-Q's
:math:`P^\pi`, which changes by up to 0.35 in :math:`\ell_1` between episodes).

Precision: float64 is exact to rounding at any :math:`\varepsilon`. float32 (for GPUs) carries
about 7 digits, and the log-domain arguments reach :math:`c/\varepsilon \sim (H^2+W^2)/\varepsilon`,
so its attainable marginal error is roughly :math:`10^{-7}(\max|f| + \max|g|)/\varepsilon`
(up to :math:`10^{-7}(H^2 + W^2)/\varepsilon`). The reported error is never below that
resolution, so a ``tol`` under it raises :class:`~otsafe.errors.ConvergenceError` instead of
being reported as met.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from otsafe.errors import ConfigError, ConvergenceError, DistributionError
from otsafe.transport.exact import check_histogram_values, check_same_mass

if TYPE_CHECKING:
    import torch

__all__ = ["GridSinkhorn", "GridSinkhornPlan", "SinkhornInfo", "check_grid_marginals"]

# Factors below exp(-CUTOFF) are set to zero before the products, so that no product is a
# subnormal number (a batched product over subnormals ran 20x slower here); a lost term is then
# below exp(-CUTOFF), and a block sum is trusted when it is at least exp(-CUTOFF + MARGIN), MARGIN
# covering the number of terms and the precision (rounding 1e-16 in float64, 1e-7 in float32).
_CUTOFF = {8: 340.0, 4: 42.0}  # by itemsize
_MARGIN = {8: 37.0, 4: 17.0}
# The number just below -_CUTOFF in each precision: _exp_cut_ keeps x >= -_CUTOFF.
_CUT_BELOW = {
    8: float(np.nextafter(np.float64(-_CUTOFF[8]), np.float64(-np.inf))),
    4: float(np.nextafter(np.float32(-_CUTOFF[4]), np.float32(-np.inf))),
}
_MAX_BLOCK = 256  # also the starting block size
_DIVERGED = 10.0  # error above this multiple of the best one: over-relaxation has diverged
_STALLED = 100  # iterations without a new best error: over-relaxation oscillates
_WARM_BUDGET = 25  # iterations a warm start gets before the solver starts afresh
# "auto" iterations (module docstring, *Iterations*): below _SMALL_EPSILON * diameter^2 each
# annealing stage runs up to _HARD_STAGE_ITER plain iterations (until its marginal error is at
# most _STAGE_TOL, or tol if looser) and the target stage over-relaxes with _HARD_OMEGA.
_SMALL_EPSILON = 1e-4
_STAGE_TOL = 1e-2
_HARD_STAGE_ITER = 20
_EASY_OMEGA, _HARD_OMEGA = 1.9, 1.95
# Block-size adaptation of the axis passes (_AxisPass): a pass starts with blocks of _MAX_BLOCK
# rows, shrinks them when more than a quarter of the rows needed smaller ones, and tries twice
# the size after _GROW_AFTER passes with at most 1/_CLEAN_SHARE of the rows recomputed.
_GROW_AFTER = 8
_CLEAN_SHARE = 16
_CHUNK_ELEMENTS = 1 << 24  # bound on the kernel temporaries of one axis pass (elements)


def _is_small_epsilon(epsilon: Any, diameter2: float) -> bool:
    """Whether ``epsilon`` is below ``_SMALL_EPSILON`` times the squared diameter (False if it is
    not a positive number: the constructor then reports it)."""
    try:
        return 0.0 < float(epsilon) < _SMALL_EPSILON * diameter2
    except (TypeError, ValueError):
        return False


def check_grid_marginals(
    a: ArrayLike, b: ArrayLike, shape: tuple[int, int] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64], tuple[int, int]]:
    """Validate two histograms on the same ``H x W`` grid.

    ``a`` and ``b`` are ``(H, W)`` arrays, or flat ``(H*W,)`` arrays together with ``shape``.
    Returns float64 ``(H, W)`` copies and the shape. Raises
    :class:`~otsafe.errors.DistributionError` naming the argument for a wrong shape, negative or
    non-finite entries, zero mass, or unequal masses (relative tolerance 1e-9).
    """
    out = []
    for name, x in (("a", a), ("b", b)):
        arr = np.array(x, dtype=np.float64)
        if shape is not None:
            h, w = shape
            if arr.shape not in ((h, w), (h * w,)):
                raise DistributionError(
                    f"{name} has shape {arr.shape}; expected ({h}, {w}) or ({h * w},)"
                )
            arr = arr.reshape(h, w)
        if arr.ndim != 2 or arr.size == 0:
            raise DistributionError(f"{name} must be an (H, W) grid histogram, got {arr.shape}")
        check_histogram_values(arr, name)
        out.append(arr)
    a_arr, b_arr = out
    if a_arr.shape != b_arr.shape:
        raise DistributionError(f"a and b live on different grids: {a_arr.shape} vs {b_arr.shape}")
    check_same_mass(a_arr, b_arr)
    hh, ww = a_arr.shape
    return a_arr, b_arr, (int(hh), int(ww))


def check_cell_pairs(
    i: ArrayLike, j: ArrayLike, n: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Flat cell indices ``i``, ``j`` of a plan query as int64 arrays of one shape in ``[0, n)``."""
    ii = np.asarray(i, dtype=np.int64)
    jj = np.asarray(j, dtype=np.int64)
    if ii.shape != jj.shape:
        raise DistributionError(f"i and j must have the same shape, got {ii.shape}, {jj.shape}")
    if ii.size and (min(ii.min(), jj.min()) < 0 or max(ii.max(), jj.max()) >= n):
        raise DistributionError(f"cell indices must lie in [0, {n})")
    return ii, jj


def resolve_device(device: Any) -> torch.device:
    """A ``torch.device`` from ``None``/``"cpu"``/``"cuda"``/``"cuda:1"``/a device; named errors."""
    import torch

    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        msg = f"device must be 'cpu', 'cuda' or a torch.device, got {device!r}"
        raise ConfigError(msg) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be a CPU or CUDA device, got {device!r}")
    return dev


def _resolve_dtype(dtype: Any) -> torch.dtype:
    import torch

    table = {"float64": torch.float64, "float32": torch.float32}
    if isinstance(dtype, str):
        if dtype not in table:
            raise ConfigError(f"dtype must be float64 or float32, got {dtype!r}")
        return table[dtype]
    if dtype not in (torch.float64, torch.float32):
        raise ConfigError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}")
    return dtype  # type: ignore[no-any-return]


@dataclass(frozen=True)
class SinkhornInfo:
    """What a grid Sinkhorn solve did.

    Attributes
    ----------
    iterations : int
        Sinkhorn iterations (one update of f and one of g), annealing stages included.
    marginal_error : float
        :math:`\\|T\\mathbf 1 - a\\|_1 / \\|a\\|_1` of the returned plan (its column marginal is
        exact).
    converged : bool
        ``marginal_error <= tol``.
    epsilon, tol : float
        Target regularisation (cell^2 units) and requested tolerance.
    seconds : float
        Wall time of the solve.
    fallback_share : float
        Share of the rows of the axis passes that had to be recomputed with smaller blocks (a
        speed diagnostic).
    """

    iterations: int
    marginal_error: float
    converged: bool
    epsilon: float
    tol: float
    seconds: float
    fallback_share: float


class _AxisPass:
    r"""One axis of the separable soft-min, with an adaptive block size.

    Computes ``out[k, j] = LSE_l (h[k, l] + logk[j, l])`` for a fixed log-kernel ``logk``
    (``-(j - l)^2 / eps`` and variants), exactly, by block-stabilised matrix products on the rows
    shifted to a maximum of 0. Rows with an untrusted entry are recomputed with blocks four times
    smaller, down to single rows, which are exact by construction (then :math:`t_l = h(k, l)` and
    the largest term of every sum is 1).
    """

    def __init__(self, block: int | None = None) -> None:
        self.block = _MAX_BLOCK if block is None else block
        self.entries = 0
        self.fallbacks = 0
        self._clean_streak = 0

    def state(self) -> list[int]:
        """``[block, clean_streak, entries, fallbacks]``."""
        return [self.block, self._clean_streak, self.entries, self.fallbacks]

    @classmethod
    def from_state(cls, values: Any) -> _AxisPass:
        """A pass with the given :meth:`state`; ``ValueError`` if it is malformed."""
        try:
            block, streak, entries, fallbacks = (int(v) for v in values)
        except (TypeError, ValueError) as exc:
            expected = "[block, streak, entries, fallbacks]"
            raise ValueError(f"expected {expected}, got {values!r}") from exc
        if block < 1 or min(streak, entries, fallbacks) < 0:
            raise ValueError(f"block must be positive and counters non-negative, got {values!r}")
        p = cls(block)
        p._clean_streak, p.entries, p.fallbacks = streak, entries, fallbacks
        return p

    def __call__(self, h: torch.Tensor, logk: torch.Tensor) -> torch.Tensor:
        import torch

        n_rows = h.shape[0]
        b = min(self.block, n_rows)
        # Every row is shifted to a maximum of 0 first (and the shift added back at the end), so
        # that rows at different heights can share a block: the block's stabiliser t_l is then
        # not dominated by the highest row. Measured on converged potentials (128 x 128 at
        # eps = 1, 256 x 256 at eps = 4), blocks of 8 to 16 rows stay trusted where 2 to 4 did.
        top = h.amax(dim=1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        h = h - top
        out, bad = _blocked_pass(h, logk, b)
        redo = bad.any(dim=1).nonzero().squeeze(1)
        n_redo = int(redo.numel())
        settled = b  # the first block size after which at most a quarter of the rows was left
        while redo.numel() and b > 1:
            if redo.numel() > n_rows // 4:
                settled = max(1, b // 4)
            b = max(1, b // 4)
            sub, sub_bad = _blocked_pass(h[redo], logk, b)
            out[redo] = sub
            redo = redo[sub_bad.any(dim=1)] if b > 1 else redo[:0]
        self.entries += n_rows
        self.fallbacks += n_redo
        # Adapt the starting block size for the next call (the result depends on it only in the
        # last bits, through rounding; see GridSinkhorn.adaptive_state). When more than a quarter
        # of the rows needed smaller blocks, take the first smaller size that left at most a
        # quarter; try doubling it after a run of passes with few rows recomputed. (Halving
        # instead, the old rule, takes many passes to get down from a large size. Restarting at
        # twice the settled size, or going back to the last good size after a failed doubling,
        # did 4-13% fewer kernel exponentials but recomputed more rows, and took as long or
        # longer, up to 1.2x at 256 x 256, eps = 4.)
        if n_redo > n_rows // 4 and self.block > 1:
            self.block = settled
            self._clean_streak = 0
        elif n_redo * _CLEAN_SHARE <= n_rows:
            self._clean_streak += 1
            if self._clean_streak >= _GROW_AFTER and self.block < min(_MAX_BLOCK, n_rows):
                self.block *= 2
                self._clean_streak = 0
        return out + top


def _blocked_pass(h: torch.Tensor, logk: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``LSE_l (h[k, l] + logk[j, l])`` with row blocks of ``b``; also the untrusted entries."""
    import torch

    n_rows, n_in = h.shape
    n_out = logk.shape[0]
    cutoff = _CUTOFF[h.element_size()]
    floor = math.exp(-cutoff + _MARGIN[h.element_size()] + math.log(n_in))
    zero = torch.zeros((), dtype=h.dtype, device=h.device)
    pad = (-n_rows) % b
    hp = torch.cat([h, h.new_full((pad, n_in), -math.inf)]) if pad else h
    nb = hp.shape[0] // b
    hb = hp.view(nb, b, n_in)
    t = hb.amax(dim=1)  # (nb, n_in): the block's stabiliser t_l (-inf where all of h is)
    rows = _exp_cut_(hb - torch.where(torch.isfinite(t), t, zero)[:, None, :])  # <= 1
    out = torch.empty(nb, b, n_out, dtype=h.dtype, device=h.device)
    small = torch.empty(nb, b, n_out, dtype=torch.bool, device=h.device)
    # Kernel blocks are (n_out x n_in) each: process them in chunks to bound memory.
    per_chunk = max(1, _CHUNK_ELEMENTS // max(1, n_out * n_in))
    for s in range(0, nb, per_chunk):
        e = min(nb, s + per_chunk)
        # (in place on the temporaries: the kernel blocks are the pass's largest tensors)
        m = t[s:e, None, :] + logk[None, :, :]  # (c, n_out, n_in)
        u = m.amax(dim=2)  # u_j
        kern = _exp_cut_(m.sub_(torch.where(torch.isfinite(u), u, zero)[:, :, None]))
        sums = torch.bmm(rows[s:e], kern.transpose(1, 2))  # (c, b, n_out), kern <= 1
        torch.lt(sums, floor, out=small[s:e])
        torch.add(sums.log_(), u[:, None, :], out=out[s:e])
    return out.view(nb * b, n_out)[:n_rows], small.view(nb * b, n_out)[:n_rows]


def _exp_cut_(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` for ``x <= 0``, with results below ``exp(-_CUTOFF)`` (for ``x``'s precision)
    set to exactly zero; in place (``x`` is overwritten and returned).

    ``threshold_`` keeps the entries above its threshold (and NaN) in one pass, without the
    boolean mask of ``masked_fill_(x < -_CUTOFF, ...)``: 1.6x faster on 4e6 float64 entries, and the
    same result (the threshold is the number just below ``-_CUTOFF``, so ``-_CUTOFF`` is kept).
    """
    import torch

    return torch.threshold_(x, _CUT_BELOW[x.element_size()], -math.inf).exp_()


class _SoftMin:
    """The separable operator ``h -> LSE_y [h(y) + logK(x, y)]`` on the grid, for one epsilon."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        # Squared distances between row (column) coordinates, (H, H) and (W, W).
        self.c_rows = (rows[:, None] - rows[None, :]) ** 2
        self.c_cols = (cols[:, None] - cols[None, :]) ** 2
        # One pair of axis passes per purpose ("f", "g", ...): each adapts its block size to the
        # potentials it sees.
        self._passes: dict[str, tuple[_AxisPass, _AxisPass]] = {}

    def apply(
        self,
        h: torch.Tensor,
        eps: float,
        *,
        key: str = "",
        weight_rows: bool = False,
        weight_cols: bool = False,
    ) -> torch.Tensor:
        """``LSE_{k,l}[h(k,l) - c/eps]``; ``weight_*`` multiplies the kernel by that axis's cost."""
        logk_c = -self.c_cols / eps
        logk_r = -self.c_rows / eps
        if weight_cols:
            logk_c = logk_c + self.c_cols.log()
        if weight_rows:
            logk_r = logk_r + self.c_rows.log()
        key = f"{key}:{int(weight_rows)}{int(weight_cols)}"
        if key not in self._passes:
            self._passes[key] = (_AxisPass(), _AxisPass())
        col_pass, row_pass = self._passes[key]
        t = col_pass(h, logk_c)  # (H, W): over columns l for each row k
        return row_pass(t.T.contiguous(), logk_r).T.contiguous()  # over rows k

    def state(self) -> dict[str, list[list[int]]]:
        """The adaptive state of every pair of axis passes."""
        return {key: [p.state() for p in pair] for key, pair in self._passes.items()}

    @staticmethod
    def passes_from_state(state: Any) -> dict[str, tuple[_AxisPass, _AxisPass]]:
        """Axis passes rebuilt from :meth:`state`; ``ValueError`` if it is malformed."""
        if not isinstance(state, dict):
            raise ValueError(f"expected a mapping of pass pairs, got {type(state).__name__}")
        passes = {}
        for key, pair in state.items():
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"{key!r}: expected two passes, got {pair!r}")
            passes[str(key)] = (_AxisPass.from_state(pair[0]), _AxisPass.from_state(pair[1]))
        return passes

    def counters(self) -> tuple[int, int]:
        """``(entries, fallbacks)`` over all passes so far."""
        passes = [p for pair in self._passes.values() for p in pair]
        return sum(p.entries for p in passes), sum(p.fallbacks for p in passes)


@dataclass(eq=False)
class GridSinkhornPlan:
    r"""An entropic plan on a grid, stored as its potentials: :math:`T(x, y) = a(x) b(y)
    e^{(f(x) + g(y) - c(x, y))/\varepsilon}`, never materialised.

    Cells are addressed by flat row-major indices ``x = row * W + col``.
    """

    shape: tuple[int, int]
    epsilon: float
    f: torch.Tensor  # (H, W), cell^2 units
    g: torch.Tensor
    log_a: torch.Tensor  # log of the normalised histograms (-inf where empty)
    log_b: torch.Tensor
    mass: float
    info: SinkhornInfo
    _softmin: _SoftMin = field(repr=False)

    # ------------------------------------------------------------------ entries
    def at(self, i: ArrayLike, j: ArrayLike) -> NDArray[np.float64]:
        """:math:`T(i, j)` for arrays of flat source indices ``i`` and target indices ``j``."""
        import torch

        ii, jj = check_cell_pairs(i, j, self.shape[0] * self.shape[1])
        w = self.shape[1]
        dev = self.f.device
        ti = torch.as_tensor(ii.ravel(), device=dev)
        tj = torch.as_tensor(jj.ravel(), device=dev)
        cost = ((ti // w - tj // w) ** 2 + (ti % w - tj % w) ** 2).to(self.f.dtype)
        f, g = self.f.reshape(-1), self.g.reshape(-1)
        la, lb = self.log_a.reshape(-1), self.log_b.reshape(-1)
        logt = la[ti] + lb[tj] + (f[ti] + g[tj] - cost) / self.epsilon
        out = torch.exp(logt).double().cpu().numpy() * self.mass
        return np.asarray(out.reshape(ii.shape), dtype=np.float64)

    def dense(self) -> NDArray[np.float64]:
        """The plan as a dense ``(n, n)`` array (tests and small grids only; ``n <= 4096``)."""
        n = self.shape[0] * self.shape[1]
        if n > 4096:
            raise DistributionError(f"dense() is for small grids (n <= 4096), this one has {n}")
        ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        return self.at(ii, jj)

    def marginals(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Row and column marginals of the plan, each ``(H, W)``."""
        eps = self.epsilon
        sm = self._softmin
        rows = self.log_a + self.f / eps + sm.apply(self.g / eps + self.log_b, eps, key="f")
        cols = self.log_b + self.g / eps + sm.apply(self.f / eps + self.log_a, eps, key="g")
        return _to_numpy(rows.exp()) * self.mass, _to_numpy(cols.exp()) * self.mass

    # ------------------------------------------------------------------ values
    @cached_property
    def cost(self) -> float:
        r""":math:`\langle T, c\rangle`, the plan's transport cost (it estimates :math:`W_2^2`)."""
        import torch

        eps = self.epsilon
        h = self.g / eps + self.log_b
        # c = c_rows + c_cols, so  sum_y K c h  splits into two separable sums.
        part_r = self._softmin.apply(h, eps, key="f", weight_rows=True)
        part_c = self._softmin.apply(h, eps, key="f", weight_cols=True)
        log_sum = torch.logaddexp(part_r, part_c) + self.f / eps + self.log_a
        return float(torch.exp(log_sum).sum()) * self.mass

    @property
    def dual_value(self) -> float:
        r""":math:`\langle f, a\rangle + \langle g, b\rangle`, the entropic cost
        :math:`\mathrm{OT}_\varepsilon(a, b)` at convergence."""
        a, b = self.log_a.exp(), self.log_b.exp()
        return float((self.f * a).sum() + (self.g * b).sum()) * self.mass

    def wasserstein(self, p: float = 2) -> float:
        """:math:`\\langle T, c\\rangle^{1/p}`: the plan's estimate of :math:`W_2` (``p = 2``)."""
        return float(max(self.cost, 0.0) ** (1.0 / p))

    def barycentric_map(self) -> NDArray[np.float64]:
        r"""Where each source cell's mass goes on average, :math:`\sum_y T(x, y)\, y / \sum_y
        T(x, y)`: an ``(H, W, 2)`` array of (row, col) coordinates (NaN where :math:`a(x) = 0`)."""
        import torch

        eps = self.epsilon
        h = self.g / eps + self.log_b
        rows = torch.arange(self.shape[0], dtype=h.dtype, device=h.device)[:, None]
        cols = torch.arange(self.shape[1], dtype=h.dtype, device=h.device)[None, :]
        sm = self._softmin
        base = sm.apply(h, eps, key="f")
        out = []
        for coord in (rows, cols):
            # Coordinates are >= 0, so log(coord) (-inf at 0) weights the kernel sum.
            weighted = sm.apply(h + torch.log(coord.expand_as(h)), eps, key="f")
            out.append(torch.exp(weighted - base))
        bary = _to_numpy(torch.stack(out, dim=-1))
        bary[~np.isfinite(_to_numpy(self.log_a))] = np.nan
        return bary

    def source(self) -> NDArray[np.float64]:
        """The source histogram :math:`a` the plan was solved for, ``(H, W)`` float64."""
        return _to_numpy(self.log_a.exp()) * self.mass

    def potentials(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(f, g)`` as ``(H, W)`` float64 arrays (cell^2 units)."""
        return _to_numpy(self.f), _to_numpy(self.g)


def _to_numpy(x: torch.Tensor) -> NDArray[np.float64]:
    return np.asarray(x.detach().double().cpu().numpy(), dtype=np.float64)


class GridSinkhorn:
    r"""Log-domain Sinkhorn on an ``H x W`` grid with separable kernels (module docstring).

    Parameters
    ----------
    shape : (int, int)
        Grid size ``(H, W)``.
    epsilon : float
        Target entropic regularisation :math:`\varepsilon` in cell^2 units (the plan blurs over
        about :math:`\sqrt{\varepsilon}` cells).
    tol : float
        Stop when the :math:`\ell_1` error of the row marginal is at most ``tol`` times the mass.
    max_iter : int
        Iteration budget at the target :math:`\varepsilon` (annealing stages not counted).
    scaling : float in (0, 1)
        Factor by which :math:`\varepsilon` shrinks from one annealing stage to the next.
    omega : float in [1, 2) or "auto"
        Over-relaxation at the target :math:`\varepsilon` (1 = plain Sinkhorn). ``"auto"``
        (default): 1.9 if :math:`\varepsilon \ge 10^{-4} D^2`, else 1.95 (see *Iterations*). 1.9
        was the fastest of {1, 1.5, 1.8, 1.9, 1.95, a rate-based choice} on 30 x 30 and 100 x 100
        grids at :math:`\varepsilon \in [0.25, 4]` with one iteration per stage
        (docs/benchmarks.md); the best value grows as :math:`\varepsilon / D^2` shrinks.
    stage_iter : int >= 1 or "auto"
        Most iterations per annealing stage; a stage also ends once its column-marginal error is
        at most ``max(tol, 1e-2)``. ``"auto"`` (default): 1 if
        :math:`\varepsilon \ge 10^{-4} D^2`, else 20.
    device : str or torch.device, optional
        ``"cpu"`` (default) or ``"cuda"``.
    dtype : {"float64", "float32"} or torch dtype
    strict : bool
        Raise :class:`~otsafe.errors.ConvergenceError` when ``tol`` is not met (default), or return
        the unconverged plan with ``info.converged = False``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((3, 3)); a[0, 0] = 1.0
    >>> b = np.zeros((3, 3)); b[2, 2] = 1.0
    >>> plan = GridSinkhorn((3, 3), epsilon=0.05, tol=1e-9).solve(a, b)
    >>> round(plan.cost, 6)  # all mass moves from (0, 0) to (2, 2): cost 2^2 + 2^2
    8.0
    """

    def __init__(
        self,
        shape: tuple[int, int],
        *,
        epsilon: float = 1.0,
        tol: float = 1e-3,
        max_iter: int = 10_000,
        scaling: float = 0.5,
        omega: float | str = "auto",
        stage_iter: int | str = "auto",
        device: Any = None,
        dtype: Any = "float64",
        strict: bool = True,
    ) -> None:
        import torch

        h, w = (int(s) for s in shape)
        if h < 1 or w < 1:
            raise ConfigError(f"grid shape must be positive, got {shape!r}")
        diameter2 = float((h - 1) ** 2 + (w - 1) ** 2)
        # "auto" settings (module docstring, *Iterations*): hard problems get converged stages.
        hard = _is_small_epsilon(epsilon, diameter2)
        if isinstance(omega, str) and omega == "auto":
            omega = _HARD_OMEGA if hard else _EASY_OMEGA
        if isinstance(stage_iter, str) and stage_iter == "auto":
            stage_iter = _HARD_STAGE_ITER if hard else 1
        if isinstance(stage_iter, bool) or not isinstance(stage_iter, (int, np.integer)):
            raise ConfigError(
                f"stage_iter must be a positive integer or 'auto', got {stage_iter!r}"
            )
        if stage_iter < 1:
            raise ConfigError(f"stage_iter must be at least 1, got {stage_iter!r}")
        try:
            epsilon, tol, scaling, omega = (float(x) for x in (epsilon, tol, scaling, omega))
        except (TypeError, ValueError):
            raise ConfigError(
                "epsilon, tol, scaling and omega must be numbers, got "
                f"{epsilon!r}, {tol!r}, {scaling!r}, {omega!r}"
            ) from None
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ConfigError(f"epsilon must be a positive number, got {epsilon!r}")
        if not (math.isfinite(tol) and tol > 0):
            raise ConfigError(f"tol must be a positive number, got {tol!r}")
        if int(max_iter) < 1:
            raise ConfigError(f"max_iter must be at least 1, got {max_iter!r}")
        if not 0.0 < scaling < 1.0:
            raise ConfigError(f"scaling must lie in (0, 1), got {scaling!r}")
        if not 1.0 <= omega < 2.0:
            raise ConfigError(f"omega must lie in [1, 2), got {omega!r}")
        self.shape = (h, w)
        self.epsilon, self.tol = float(epsilon), float(tol)
        self.max_iter, self.scaling, self.omega = int(max_iter), float(scaling), float(omega)
        self.stage_iter = int(stage_iter)
        self.strict = bool(strict)
        self.device = resolve_device(device)
        self.dtype = _resolve_dtype(dtype)
        rows = torch.arange(h, dtype=self.dtype, device=self.device)
        cols = torch.arange(w, dtype=self.dtype, device=self.device)
        self._softmin = _SoftMin(rows, cols)
        self._diameter2 = diameter2

    def adaptive_state(self) -> dict[str, list[list[int]]]:
        """The block sizes (and counters) the axis passes have adapted to, for checkpoints.

        The plans are exact to the tolerance whatever the block sizes, but the block-stabilised
        sums round differently for different sizes, so a solver restarted from the default sizes
        differs from a continuing one in the last bits. Saving this and restoring it with
        :meth:`load_adaptive_state` makes a resumed run continue bit for bit.
        """
        return self._softmin.state()

    @staticmethod
    def check_adaptive_state(state: Any) -> None:
        """Raise ``ValueError`` unless ``state`` is what :meth:`adaptive_state` returns."""
        _SoftMin.passes_from_state(state)

    def load_adaptive_state(self, state: Any) -> None:
        """Restore :meth:`adaptive_state` (``ValueError`` if malformed; nothing changes then)."""
        self._softmin._passes = _SoftMin.passes_from_state(state)

    def plan_from_potentials(
        self,
        f: torch.Tensor,
        g: torch.Tensor,
        log_a: torch.Tensor,
        log_b: torch.Tensor,
        *,
        epsilon: float,
        mass: float,
        info: SinkhornInfo,
    ) -> GridSinkhornPlan:
        """A plan of this solver from saved potentials (e.g. a checkpoint's
        :class:`GridSinkhornPlan` fields): copies on this solver's device and dtype.

        Raises ``ValueError`` if a tensor is not on this solver's ``(H, W)`` grid.
        """
        tensors = {"f": f, "g": g, "log_a": log_a, "log_b": log_b}
        for name, tensor in tensors.items():
            if tuple(tensor.shape) != self.shape:
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)}, this solver's grid is {self.shape}"
                )
        moved = {
            k: t.detach().to(dtype=self.dtype, device=self.device, copy=True)
            for k, t in tensors.items()
        }
        return GridSinkhornPlan(
            shape=self.shape,
            epsilon=float(epsilon),
            mass=float(mass),
            info=info,
            _softmin=self._softmin,
            **moved,
        )

    def solve(
        self, a: ArrayLike, b: ArrayLike, *, warm_start: GridSinkhornPlan | None = None
    ) -> GridSinkhornPlan:
        """Entropic plan between ``a`` (source) and ``b`` (target), ``(H, W)`` or flat arrays.

        ``warm_start`` (a plan from this solver) skips the annealing and starts from its
        potentials, which pays off when consecutive problems are close.
        """
        import torch

        t0 = time.perf_counter()
        a_np, b_np, _ = check_grid_marginals(a, b, self.shape)
        mass = float(a_np.sum())
        dt, dev = self.dtype, self.device
        with np.errstate(divide="ignore"):
            log_a = torch.as_tensor(np.log(a_np / mass), dtype=dt, device=dev)
            log_b = torch.as_tensor(np.log(b_np / mass), dtype=dt, device=dev)
        sm = self._softmin
        entries0, fallbacks0 = sm.counters()

        def f_update(g: torch.Tensor, eps: float) -> torch.Tensor:
            return -eps * sm.apply(g / eps + log_b, eps, key="f")

        def g_update(f: torch.Tensor, eps: float) -> torch.Tensor:
            return -eps * sm.apply(f / eps + log_a, eps, key="g")

        eps_final = self.epsilon

        machine_eps = torch.finfo(dt).eps
        a_mass, b_mass = log_a.exp(), log_b.exp()

        def marginal_error(
            mass: torch.Tensor, old: torch.Tensor, new: torch.Tensor, eps: float
        ) -> float:
            """l1 error of a marginal mass * exp((old - new)/eps): the row marginal of (f, g) with
            old = f, new = f_update(g); the column marginal with old = g, new = g_update(f)."""
            return float((mass * torch.expm1((old - new) / eps).abs()).nan_to_num().sum())

        def row_error(f: torch.Tensor, f_new: torch.Tensor) -> float:
            """l1 error of the row marginal a * exp((f - f_new)/eps) of the plan (f, g), where
            f_new = f_update(g); never below the rounding resolution of the potentials (which
            matters in float32: (f + g - c)/eps carries relative rounding machine_eps)."""
            error = marginal_error(a_mass, f, f_new, eps_final)
            resolution = machine_eps * float(f.abs().amax() + f_new.abs().amax()) / eps_final
            return max(error, resolution)

        def iterate(
            f: torch.Tensor, g: torch.Tensor, budget: int
        ) -> tuple[float, torch.Tensor, torch.Tensor, int]:
            """Over-relaxed Sinkhorn at the target epsilon until the marginals meet tol.

            Returns a consistent plan (f, g_update(f)): its column marginal is exact and the
            returned error is its row marginal's.
            """
            w = self.omega
            done = 0
            while True:
                best = (math.inf, f, g)
                since_best = 0
                while done < budget:
                    f_new = f_update(g, eps_final)
                    error = row_error(f, f_new)  # of the plan (f, g)
                    if error < best[0]:
                        best = (error, f, g)
                        since_best = 0
                    else:
                        since_best += 1
                    if w > 1.0 and (not error < _DIVERGED * best[0] or since_best > _STALLED):
                        # Over-relaxation is only locally convergent: when the error blows up
                        # or stops improving, restart from the best iterate with omega halfway
                        # to 1 (plain Sinkhorn, omega = 1, converges and is never restarted).
                        w = 1.0 + 0.5 * (w - 1.0) if w > 1.05 else 1.0
                        _, f, g = best
                        since_best = 0
                        done += 1
                        continue
                    if error <= self.tol:
                        break
                    f = f_new if w == 1.0 else (1.0 - w) * f + w * f_new
                    g_new = g_update(f, eps_final)
                    g = g_new if w == 1.0 else (1.0 - w) * g + w * g_new
                    done += 1
                # With omega > 1 (or a warm start from another problem) g need not be the exact
                # update of f: finish with the exact one and measure the row error again.
                f = best[1]
                g = g_update(f, eps_final)
                error = row_error(f, f_update(g, eps_final))
                if error <= self.tol or done >= budget:
                    return error, f, g, done

        iterations = 0
        error = math.inf
        if warm_start is not None and warm_start.shape == self.shape:
            # A warm start pays off only when the problems are close; otherwise start afresh.
            error, f, g, iterations = iterate(
                warm_start.f.to(dtype=dt, device=dev),
                warm_start.g.to(dtype=dt, device=dev),
                min(_WARM_BUDGET, self.max_iter),
            )
        if not error <= self.tol:
            # epsilon-scaling from the squared diameter down: up to stage_iter plain iterations
            # per stage, until the column marginal of (f, g_old) is within stage_tol.
            stage_tol = max(self.tol, _STAGE_TOL)
            f = torch.zeros(self.shape, dtype=dt, device=dev)
            g = torch.zeros(self.shape, dtype=dt, device=dev)
            eps = max(self._diameter2, eps_final)
            while eps > eps_final:
                eps = max(eps * self.scaling, eps_final)
                if eps == eps_final:
                    break
                for k in range(self.stage_iter):
                    f = f_update(g, eps)
                    g_new = g_update(f, eps)
                    iterations += 1
                    last = (
                        k + 1 == self.stage_iter
                        or marginal_error(b_mass, g, g_new, eps) <= stage_tol
                    )
                    g = g_new
                    if last:
                        break
            error, f, g, done = iterate(f, g, self.max_iter)
            iterations += done
        converged = error <= self.tol
        entries, fallbacks = sm.counters()
        entries, fallbacks = entries - entries0, fallbacks - fallbacks0
        info = SinkhornInfo(
            iterations=iterations,
            marginal_error=error,
            converged=converged,
            epsilon=eps_final,
            tol=self.tol,
            seconds=time.perf_counter() - t0,
            fallback_share=fallbacks / max(1, entries),
        )
        if self.strict and not converged:
            raise ConvergenceError(
                f"grid Sinkhorn did not reach tol={self.tol:g} within max_iter={self.max_iter} "
                f"iterations at epsilon={eps_final:g} (best marginal error {error:.3g}); raise "
                "max_iter or epsilon, loosen tol, or use float64"
            )
        return GridSinkhornPlan(
            shape=self.shape,
            epsilon=eps_final,
            f=f,
            g=g,
            log_a=log_a,
            log_b=log_b,
            mass=mass,
            info=info,
            _softmin=sm,
        )
