r"""Exact active-set kernels for batches of small strictly convex QPs.

Every problem here is in the stacked form

.. math:: \min_z\ \tfrac12 z^\top H z + q^\top z \quad\text{s.t.}\quad A z \le b,

with :math:`H` positive definite (diagonal or dense), :math:`N` variables and :math:`M` rows
(entries of :math:`b` may be :math:`+\infty` for absent bounds). Everything is expressed through
the unconstrained minimiser :math:`z_0 = -H^{-1} q`, the violations :math:`v = A z_0 - b` and the
Gram matrix :math:`P = A H^{-1} A^\top`. For an active set :math:`S`,

.. math::

    \lambda_S = P_{SS}^{-1} v_S, \qquad z_S = z_0 - H^{-1} A_S^\top \lambda_S, \qquad
    A z_S - b = v - P_{:S}\lambda_S,

and :math:`S` is optimal iff :math:`\lambda_S \ge 0` and :math:`A z_S \le b` (KKT). Two exact
ways to find it:

:func:`enumerate_active_set`
    Evaluates every :math:`S` with :math:`|S| \le N \le 3`, size by size, with closed-form 1x1,
    2x2 and 3x3 solves, and keeps the first KKT candidate; it stops at the first size that
    solves every row. Optimal when there are few candidates (the common n = 2 safety filter).
:func:`goldfarb_idnani_active_set`
    The dual active-set method of Goldfarb & Idnani (1983, *A numerically stable dual method for
    solving strictly convex quadratic programs*), batched with masks. It starts at :math:`z_0`,
    adds the most violated row, and drops a row whenever its multiplier would become negative.
    The active rows stay linearly independent, and it detects infeasibility.

:class:`ActiveSetQP` then evaluates :math:`z_S` for the found :math:`S` and differentiates it in
closed form (implicit differentiation of the KKT system on the active set).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ActiveSetQP",
    "StackedQP",
    "enumerate_active_set",
    "goldfarb_idnani_active_set",
    "n_candidates",
]

# Marks the slots of a row found infeasible.
INFEASIBLE_SLOT = -2


@dataclass
class StackedQP:
    """A batch of QPs  min 1/2 z'Hz + q'z  s.t.  A z <= b  (H diagonal or dense, SPD)."""

    h_diag: Tensor | None  # (B, N) when H is diagonal
    h_full: Tensor | None  # (B, N, N) when H is dense; both None: H = I
    q: Tensor  # (B, N)
    a: Tensor  # (B, M, N)
    b: Tensor  # (B, M); +inf for absent bounds

    def h_inv(self, x: Tensor) -> Tensor:
        """:math:`H^{-1} x` for ``x`` of shape (B, N) or (B, N, k)."""
        return h_inv_apply(self.h_diag, self.h_full, x)


def h_inv_apply(h_diag: Tensor | None, h_full: Tensor | None, x: Tensor) -> Tensor:
    """:math:`H^{-1} x` for a diagonal (``h_diag``), dense (``h_full``) or identity :math:`H`."""
    if h_diag is None and h_full is None:
        return x
    if h_diag is not None:
        return x / (h_diag if x.dim() == 2 else h_diag.unsqueeze(-1))
    assert h_full is not None
    rhs = x.unsqueeze(-1) if x.dim() == 2 else x
    out = torch.cholesky_solve(rhs, torch.linalg.cholesky(h_full))
    return out.squeeze(-1) if x.dim() == 2 else out


@dataclass
class Gram:
    """Quantities shared by the active-set finders (no gradients)."""

    z0: Tensor  # (B, N) unconstrained minimiser
    ahinv: Tensor  # (B, M, N) = A H^-1
    p: Tensor  # (B, M, M) = A H^-1 A'
    v: Tensor  # (B, M) = A z0 - b  (-inf for absent rows)
    tol: Tensor  # (B, M) feasibility tolerance
    present: Tensor  # (B, M) rows with finite b
    eps: float  # relative precision used for the tolerances
    all_present: bool  # every entry of b is finite


@torch.inference_mode()
def gram(prob: StackedQP, all_present: bool | None = None) -> Gram:
    """Precompute :math:`z_0`, :math:`A H^{-1}`, :math:`P` and the violations.

    ``all_present`` says whether every entry of :math:`b` is finite, when the caller knows it
    (it saves reading a flag back from the device); ``None`` finds out.
    """
    z0 = prob.h_inv(-prob.q)
    ahinv = prob.h_inv(prob.a.transpose(1, 2)).transpose(1, 2)
    p = ahinv @ prob.a.transpose(1, 2)
    present = torch.isfinite(prob.b)
    v = (prob.a @ z0.unsqueeze(-1)).squeeze(-1) - prob.b  # -inf where b = +inf
    eps = 1e-11 if prob.q.dtype == torch.float64 else 2e-5
    # |b| + |A| |z0|, the size of the terms whose difference is tested against zero
    scale = (prob.a.abs() @ z0.abs().unsqueeze(-1)).squeeze(-1) + prob.b.abs().nan_to_num(0.0, 0.0)
    if all_present is None:
        all_present = bool(present.all())
    tol = eps * (1.0 + scale)
    return Gram(z0, ahinv, p, v, tol, present, eps, all_present)


def small_inverse(k: Tensor) -> Tensor:
    """Inverse of a batch of small nonsingular matrices (closed form up to 3x3, LAPACK beyond)."""
    if k.shape[-1] <= 3:
        return small_inverse_det(k)[0]
    inv: Tensor = torch.linalg.inv(k)
    return inv


def small_inverse_det(k: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse and determinant of a batch of 1x1, 2x2 or 3x3 matrices, in closed form."""
    size = k.shape[-1]
    if size == 1:
        return 1.0 / k, k[..., 0, 0]
    if size == 2:
        a, b, c, d = k[..., 0, 0], k[..., 0, 1], k[..., 1, 0], k[..., 1, 1]
        det = a * d - b * c
        inv = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
        return inv / det[..., None, None], det
    if size == 3:
        m = k
        c00 = m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1]
        c01 = m[..., 1, 2] * m[..., 2, 0] - m[..., 1, 0] * m[..., 2, 2]
        c02 = m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0]
        c10 = m[..., 0, 2] * m[..., 2, 1] - m[..., 0, 1] * m[..., 2, 2]
        c11 = m[..., 0, 0] * m[..., 2, 2] - m[..., 0, 2] * m[..., 2, 0]
        c12 = m[..., 0, 1] * m[..., 2, 0] - m[..., 0, 0] * m[..., 2, 1]
        c20 = m[..., 0, 1] * m[..., 1, 2] - m[..., 0, 2] * m[..., 1, 1]
        c21 = m[..., 0, 2] * m[..., 1, 0] - m[..., 0, 0] * m[..., 1, 2]
        c22 = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
        det = m[..., 0, 0] * c00 + m[..., 0, 1] * c01 + m[..., 0, 2] * c02
        adj = torch.stack(
            [
                torch.stack([c00, c10, c20], -1),
                torch.stack([c01, c11, c21], -1),
                torch.stack([c02, c12, c22], -1),
            ],
            -2,
        )
        return adj / det[..., None, None], det
    raise ValueError(f"closed-form inverse handles sizes 1 to 3, got {size}")


