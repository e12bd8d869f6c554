"""Baselines and reference for ``benchmarks/bench_qp.py``.

All of them solve, per batch row,

    minimise ½‖u − u_ref‖²  subject to  G u ≤ h,  lb ≤ u ≤ ub (when given),

with the same call ``method(u_ref, G, h, lb, ub) -> u`` on tensors u_ref (B, n), G (B, m, n),
h (B, m), lb/ub (B, n) or None:

- :class:`CvxpyLayersQP`: a ``CvxpyLayer`` built once per problem shape, parameters u_ref, G, h
  (and lb, ub), with cvxpylayers' default solver (diffcp with SCS at its default tolerances).
- :class:`QpthQP`: qpth's ``QPFunction`` (defaults: eps 1e-12, 20 iterations) with Q = I,
  p = −u_ref and no equality constraints; a box is passed as extra rows of G.
- :class:`ClarabelReference`: cvxpy + Clarabel at tight tolerances, row by row, for accuracy only.
  Its solution is polished on its own active set (the KKT system solved exactly) and verified; the
  reference gradients are those of that closed-form solution, computed by autograd.

qpth is not installed and never copied into this repository: :func:`load_qpth` downloads its
sdist with pip (or takes a given one), checks its SHA-256, extracts the pure-Python package into a
cache directory outside the repository and imports it from there.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cvxpy as cp
import numpy as np
import torch

QPTH_VERSION = "0.0.18"
QPTH_SDIST_SHA256 = "ade478c6bf5ab60b7f86435c8893812c2c5938083fe8bccd775bb23d613fa3c5"

# Clarabel tolerances tried in turn: at 1e-12 a few rows stop with "insufficient progress".
REFERENCE_TOLERANCES = (1e-12, 1e-11, 1e-10)


def default_cache_dir() -> Path:
    """``$OTSAFE_BENCH_CACHE``, else ``~/.cache/otsafe-bench`` (outside the repository)."""
    env = os.environ.get("OTSAFE_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "otsafe-bench"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_qpth(cache_dir: Path, sdist: Path | None = None) -> Path:
    """Return a directory that holds the package ``qpth`` (to be put on ``sys.path``).

    Uses ``<cache_dir>/qpth-0.0.18`` if it was extracted before; otherwise extracts ``sdist``, or
    ``<cache_dir>/qpth-0.0.18.tar.gz``, downloading that first with
    ``pip download --no-deps --no-binary :all: qpth==0.0.18``. The archive's SHA-256 is checked
    against the one published on PyPI.
    """
    root = cache_dir / f"qpth-{QPTH_VERSION}"
    if (root / "qpth" / "qp.py").is_file():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = sdist if sdist is not None else cache_dir / f"qpth-{QPTH_VERSION}.tar.gz"
    if not tarball.is_file():
        if sdist is not None:
            raise FileNotFoundError(f"qpth sdist not found: {sdist}")
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            f"qpth=={QPTH_VERSION}", "-d", str(cache_dir),
        ]  # fmt: skip
        print(f"fetching qpth: {' '.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    digest = _sha256(tarball)
    if digest != QPTH_SDIST_SHA256:
        raise RuntimeError(f"{tarball}: SHA-256 {digest} is not the PyPI one {QPTH_SDIST_SHA256}")
    prefix = f"qpth-{QPTH_VERSION}/"
    with tarfile.open(tarball) as tar:
        members = [
            mem
            for mem in tar.getmembers()
            if mem.name.startswith(prefix + "qpth/") or mem.name == prefix + "LICENSE"
        ]
        try:
            tar.extractall(cache_dir, members=members, filter="data")
        except TypeError:  # Python without extraction filters
            tar.extractall(cache_dir, members=members)  # members checked above
    return root


def load_qpth(cache_dir: Path, sdist: Path | None = None) -> ModuleType:
    """Import ``qpth.qp`` from the extracted sdist (see :func:`fetch_qpth`)."""
    root = fetch_qpth(cache_dir, sdist)
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("qpth.qp")
    finally:
        sys.path.remove(str(root))
    if not Path(module.__file__ or "").resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"imported qpth from {module.__file__}, not from {root}")
    return module


def _box_rows(
    G: torch.Tensor, h: torch.Tensor, lb: torch.Tensor | None, ub: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append the box as rows: [G; I; −I] u ≤ [h; ub; −lb]."""
    if lb is None or ub is None:
        return G, h
    B, _, n = G.shape
    eye = torch.eye(n, dtype=G.dtype, device=G.device).expand(B, n, n)
    return torch.cat([G, eye, -eye], dim=1), torch.cat([h, ub, -lb], dim=1)


