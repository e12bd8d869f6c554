r"""A batched, exact, differentiable QP layer for safety filters.

For every row of a batch, :func:`solve_qp` solves

.. math::

    \min_{u,\,s}\ \tfrac12 \|u - u_{ref}\|_W^2 + \tfrac12 p\, s^2
    \quad\text{s.t.}\quad G u \le h + s\mathbf 1,\quad lb \le u \le ub,\quad s \ge 0,

where the slack :math:`s` (one per row, shared by all rows of :math:`G`) exists only when a slack
penalty :math:`p` is given. Stacking :math:`z = (u, s)`, every problem is a strictly convex QP
:math:`\min \tfrac12 z^\top H z + q^\top z` s.t. :math:`A z \le b`.

Why not cvxpylayers or qpth? Both solve these problems with iterative conic or interior-point
methods. That is slow for millions of tiny problems (measured here: cvxpylayers about 500 ms and
qpth about 25 ms for one forward and backward pass at batch 256), and only accurate to about 1e-4.
qpth also has open NaN-gradient issues. The problems a safety filter solves are tiny (n <= 8
controls, m <= 32 barrier rows), so otsafe solves them *exactly*, with an active-set method, and
differentiates the solution in closed form.

**Solution.** The active set (the constraints holding with equality at the optimum) is found
without gradients by one of two exact methods:

* ``enumerate`` (small problems): every subset :math:`S` of at most ``n`` constraint rows defines
  the equality-constrained minimiser
  :math:`\lambda_S = K_S^{-1}(A_S H^{-1}(-q) - b_S)`, :math:`z_S = H^{-1}(-q - A_S^\top\lambda_S)`
  with :math:`K_S = A_S H^{-1} A_S^\top`. All of them are solved in one batched call, and the
  optimum is the primal-feasible candidate with :math:`\lambda_S \ge 0` (KKT). Used for at most
  3 variables (n + slack) when (number of candidates) x (number of rows) <= 300, e.g. n = 2 with
  up to 8 rows including bounds; the work grows like :math:`M^{n+1}`.
* ``active-set``: the dual active-set method of Goldfarb and Idnani (1983), batched with masks.
  It starts from the unconstrained minimiser, adds the most violated constraint, and drops
  constraints whose multiplier would turn negative. It terminates in finitely many steps, keeps
  the active rows linearly independent (so duplicated and parallel rows are harmless), and proves
  infeasibility when a violated row cannot be added.

**Gradients.** Given the active set, the solution is the closed form above. otsafe evaluates it
once more *with* autograd, from the original tensors. This gives the exact implicit-function
derivative of the KKT system with respect to ``u_ref``, ``G``, ``h``, ``lb``, ``ub`` and ``weight``.
At a degenerate point (a weakly active constraint) it is a one-sided derivative.

**Never NaN.** With a slack penalty every problem is feasible. Without one, a row whose
constraints contradict each other gets status ``INFEASIBLE`` and the output of the *elastic*
problem: the same QP with a slack penalty of ``1e6`` (times the largest weight), i.e. close to the
point minimising the largest violation of the ``G`` rows while the bounds hold. That output is
finite and so are its gradients.

**Sizes.** Both methods are exact for any size. The benchmarks and tests cover batches of 1 to
10^5 rows, n <= 8 controls and m <= 32 rows, where enumeration (n = 2, few rows) or the
active-set method (everything else) runs in milliseconds. Beyond that the active-set method is
the general method: it needs O(M) iterations of O(M^2 + N^3) work per row, and the tests check it
at n = 12, m = 48 against Clarabel.

Loops run over active-set iterations, never over the batch: all work is batched tensor algebra
on the inputs' device and dtype (float32 or float64; CPU or CUDA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import torch
from torch import Tensor

from otsafe.errors import OtsafeError
from otsafe.safety.active_set import (
    INFEASIBLE_SLOT,
    ActiveSetQP,
    StackedQP,
    enumerate_active_set,
    goldfarb_idnani_active_set,
    gram,
    n_candidates,
)

__all__ = ["QPError", "QPInfo", "QPStatus", "solve_qp"]

Backend = Literal["native", "cvxpylayers"]
Method = Literal["auto", "enumerate", "active-set"]

_MAX_ENUMERATION_WORK = 300
ELASTIC_PENALTY = 1e6
#: Solver arguments of ``backend="cvxpylayers"``: tight, because this backend is the reference
#: that tests compare against (its defaults are only accurate to ~1e-4).
CVXPYLAYERS_SOLVER_ARGS: dict[str, float] = {
    "eps_abs": 1e-10,
    "eps_rel": 1e-10,
    "max_iters": 100_000,
}


class QPError(OtsafeError):
    """Invalid input to :func:`solve_qp` (shape, dtype, device, non-finite, inconsistent)."""


class QPStatus(IntEnum):
    """Per-row outcome of :func:`solve_qp`."""

    OPTIMAL = 0
    INFEASIBLE = 1  # only without a slack; the output is the elastic solution
    MAX_ITER = 2  # the active-set method hit its iteration cap (not observed in tests)


@dataclass(frozen=True)
class QPInfo:
    """Per-row details of a :func:`solve_qp` call.

    Attributes
    ----------
    status : Tensor of int64, shape (B,)
        :class:`QPStatus` values.
    active : Tensor of bool, shape (B, m)
        Rows of ``G`` in the active set at the solution.
    active_lb, active_ub : Tensor of bool, shape (B, n)
        Active lower and upper bounds.
    slack : Tensor, shape (B,)
        The slack :math:`s` (zero without a slack penalty, except for infeasible rows).
    iterations : int
        Active-set iterations (0 for ``enumerate``).
    method : str
        ``"enumerate"`` or ``"active-set"``.
    """

    status: Tensor
    active: Tensor
    active_lb: Tensor
    active_ub: Tensor
    slack: Tensor
    iterations: int
    method: str


# ------------------------------------------------------------------------------ public API
def solve_qp(
    u_ref: Tensor,
    G: Tensor,
    h: Tensor,
    lb: Tensor | float | None = None,
    ub: Tensor | float | None = None,
    slack_penalty: float | None = None,
    weight: Tensor | None = None,
    backend: Backend = "native",
    return_info: bool = False,
    method: Method = "auto",
) -> Tensor | tuple[Tensor, QPInfo]:
    r"""Solve a batch of small QPs exactly, differentiably (see the module docstring).

    Parameters
    ----------
    u_ref : Tensor, shape (B, n) or (n,)
        Reference actions; float32 or float64, on any device.
    G : Tensor, shape (B, m, n) or (m, n)
        Constraint matrix (``m = 0`` is allowed).
    h : Tensor, shape (B, m) or (m,)
        Constraint offsets.
    lb, ub : Tensor of shape (B, n) or (n,), float, or None
        Bounds on ``u``; entries may be infinite. Require ``lb <= ub``.
    slack_penalty : float, optional
        :math:`p > 0`: relax every row of ``G`` by one shared slack :math:`s \ge 0` costing
        :math:`\tfrac12 p s^2`; the problem is then always feasible.
    weight : Tensor, optional
        :math:`W`: positive diagonal, shape (n,) or (B, n), or symmetric positive definite, shape
        (n, n) or (B, n, n). Default identity.
    backend : {"native", "cvxpylayers"}
        ``"cvxpylayers"`` solves the same problems with cvxpylayers (optional dependency), as a
        reference; it supports float64 without ``weight`` and is slow.
    return_info : bool
        Also return a :class:`QPInfo`.
    method : {"auto", "enumerate", "active-set"}
        Exact method used to find the active set; ``auto`` enumerates small problems (see the
        module docstring) and uses the active-set method otherwise.

    Returns
    -------
    u : Tensor, shape (B, n) (or (n,) for 1-D ``u_ref``)
        The solution, differentiable with respect to every tensor argument.
    info : QPInfo
        Only when ``return_info`` is true.

    Raises
    ------
    QPError
        For shape, dtype or device mismatches, non-finite ``u_ref``/``G``/``h``, ``lb > ub``, a
        non-positive ``slack_penalty`` or weight, or an unknown ``backend``/``method``.

    Examples
    --------
    >>> import torch
    >>> u = solve_qp(torch.tensor([[2.0, 0.0]], dtype=torch.float64),
    ...              torch.tensor([[1.0, 0.0]], dtype=torch.float64),
    ...              torch.tensor([1.0], dtype=torch.float64))
    >>> u.tolist()
    [[1.0, 0.0]]
    """
    squeeze = isinstance(u_ref, Tensor) and u_ref.dim() == 1
    args = _validate(u_ref, G, h, lb, ub, slack_penalty, weight)
    u_ref, G, h, lb_t, ub_t, weight = args.u_ref, args.G, args.h, args.lb, args.ub, args.weight
    if backend == "cvxpylayers":
        u = _solve_cvxpylayers(u_ref, G, h, lb_t, ub_t, slack_penalty, weight)
        if return_info:
            raise QPError("return_info is only available with backend='native'")
        return u.squeeze(0) if squeeze else u
    if backend != "native":
        raise QPError(f"backend must be 'native' or 'cvxpylayers', got {backend!r}")
    if method not in ("auto", "enumerate", "active-set"):
        raise QPError(f"method must be 'auto', 'enumerate' or 'active-set', got {method!r}")

    u, info = _solve_native(
        u_ref, G, h, lb_t, ub_t, slack_penalty, weight, method, args.finite_bounds, return_info
    )
    if squeeze:
        u = u.squeeze(0)
    if return_info:
        assert info is not None
        return u, info
    return u


# ------------------------------------------------------------------------------ validation
def _as_tensor(name: str, x: Tensor | float, like: Tensor) -> Tensor:
    if isinstance(x, Tensor):
        if x.dtype != like.dtype:
            raise QPError(f"{name} has dtype {x.dtype}, expected {like.dtype} (the dtype of u_ref)")
        if x.device != like.device:
            raise QPError(f"{name} is on {x.device}, expected {like.device} (the device of u_ref)")
        return x
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise QPError(f"{name} must be a tensor, a number or None, got {type(x).__name__}")
    return torch.tensor(float(x), dtype=like.dtype, device=like.device)


def _validate(
    u_ref: Tensor,
    G: Tensor,
    h: Tensor,
    lb: Tensor | float | None,
    ub: Tensor | float | None,
    slack_penalty: float | None,
    weight: Tensor | None,
) -> _Checked:
    """Check and broadcast the arguments of :func:`solve_qp`.

    Shapes, dtypes and devices are checked first; the checks on values are collected as flags
    and read back in a single transfer (one host-device synchronisation on a GPU), then the
    first failing one is raised.
    """
    if not isinstance(u_ref, Tensor):
        raise QPError(f"u_ref must be a torch tensor, got {type(u_ref).__name__}")
    if u_ref.dtype not in (torch.float32, torch.float64):
        raise QPError(f"u_ref must be float32 or float64, got {u_ref.dtype}")
    if u_ref.dim() == 1:
        u_ref = u_ref.unsqueeze(0)
    if u_ref.dim() != 2 or u_ref.shape[1] == 0:
        raise QPError(f"u_ref must have shape (B, n) or (n,), got {tuple(u_ref.shape)}")
    batch, n = u_ref.shape
    for name, x in (("G", G), ("h", h)):
        if not isinstance(x, Tensor):
            raise QPError(f"{name} must be a torch tensor, got {type(x).__name__}")
    G = _as_tensor("G", G, u_ref)
    h = _as_tensor("h", h, u_ref)
    if G.dim() == 2:
        G = G.unsqueeze(0).expand(batch, *G.shape)
    if h.dim() == 1:
        h = h.unsqueeze(0).expand(batch, h.shape[0])
    if G.dim() != 3 or G.shape[0] != batch or G.shape[2] != n:
        raise QPError(f"G must have shape ({batch}, m, {n}) or (m, {n}), got {tuple(G.shape)}")
    m = G.shape[1]
    if h.shape != (batch, m):
        raise QPError(f"h must have shape ({batch}, {m}) or ({m},), got {tuple(h.shape)}")

    bounds: list[Tensor | None] = []
    for name, raw in (("lb", lb), ("ub", ub)):
        if raw is None:
            bounds.append(None)
            continue
        t = _as_tensor(name, raw, u_ref)
        if t.dim() <= 1:
            t = t.expand(n) if t.dim() == 0 else t
            t = t.unsqueeze(0).expand(batch, n) if t.dim() == 1 else t
        if t.shape != (batch, n):
            raise QPError(
                f"{name} must have shape ({batch}, {n}), ({n},) or be a scalar, "
                f"got {tuple(t.shape)}"
            )
        bounds.append(t)
    lb_t, ub_t = bounds

    if slack_penalty is not None and (
        isinstance(slack_penalty, bool)
        or not isinstance(slack_penalty, (int, float))
        or not (math.isfinite(slack_penalty) and slack_penalty > 0)
    ):
        raise QPError(f"slack_penalty must be a positive finite number, got {slack_penalty!r}")

    diagonal_weight = False
    if weight is not None:
        weight = _as_tensor("weight", weight, u_ref)
        # A 2-D weight of shape (n, n) is a matrix (also when B == n).
        is_matrix = weight.shape == (n, n) or weight.shape == (batch, n, n)
        if not is_matrix and weight.shape in ((n,), (batch, n)):
            diagonal_weight = True
        elif not is_matrix:
            raise QPError(
                f"weight must have shape ({n},), ({batch}, {n}), ({n}, {n}) or "
                f"({batch}, {n}, {n}), got {tuple(weight.shape)}"
            )

    # Checks on values: (flag, error message), read back together.
    checks: list[tuple[Tensor, str]] = []
    for name, x in (("u_ref", u_ref), ("G", G), ("h", h)):
        checks.append((~torch.isfinite(x).all(), f"{name} has NaN or infinite entries"))
    # absent rows: infinite bounds (lb = -inf, ub = +inf) drop out of the problem
    infinite: list[Tensor] = []
    for name, bound, wrong in (("lb", lb_t, math.inf), ("ub", ub_t, -math.inf)):
        if bound is not None:
            checks.append((torch.isnan(bound).any(), f"{name} has NaN entries"))
            sign = "+inf" if wrong > 0 else "-inf"
            checks.append(((bound == wrong).any(), f"{name} has {sign} entries"))
            infinite.append(torch.isinf(bound).any())
    if lb_t is not None and ub_t is not None:
        inconsistent = "lb > ub for some entries: the bounds are inconsistent"
        checks.append(((lb_t > ub_t).any(), inconsistent))
    if weight is not None:
        checks.append((~torch.isfinite(weight).all(), "weight has NaN or infinite entries"))
        if diagonal_weight:
            checks.append(((weight <= 0).any(), "a diagonal weight must be positive"))
    flags = torch.stack([flag for flag, _ in checks] + infinite).tolist()
    for failed, (_, message) in zip(flags[: len(checks)], checks, strict=True):
        if failed:
            raise QPError(message)
    finite_bounds = not any(flags[len(checks) :])

    if weight is not None:
        if diagonal_weight:
            weight = weight.expand(batch, n)
        else:
            weight = weight.expand(batch, n, n)
            if not bool(torch.allclose(weight, weight.transpose(1, 2))):
                raise QPError("a matrix weight must be symmetric")
            _, err = torch.linalg.cholesky_ex(weight)
            if bool((err != 0).any()):
                raise QPError("a matrix weight must be positive definite")
    return _Checked(u_ref, G, h, lb_t, ub_t, weight, finite_bounds)


@dataclass
class _Checked:
    """The arguments of :func:`solve_qp` after :func:`_validate`, broadcast to the batch."""

    u_ref: Tensor
    G: Tensor
    h: Tensor
    lb: Tensor | None
    ub: Tensor | None
    weight: Tensor | None
    finite_bounds: bool  # no infinite entry in lb or ub: every stacked row is present


# ------------------------------------------------------------------------- stacked problem
@dataclass
class _Layout:
    """Where the rows of G and the bounds sit in the stacked constraint matrix."""

    n: int
    m: int
    lb_rows: Tensor  # (n,) row indices, or empty
    ub_rows: Tensor


def _build(
    u_ref: Tensor,
    G: Tensor,
    h: Tensor,
    lb: Tensor | None,
    ub: Tensor | None,
    slack_penalty: float | None,
    weight: Tensor | None,
) -> tuple[StackedQP, _Layout]:
    """Stack z = (u, s) and every constraint into  min 1/2 z'Hz + q'z  s.t.  A z <= b.

    Built with differentiable tensor operations, so gradients reach u_ref, G, h, lb, ub, weight.
    """
    batch, n = u_ref.shape
    m = G.shape[1]
    dt, dev = u_ref.dtype, u_ref.device
    has_slack = slack_penalty is not None
    n_z = n + int(has_slack)
    dense_w = weight is not None and weight.dim() == 3

    if dense_w:
        assert weight is not None
        q_u = -(weight @ u_ref.unsqueeze(-1)).squeeze(-1)
    else:
        q_u = -(weight if weight is not None else 1.0) * u_ref
    blocks_a = [
        torch.cat([G, -torch.ones(batch, m, 1, dtype=dt, device=dev)], 2) if has_slack else G
    ]
    blocks_b = [h]
    eye = torch.eye(n, n_z, dtype=dt, device=dev).expand(batch, n, n_z)
    rows = m
    lb_rows = ub_rows = torch.zeros(0, dtype=torch.long, device=dev)
    if lb is not None:
        blocks_a.append(-eye)
        blocks_b.append(-lb)
        lb_rows = torch.arange(rows, rows + n, device=dev)
        rows += n
    if ub is not None:
        blocks_a.append(eye)
        blocks_b.append(ub)
        ub_rows = torch.arange(rows, rows + n, device=dev)
        rows += n
    if has_slack:  # -s <= 0
        blocks_a.append(-torch.eye(n_z, dtype=dt, device=dev)[n:].expand(batch, 1, n_z))
        blocks_b.append(torch.zeros(batch, 1, dtype=dt, device=dev))
    a = torch.cat(blocks_a, dim=1)
    b = torch.cat(blocks_b, dim=1)
    q = torch.cat([q_u, torch.zeros(batch, 1, dtype=dt, device=dev)], 1) if has_slack else q_u
    layout = _Layout(n=n, m=m, lb_rows=lb_rows, ub_rows=ub_rows)
    if dense_w:
        assert weight is not None
        h_full = weight
        if has_slack:
            assert slack_penalty is not None
            pen = torch.full((batch, 1, 1), float(slack_penalty), dtype=dt, device=dev)
            top = torch.cat([weight, torch.zeros(batch, n, 1, dtype=dt, device=dev)], 2)
            bottom = torch.cat([torch.zeros(batch, 1, n, dtype=dt, device=dev), pen], 2)
            h_full = torch.cat([top, bottom], 1)
        return StackedQP(None, h_full, q, a, b), layout
    if weight is None and not has_slack:
        return StackedQP(None, None, q, a, b), layout  # H = I
    h_diag = weight if weight is not None else torch.ones(batch, n, dtype=dt, device=dev)
    if has_slack:
        pen = torch.full((batch, 1), float(slack_penalty or 0.0), dtype=dt, device=dev)
        h_diag = torch.cat([h_diag, pen], 1)
    return StackedQP(h_diag, None, q, a, b), layout


# ------------------------------------------------------------------------------ native solve
def _solve_native(
    u_ref: Tensor,
    G: Tensor,
    h: Tensor,
    lb: Tensor | None,
    ub: Tensor | None,
    slack_penalty: float | None,
    weight: Tensor | None,
    method: Method,
    finite_bounds: bool,
    want_info: bool = True,
    elastic: bool = False,
) -> tuple[Tensor, QPInfo | None]:
    batch, n = u_ref.shape
    dev = u_ref.device
    prob, layout = _build(u_ref, G, h, lb, ub, slack_penalty, weight)
    n_rows, n_z = prob.a.shape[1], prob.a.shape[2]

    # 1) the active set, without gradients
    with torch.inference_mode():
        detached = StackedQP(
            None if prob.h_diag is None else prob.h_diag.detach(),
            None if prob.h_full is None else prob.h_full.detach(),
            prob.q.detach(),
            prob.a.detach(),
            prob.b.detach(),
        )
        g = gram(detached, all_present=finite_bounds)
    if method == "auto":
        # Enumeration costs ~C*M per row (C candidate sets), the active-set method ~M^2 per
        # iteration; measured crossover (benchmarks/bench_qp.py): C*M around 300.
        small = n_z <= 3 and n_candidates(n_rows, n_z) * max(n_rows, 1) <= _MAX_ENUMERATION_WORK
        method = "enumerate" if small else "active-set"
    iterations = 0
    status = torch.full((batch,), int(QPStatus.OPTIMAL), dtype=torch.long, device=dev)
    if n_rows == 0:
        slots = torch.full((batch, n_z), -1, dtype=torch.long, device=dev)
    elif method == "enumerate":
        if n_z > 3:
            raise QPError("method='enumerate' handles at most 3 variables (n + slack <= 3)")
        slots = enumerate_active_set(g, n_z)
    else:
        slots, converged, iterations = goldfarb_idnani_active_set(g, n_z)
        status = torch.where(converged, status, int(QPStatus.MAX_ITER))
    slots = slots.clone()  # leave inference mode: the slots are saved for backward
    infeasible = slots[:, 0] == INFEASIBLE_SLOT
    any_infeasible = bool(infeasible.any())
    if any_infeasible:
        slots = torch.where(infeasible.unsqueeze(-1), torch.full_like(slots, -1), slots)

    # 2) the solution on that active set, differentiable in closed form
    z: Tensor = ActiveSetQP.apply(  # type: ignore[no-untyped-call]
        prob.q, prob.a, prob.b, prob.h_diag, prob.h_full, slots
    )
    u = z[:, :n]
    if not (want_info or any_infeasible):
        return u, None
    slack = z[:, n].detach() if slack_penalty is not None else torch.zeros_like(u[:, 0]).detach()
    status = torch.where(infeasible, int(QPStatus.INFEASIBLE), status)

    if any_infeasible and not elastic:
        # Elastic re-solve of the infeasible rows (the bounds stay hard; lb <= ub is checked).
        rows = infeasible.nonzero().squeeze(-1)
        scale = 1.0 if weight is None else float(weight.detach().abs().max())
        u_el, info_el = _solve_native(
            u_ref[rows],
            G[rows],
            h[rows],
            None if lb is None else lb[rows],
            None if ub is None else ub[rows],
            ELASTIC_PENALTY * scale,
            None if weight is None else weight[rows],
            "auto",
            finite_bounds,
            elastic=True,
        )
        assert info_el is not None
        u = u.index_put((rows,), u_el)
        slack = slack.index_put((rows,), info_el.slack)

    active = torch.zeros(batch, n_rows + 1, dtype=torch.bool, device=dev)
    active.scatter_(1, torch.where(slots >= 0, slots, n_rows), True)
    no_bound = torch.zeros(batch, n, dtype=torch.bool, device=dev)
    info = QPInfo(
        status=status,
        active=active[:, : layout.m],
        active_lb=active[:, layout.lb_rows] if lb is not None else no_bound,
        active_ub=active[:, layout.ub_rows] if ub is not None else no_bound,
        slack=slack,
        iterations=iterations,
        method=method,
    )
    return u, info


# ------------------------------------------------------------------------------ reference
def _solve_cvxpylayers(
    u_ref: Tensor,
    G: Tensor,
    h: Tensor,
    lb: Tensor | None,
    ub: Tensor | None,
    slack_penalty: float | None,
    weight: Tensor | None,
) -> Tensor:
    """The same problems through cvxpylayers (reference for tests and benchmarks)."""
    try:
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise QPError(
            "backend='cvxpylayers' needs the optional packages cvxpy and cvxpylayers "
            "(pip install cvxpylayers)"
        ) from exc
    if weight is not None:
        raise QPError("backend='cvxpylayers' does not support weight")
    _batch, n = u_ref.shape
    m = G.shape[1]
    u = cp.Variable(n)
    u_ref_p, g_p, h_p = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    params = [u_ref_p, g_p, h_p]
    args = [u_ref, G, h]
    objective = 0.5 * cp.sum_squares(u - u_ref_p)
    cons = []
    if slack_penalty is not None:
        s = cp.Variable(nonneg=True)
        objective = objective + 0.5 * slack_penalty * cp.square(s)
        cons.append(g_p @ u <= h_p + s)
    elif m:
        cons.append(g_p @ u <= h_p)
    for bound, sign in ((lb, -1.0), (ub, 1.0)):
        if bound is None:
            continue
        p_b = cp.Parameter(n)
        finite = torch.isfinite(bound)
        big = torch.where(finite, bound, torch.full_like(bound, sign * 1e12))
        params.append(p_b)
        args.append(big)
        cons.append(sign * u <= sign * p_b)
    layer = CvxpyLayer(cp.Problem(cp.Minimize(objective), cons), parameters=params, variables=[u])
    (out,) = layer(*args, solver_args=dict(CVXPYLAYERS_SOLVER_ARGS))
    result: Tensor = out
    return result