# ------------------------------------------------------------------------------ enumeration
def n_candidates(n_rows: int, n_vars: int) -> int:
    """Number of candidate active sets (|S| <= N) that enumeration evaluates."""
    return sum(math.comb(n_rows, k) for k in range(min(n_vars, n_rows) + 1))


_CANDIDATES: dict[tuple[int, int, str], Tensor] = {}

# Evaluate the remaining candidate sizes on the open rows alone only when they cost at least this
# many residual entries per row: gathering the rows costs more than it saves below. Measured side
# by side with evaluating every size on every row (n = 2, 2 threads, ad hoc): with 3 rows + a box
# (196 and 147 entries left after sizes 0 and 1) the open rows alone were 2-7x faster at
# B = 64 to 4096; with 4 rows and no box (40 and 24 entries) up to 1.5x slower at B = 64 to 256.
_SUBSET_MIN_WORK = 64


def _candidates(n_rows: int, size: int, device: torch.device) -> Tensor:
    """All ``size``-subsets of ``range(n_rows)``, (C, size), cached per device."""
    key = (n_rows, size, str(device))
    if key not in _CANDIDATES:
        combos = list(itertools.combinations(range(n_rows), size))
        table = torch.tensor(combos, dtype=torch.long, device=device)
        _CANDIDATES[key] = table.reshape(len(combos), size)
    return _CANDIDATES[key]