class QpthQP:
    """qpth ``QPFunction`` with Q = I, p = −u_ref, no equality constraints, default settings."""

    name = "qpth"

    def __init__(self, qpth_qp: ModuleType, n: int, dtype: torch.dtype, device: torch.device):
        # verbose=-1 only silences qpth's "inaccurate solution" print; accuracy is measured.
        self.fn = qpth_qp.QPFunction(verbose=-1)
        self.Q = torch.eye(n, dtype=dtype, device=device)
        self.empty = torch.empty(0, dtype=dtype, device=device)

    def __call__(
        self,
        u_ref: torch.Tensor,
        G: torch.Tensor,
        h: torch.Tensor,
        lb: torch.Tensor | None,
        ub: torch.Tensor | None,
    ) -> torch.Tensor:
        Ga, ha = _box_rows(G, h, lb, ub)
        u: torch.Tensor = self.fn(self.Q, -u_ref, Ga, ha, self.empty, self.empty)
        return u


class CvxpyLayersQP:
    """A ``CvxpyLayer`` for one problem shape, with cvxpylayers' default solver.

    diffcp (the default) works on NumPy arrays on the CPU; on another device the inputs are moved
    to the CPU and the solution back, inside the timed call.
    """

    name = "cvxpylayers"

    def __init__(self, n: int, m: int, box: bool) -> None:
        from cvxpylayers.torch import CvxpyLayer

        u = cp.Variable(n)
        u_ref, G, h = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
        constraints = [G @ u <= h]
        params = [u_ref, G, h]
        if box:
            lb, ub = cp.Parameter(n), cp.Parameter(n)
            constraints += [u >= lb, u <= ub]
            params += [lb, ub]
        objective = cp.Minimize(0.5 * cp.sum_squares(u - u_ref))
        problem = cp.Problem(objective, constraints)
        assert problem.is_dpp()
        self.box = box
        self.layer = CvxpyLayer(problem, parameters=params, variables=[u])

    def __call__(
        self,
        u_ref: torch.Tensor,
        G: torch.Tensor,
        h: torch.Tensor,
        lb: torch.Tensor | None,
        ub: torch.Tensor | None,
    ) -> torch.Tensor:
        args = [u_ref, G, h]
        if self.box:
            assert lb is not None
            assert ub is not None
            args += [lb, ub]
        device = u_ref.device
        if device.type != "cpu":
            args = [a.cpu() for a in args]
        (u,) = self.layer(*args)
        out: torch.Tensor = u.to(device)
        return out


@dataclass
class Reference:
    """Reference solutions and gradients for a subsample of rows (float64, NumPy)."""

    u: np.ndarray  # (k, n): polished solution where verified, else Clarabel's
    clarabel_vs_polished: float  # max |u_clarabel − u_polished| over polished rows
    grad_u_ref: np.ndarray  # (k, n); NaN rows where the gradient is not defined/verified
    grad_G: np.ndarray  # (k, m, n)  # noqa: N815 (the matrix G)
    grad_h: np.ndarray  # (k, m)
    verified: np.ndarray  # (k,) bool: gradient defined and verified (see _polish)
    polished: np.ndarray  # (k,) bool: u polished and KKT-verified (else Clarabel's u)
    n_active: np.ndarray  # (k,) active constraints (including box rows)
    tolerance: np.ndarray  # (k,) Clarabel tolerance that succeeded
    seconds_per_row: float  # median wall time of one cvxpy + Clarabel solve


class ClarabelReference:
    """cvxpy + Clarabel at tight tolerance, one row at a time (parameters reused: DPP)."""

    def __init__(self, n: int, m: int, box: bool) -> None:
        self.n, self.m, self.box = n, m, box
        self.u = cp.Variable(n)
        self.u_ref, self.G, self.h = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
        self.cons = [self.G @ self.u <= self.h]
        if box:
            self.lb, self.ub = cp.Parameter(n), cp.Parameter(n)
            self.cons += [self.u <= self.ub, self.u >= self.lb]  # order of the box rows
        objective = cp.Minimize(0.5 * cp.sum_squares(self.u - self.u_ref))
        self.problem = cp.Problem(objective, self.cons)

    def _solve_row(self) -> float:
        for tol in REFERENCE_TOLERANCES:
            try:
                self.problem.solve(
                    solver=cp.CLARABEL,
                    tol_gap_abs=tol,
                    tol_gap_rel=tol,
                    tol_feas=tol,
                    max_iter=1000,
                )
            except cp.error.SolverError:
                continue
            if self.problem.status == cp.OPTIMAL:
                return tol
        raise RuntimeError(f"Clarabel failed on a reference row (status {self.problem.status})")

    def solve(
        self,
        u_ref: np.ndarray,
        G: np.ndarray,
        h: np.ndarray,
        lb: np.ndarray | None,
        ub: np.ndarray | None,
        cotangent: np.ndarray,
    ) -> Reference:
        k, n, m = u_ref.shape[0], self.n, self.m
        rows = m + (2 * n if self.box else 0)
        u_out = np.empty((k, n))
        g_ur, g_G, g_h = (
            np.full((k, n), np.nan),
            np.full((k, m, n), np.nan),
            np.full((k, m), np.nan),
        )
        verified = np.zeros(k, dtype=bool)
        polished = np.zeros(k, dtype=bool)
        n_active = np.zeros(k, dtype=int)
        tols = np.empty(k)
        times = []
        worst = 0.0
        for i in range(k):
            self.u_ref.value, self.G.value, self.h.value = u_ref[i], G[i], h[i]
            if self.box:
                assert lb is not None
                assert ub is not None
                self.lb.value, self.ub.value = lb[i], ub[i]
            t = time.perf_counter()
            tols[i] = self._solve_row()
            times.append(time.perf_counter() - t)
            u_c = np.asarray(self.u.value, dtype=np.float64)
            lam = np.concatenate([np.atleast_1d(c.dual_value) for c in self.cons])
            assert lam.shape == (rows,)
            u_out[i] = u_c
            result = _polish(u_ref[i], G[i], h[i], lb, ub, i, u_c, lam, cotangent[i])
            if result is None:
                n_active[i] = int(np.sum(lam > 1e-7))
                continue
            u_p, n_active[i], grads = result
            worst = max(worst, float(np.max(np.abs(u_p - u_c))))
            u_out[i], polished[i] = u_p, True
            if grads is not None:
                verified[i] = True
                g_ur[i], g_G[i], g_h[i] = grads
        return Reference(
            u=u_out,
            clarabel_vs_polished=worst,
            grad_u_ref=g_ur,
            grad_G=g_G,
            grad_h=g_h,
            verified=verified,
            polished=polished,
            n_active=n_active,
            tolerance=tols,
            seconds_per_row=float(np.median(times)),
        )


def _polish(
    u_ref: np.ndarray,
    G: np.ndarray,
    h: np.ndarray,
    lb: np.ndarray | None,
    ub: np.ndarray | None,
    i: int,
    u_clarabel: np.ndarray,
    lam: np.ndarray,
    cotangent: np.ndarray,
) -> tuple[np.ndarray, int, tuple[np.ndarray, np.ndarray, np.ndarray] | None] | None:
    """Solve the KKT system on Clarabel's active set; verify it; differentiate it.

    With A the rows of [G; I; −I] u ≤ [h; ub; −lb] that Clarabel's duals mark active (λ > 1e-7
    relative), and S ⊆ A a maximal independent subset (largest λ first): u = u_ref − S^T μ,
    μ = (S S^T)^{-1} (S u_ref − b_S). Returns None (Clarabel's point is kept) unless μ > 0, every
    row of A is tight and every row feasible to 1e-12, and u is within 1e-6 of Clarabel's. Returns
    (u, |A|, gradients), the gradients of ⟨u, cotangent⟩ by autograd through the closed form, or
    None for them where u is not differentiable or not unique in its data: dependent active rows
    (S ≠ A), or a row with slack ≤ 1e-7 outside A (no strict complementarity).
    """
    ur = torch.tensor(u_ref, requires_grad=True)
    Gt = torch.tensor(G, requires_grad=True)
    ht = torch.tensor(h, requires_grad=True)
    n = ur.shape[0]
    if lb is not None and ub is not None:
        eye = torch.eye(n, dtype=torch.float64)
        A = torch.cat([Gt, eye, -eye])
        b = torch.cat([ht, torch.tensor(ub[i]), -torch.tensor(lb[i])])
    else:
        A, b = Gt, ht
    act = np.flatnonzero(lam > 1e-7 * max(1.0, float(np.max(np.abs(lam)))))
    sel: list[int] = []
    for j in act[np.argsort(-lam[act])]:
        if int(torch.linalg.matrix_rank(A[[*sel, j]].detach())) == len(sel) + 1:
            sel.append(int(j))
    sel.sort()
    if sel:
        A_sel = A[sel]
        mu = torch.linalg.solve(A_sel @ A_sel.T, A_sel @ ur - b[sel])
        u = ur - A_sel.T @ mu
        if bool((mu <= 0).any()):
            return None
    else:
        u = ur.clone()
    slack = (b - A @ u).detach().numpy()
    u_np = u.detach().numpy()
    if (
        np.any(slack < -1e-12)
        or np.any(np.abs(slack[act]) > 1e-12)
        or np.max(np.abs(u_np - u_clarabel)) > 1e-6
    ):
        return None
    inactive = np.setdiff1d(np.arange(A.shape[0]), act)
    if len(sel) < act.size or np.any(slack[inactive] <= 1e-7):
        return u_np.copy(), int(act.size), None
    (u * torch.tensor(cotangent)).sum().backward()
    grads = tuple(
        np.zeros(x.shape) if x.grad is None else x.grad.numpy() for x in (ur, Gt, ht)
    )  # G, h get no gradient when no row is active
    return u_np.copy(), int(act.size), (grads[0], grads[1], grads[2])


def versions() -> dict[str, Any]:
    """Versions of the packages the benchmark depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {}
    for name in ("torch", "numpy", "cvxpy", "clarabel", "cvxpylayers", "diffcp", "scs"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