_TABLES: dict[tuple[int, int, int, int, str], Tensor] = {}


def _candidate_table(n_rows: int, n_vars: int, sizes: range, device: torch.device) -> Tensor:
    """The candidates of the given sizes in order, padded with -1 to (C, n_vars), cached."""
    key = (n_rows, n_vars, sizes.start, sizes.stop, str(device))
    if key not in _TABLES:
        _TABLES[key] = torch.cat(
            [
                torch.nn.functional.pad(_candidates(n_rows, k, device), (0, n_vars - k), value=-1)
                for k in sizes
            ]
        )
    return _TABLES[key]


def _rows_of(g: Gram, idx: Tensor | slice) -> Gram:
    """The Gram quantities of the batch rows ``idx`` (a slice gives views)."""
    return Gram(
        g.z0[idx],
        g.ahinv[idx],
        g.p[idx],
        g.v[idx],
        g.tol[idx],
        g.present[idx],
        g.eps,
        g.all_present,
    )


@torch.inference_mode()
def enumerate_active_set(
    g: Gram, n_vars: int, chunk_elements: int = 1 << 23, stop_early: bool | None = None
) -> Tensor:
    """Optimal active set by evaluating every candidate with ``|S| <= n_vars <= 3``.

    Returns slots (B, n_vars): row indices, -1 for empty slots, all
    :data:`INFEASIBLE_SLOT` for rows with no KKT candidate (infeasible problems).
    The candidates are tried in order of size, and within a size in the order of
    ``itertools.combinations``; the first KKT candidate wins. On the CPU the sizes stop once
    every row has one, and costly sizes run on the rows still open alone (see
    :func:`_enumerate`); on a GPU every size runs on every row, without synchronising. The batch is
    processed in chunks so that at most ``chunk_elements`` candidate residuals are held at once.
    ``stop_early`` overrides the choice by device (``None``); the result is the same either way.
    """
    if n_vars > 3:
        raise ValueError("enumeration handles at most 3 variables")
    batch, n_rows = g.v.shape
    per_row = n_candidates(n_rows, n_vars) * max(n_rows, 1)
    step = max(1, chunk_elements // max(per_row, 1))
    if batch > step:
        parts = [
            enumerate_active_set(
                _rows_of(g, slice(i, i + step)),
                n_vars,
                chunk_elements,
                stop_early,
            )
            for i in range(0, batch, step)
        ]
        return torch.cat(parts)
    if stop_early is None:
        stop_early = stops_early(g.v.device)
    return _enumerate(g, n_vars, 0, stop_early)


def stops_early(device: torch.device) -> bool:
    """Whether enumeration on ``device`` stops at the first size that solves every row.

    Only on the CPU: on a GPU, reading back how many rows are still open (a synchronisation)
    costs more than the sizes it could save, so every size runs on every row there.
    """
    return device.type == "cpu"


def _enumerate(g: Gram, n_vars: int, first_size: int, stop_early: bool) -> Tensor:
    """:func:`enumerate_active_set` on one chunk, trying the sizes from ``first_size`` on.

    The sizes are evaluated on the whole chunk and the first KKT candidate is picked once at the
    end. With ``stop_early`` they stop at the first size that solves every row, and once the
    rows still without a candidate are at most half the chunk and the sizes left are costly (at
    least :data:`_SUBSET_MIN_WORK` candidate residuals per row), those sizes are evaluated on the
    open rows alone. Without it every size is evaluated on the whole chunk.
    """
    batch, n_rows = g.v.shape
    dev = g.v.device
    last = min(n_vars, n_rows)
    oks: list[Tensor] = []  # per size, (B, C) in combination order
    found = torch.zeros(batch, dtype=torch.bool, device=dev)
    rest: tuple[Tensor, Tensor] | None = None
    shared: _Shared | None = None  # what every size >= 1 needs, computed once
    for size in range(first_size, last + 1):
        if size > 0 and shared is None:
            shared = _Shared.of(g)
        oks.append(_kkt_candidates(g, size, n_vars, shared))
        found = found | oks[-1].any(-1)
        if size == last or not stop_early:
            continue
        n_open = int((~found).sum())
        if n_open == 0:
            break
        rest_work = sum(math.comb(n_rows, k) for k in range(size + 1, last + 1)) * n_rows
        if 2 * n_open <= batch and rest_work >= _SUBSET_MIN_WORK:
            keep = (~found).nonzero().squeeze(-1)
            rest = keep, _enumerate(_rows_of(g, keep), n_vars, size + 1, stop_early)
            break
    table = _candidate_table(n_rows, n_vars, range(first_size, first_size + len(oks)), dev)
    ok = torch.cat(oks, 1)
    slots = table[ok.to(torch.int8).argmax(-1)]  # int8: argmax returns the first maximum
    slots = torch.where(found.unsqueeze(-1), slots, torch.full_like(slots, INFEASIBLE_SLOT))
    if rest is not None:
        slots[rest[0]] = rest[1]
    return slots


@dataclass
class _Shared:
    """The quantities of a Gram batch that every candidate size >= 1 uses."""

    v: Tensor  # (B, M) violations, 0 for absent rows
    diag: Tensor  # (B, M) diagonal of P
    p_max: Tensor  # (B, 1, 1) largest diagonal entry

    @classmethod
    def of(cls, g: Gram) -> _Shared:
        v = g.v if g.all_present else torch.where(g.present, g.v, torch.zeros_like(g.v))
        diag = g.p.diagonal(dim1=1, dim2=2)
        return cls(v, diag, diag.amax(-1, keepdim=True).unsqueeze(1))


def _kkt_candidates(g: Gram, size: int, n_vars: int, shared: _Shared | None) -> Tensor:
    r"""Which ``size``-subsets of the rows are KKT active sets, (B, C) in combination order.

    Closed-form 1x1, 2x2 and 3x3 solves of :math:`P_{SS}\lambda_S = v_S`, then
    :math:`\lambda_S \ge 0` and :math:`v - P_{:S}\lambda_S \le` tol (with rounding).
    ``shared`` (:meth:`_Shared.of` of ``g``) is needed for ``size >= 1``.
    """
    lam_tol = 1e-9 if g.v.dtype == torch.float64 else 1e-4
    det_tol = 1e-12 if g.v.dtype == torch.float64 else 1e-6
    if size == 0:  # absent rows (b = +inf) have v = -inf and always pass
        return (g.v <= g.tol).all(-1, keepdim=True)
    assert shared is not None
    v, diag, p_max = shared.v, shared.diag, shared.p_max
    cand = _candidates(g.v.shape[1], size, g.v.device)  # (C, size)
    if size == 1:  # lam_i = v_i / P_ii;  residual v - lam_i P_i:
        regular = diag > 1e-14 * (1.0 + p_max[:, 0])
        lam = v / torch.where(regular, diag, 1.0)
        resid = v.unsqueeze(1) - lam.unsqueeze(-1) * g.p
        lam_abs, lam_min = lam.abs(), lam
    elif size == 2:  # closed-form 2x2 solve on pairs (i, j)
        i, j = cand[:, 0], cand[:, 1]
        rows_i, rows_j = g.p[:, i, :], g.p[:, j, :]  # (B, C, M)
        pii, pjj, pij = diag[:, i], diag[:, j], g.p[:, i, j]
        det = pii * pjj - pij * pij
        regular = det > det_tol * pii * pjj
        safe = torch.where(regular, det, 1.0)
        vi, vj = v[:, i], v[:, j]
        lam_i = (pjj * vi - pij * vj) / safe
        lam_j = (pii * vj - pij * vi) / safe
        resid = v.unsqueeze(1) - lam_i.unsqueeze(-1) * rows_i - lam_j.unsqueeze(-1) * rows_j
        lam_abs = torch.maximum(lam_i.abs(), lam_j.abs())
        lam_min = torch.minimum(lam_i, lam_j)
    else:  # |S| = 3, closed-form 3x3 inverse
        k_mat = g.p[:, cand[:, :, None], cand[:, None, :]]  # (B, C, 3, 3)
        inv, det = small_inverse_det(k_mat)
        regular = det > det_tol * k_mat.diagonal(dim1=-2, dim2=-1).prod(-1)
        lam = (inv @ v[:, cand].unsqueeze(-1)).squeeze(-1)
        resid = v.unsqueeze(1) - (lam.unsqueeze(-1) * g.p[:, cand, :]).sum(-2)
        lam_abs, lam_min = lam.abs().amax(-1), lam.amin(-1)
    if not g.all_present:
        regular = regular & g.present[:, cand].all(-1)
        resid = resid.masked_fill(~g.present.unsqueeze(1), -math.inf)
    # rounding in v - P_S lam grows with |P_S| |lam|, so the tolerance does too
    tol = g.tol.unsqueeze(1) + (g.eps * n_vars) * (lam_abs.unsqueeze(-1) * p_max)
    return regular & (lam_min >= -lam_tol * (1.0 + lam_abs)) & (resid <= tol).all(-1)


# ---------------------------------------------------------------------------- Goldfarb-Idnani
@torch.inference_mode()
def goldfarb_idnani_active_set(
    g: Gram, n_vars: int, max_iter: int | None = None
) -> tuple[Tensor, Tensor, int]:
    """Batched dual active-set method of Goldfarb & Idnani on the Gram representation.

    Returns ``(slots, done, iterations)``: slots (B, n_vars) as in
    :func:`enumerate_active_set`, ``done`` (B,) false for rows that hit ``max_iter``.
    """
    batch, n_rows = g.v.shape
    dt, dev = g.v.dtype, g.v.device
    rows = torch.arange(batch, device=dev)
    slot_ids = torch.arange(n_vars, device=dev).unsqueeze(0)
    row_ids = torch.arange(n_rows, device=dev).unsqueeze(0)
    tiny = (1e-13 if dt == torch.float64 else 1e-6) * (1.0 + g.p.diagonal(dim1=1, dim2=2))
    r_tol = 1e-12 if dt == torch.float64 else 1e-6
    # State: active slots and multipliers, the row being added and its multiplier.
    slots = torch.full((batch, n_vars), -1, dtype=torch.long, device=dev)
    lam = torch.zeros(batch, n_vars, dtype=dt, device=dev)
    coef = torch.zeros(batch, n_rows, dtype=dt, device=dev)  # dz = -H^-1 A' coef
    p = torch.full((batch,), -1, dtype=torch.long, device=dev)
    lam_p = torch.zeros(batch, dtype=dt, device=dev)
    done = torch.zeros(batch, dtype=torch.bool, device=dev)
    infeasible = torch.zeros(batch, dtype=torch.bool, device=dev)
    max_iter = max_iter or 4 * (n_rows + n_vars) + 20
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - returned
        # Violations of the iterate z = z0 - H^-1 A' coef:  A z - b = v - P coef.
        viol = g.v - (g.p @ coef.unsqueeze(-1)).squeeze(-1)
        viol = torch.where(g.present, viol, torch.full_like(viol, -math.inf))
        # rounding in v - P coef grows with |P| |coef|
        tol = g.tol + g.eps * (g.p.abs() @ coef.abs().unsqueeze(-1)).squeeze(-1)
        # 1) rows not adding a constraint pick the most violated one (relative to tolerance).
        in_set = torch.zeros(batch, n_rows + 1, dtype=torch.bool, device=dev)
        in_set.scatter_(1, torch.where(slots >= 0, slots, n_rows), True)
        scaled = torch.where(in_set[:, :n_rows], torch.full_like(viol, -math.inf), viol / tol)
        worst, worst_idx = scaled.max(dim=1)
        choose = ~done & (p < 0)
        optimal = choose & (worst <= 1.0)
        done = done | optimal
        start = choose & ~optimal
        p = torch.where(start, worst_idx, p)
        lam_p = torch.where(start, torch.zeros_like(lam_p), lam_p)
        running = ~done
        if not bool(running.any()):
            break
        # 2) step towards A_p z = b_p keeping the active rows tight:
        #    z <- z - t H^-1 (A_p' - A_S' r),  lam_S <- lam_S - t r,  lam_p <- lam_p + t.
        pp = p.clamp(min=0)
        valid = slots >= 0
        idx = slots.clamp(min=0)
        k_mat = g.p[rows[:, None, None], idx[:, :, None], idx[:, None, :]]
        vv = valid.unsqueeze(-1) & valid.unsqueeze(1)
        k_mat = torch.where(vv, k_mat, torch.zeros_like(k_mat)) + torch.diag_embed((~valid).to(dt))
        g_sp = torch.where(valid, g.p[rows[:, None], idx, pp[:, None]], torch.zeros_like(lam))
        r = torch.linalg.solve(k_mat, g_sp)  # dual step direction
        r = torch.where(valid, r, torch.zeros_like(r))
        curvature = g.p[rows, pp, pp] - (g_sp * r).sum(-1)  # A_p H^-1 (A_p' - A_S' r)
        full_ok = curvature > tiny[rows, pp]
        v_p = viol[rows, pp]
        t_full = torch.where(
            full_ok, v_p / torch.where(full_ok, curvature, 1.0), torch.full_like(v_p, math.inf)
        )
        blocking = valid & (r > r_tol * (1.0 + r.abs().amax(-1, keepdim=True)))
        ratios = torch.where(
            blocking, lam / torch.where(blocking, r, 1.0), torch.full_like(lam, math.inf)
        )
        t_part, drop = ratios.min(dim=1)
        stuck = running & ~full_ok & ~torch.isfinite(t_part)  # row p can never be satisfied
        infeasible = infeasible | stuck
        done = done | stuck
        act = running & ~stuck
        t = torch.where(act, torch.minimum(t_full, t_part), torch.zeros_like(t_full))
        t = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
        # primal move (only when A_p is not in the span of the active rows)
        step = torch.where(full_ok, t, torch.zeros_like(t)).unsqueeze(-1)
        coef = coef + step * (row_ids == pp[:, None]).to(dt)
        coef = coef.scatter_add(1, idx, torch.where(valid, -step * r, torch.zeros_like(r)))
        lam = torch.where(
            act.unsqueeze(-1) & valid, (lam - t.unsqueeze(-1) * r).clamp(min=0.0), lam
        )
        lam_p = lam_p + t
        add = act & full_ok & (t_full <= t_part)
        drop_now = act & ~add
        drop_mask = drop_now.unsqueeze(-1) & (slot_ids == drop.unsqueeze(-1))
        slots = torch.where(drop_mask, torch.full_like(slots, -1), slots)
        lam = torch.where(drop_mask, torch.zeros_like(lam), lam)
        empty = slots < 0
        first_empty = empty.to(torch.int8).argmax(-1)
        add_mask = add.unsqueeze(-1) & (slot_ids == first_empty.unsqueeze(-1)) & empty
        slots = torch.where(add_mask, p.unsqueeze(-1).expand_as(slots), slots)
        lam = torch.where(add_mask, lam_p.unsqueeze(-1).expand_as(lam), lam)
        p = torch.where(add, torch.full_like(p, -1), p)
    slots = torch.where(infeasible.unsqueeze(-1), torch.full_like(slots, INFEASIBLE_SLOT), slots)
    return slots, done, iterations


# ------------------------------------------------------------------------ differentiable solve
def _gather_active(a: Tensor, b: Tensor, slots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows A_S, b_S of the active slots (zero rows for empty slots) and the slot mask."""
    batch, n_rows, n_z = a.shape
    valid = slots >= 0
    if n_rows == 0:
        zeros = a.new_zeros(batch, slots.shape[1], n_z)
        return zeros, a.new_zeros(batch, slots.shape[1]), valid
    idx = slots.clamp(min=0)
    a_s = torch.gather(a, 1, idx.unsqueeze(-1).expand(-1, -1, n_z))
    a_s = torch.where(valid.unsqueeze(-1), a_s, torch.zeros_like(a_s))
    b_s = torch.where(valid, torch.gather(b, 1, idx), torch.zeros_like(a_s[..., 0]))
    return a_s, b_s, valid


class ActiveSetQP(torch.autograd.Function):
    """:math:`z_S` for a fixed active set, with its exact derivative (KKT on the active set).

    ``ActiveSetQP.apply(q, a, b, h_diag, h_full, slots)`` returns ``z`` (B, N). The backward pass
    solves the adjoint KKT system :math:`K\nu = A_S H^{-1}\bar g`,
    :math:`w = H^{-1}(\bar g - A_S^\top \nu)` and returns :math:`\\partial q = -w`,
    :math:`\\partial b_S = \nu`, :math:`\\partial A_S = -(\\lambda w^\top + \nu z^\top)` and
    :math:`\\partial H = -w z^\top` (symmetrised for a dense :math:`H`).
    """

    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        a: Tensor,
        b: Tensor,
        h_diag: Tensor | None,
        h_full: Tensor | None,
        slots: Tensor,
    ) -> Tensor:
        a_s, b_s, valid = _gather_active(a, b, slots)
        hinv_at = h_inv_apply(h_diag, h_full, a_s.transpose(1, 2))  # (B, N, k)
        k_inv = small_inverse(a_s @ hinv_at + torch.diag_embed((~valid).to(q.dtype)))
        z0 = h_inv_apply(h_diag, h_full, -q)
        rhs = (a_s @ z0.unsqueeze(-1)).squeeze(-1) - b_s
        lam = torch.where(valid, (k_inv @ rhs.unsqueeze(-1)).squeeze(-1), torch.zeros_like(rhs))
        z = z0 - (hinv_at @ lam.unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(a_s, hinv_at, k_inv, lam, z, slots, h_diag, h_full)
        ctx.shapes = (a.shape, b.shape)
        return z

    @staticmethod
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        a_s, hinv_at, k_inv, lam, z, slots, h_diag, h_full = ctx.saved_tensors
        a_shape, b_shape = ctx.shapes
        valid = slots >= 0
        idx = slots.clamp(min=0)
        nu = (k_inv @ (hinv_at.transpose(1, 2) @ grad_z.unsqueeze(-1))).squeeze(-1)
        nu = torch.where(valid, nu, torch.zeros_like(nu))
        w = h_inv_apply(
            h_diag, h_full, grad_z - (a_s.transpose(1, 2) @ nu.unsqueeze(-1)).squeeze(-1)
        )
        grad_a = grad_b = grad_hd = grad_hf = None
        if ctx.needs_input_grad[1] and a_shape[1] > 0:
            grad_as = -(lam.unsqueeze(-1) * w.unsqueeze(1) + nu.unsqueeze(-1) * z.unsqueeze(1))
            grad_as = torch.where(valid.unsqueeze(-1), grad_as, torch.zeros_like(grad_as))
            grad_a = torch.zeros(a_shape, dtype=z.dtype, device=z.device)
            grad_a.scatter_add_(1, idx.unsqueeze(-1).expand_as(grad_as), grad_as)
        if ctx.needs_input_grad[2] and b_shape[1] > 0:
            grad_b = torch.zeros(b_shape, dtype=z.dtype, device=z.device)
            grad_b.scatter_add_(1, idx, nu)
        if h_diag is not None and ctx.needs_input_grad[3]:
            grad_hd = -(w * z)
        if h_full is not None and ctx.needs_input_grad[4]:
            outer = w.unsqueeze(-1) * z.unsqueeze(1)
            grad_hf = -0.5 * (outer + outer.transpose(1, 2))
        return -w, grad_a, grad_b, grad_hd, grad_hf, None
