"""Tests of the batched QP layer against cvxpy/Clarabel, KKT certificates, gradcheck, bad input."""

from __future__ import annotations

from typing import Any

import cvxpy as cp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

from otsafe.safety import QPError, QPStatus, solve_qp
from otsafe.safety.qp import ELASTIC_PENALTY

F64 = torch.float64
METHODS = ["enumerate", "active-set"]


# ------------------------------------------------------------------------------ references
def clarabel(
    u_ref: np.ndarray,
    G: np.ndarray,
    h: np.ndarray,
    lb: np.ndarray | None = None,
    ub: np.ndarray | None = None,
    slack: float | None = None,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Row-by-row reference solution with cvxpy + Clarabel at tight tolerances."""
    out = []
    for k in range(u_ref.shape[0]):
        n = u_ref.shape[1]
        u = cp.Variable(n)
        diff = u - u_ref[k]
        if weight is None:
            obj = 0.5 * cp.sum_squares(diff)
        elif weight.ndim == 1:
            obj = 0.5 * cp.sum(cp.multiply(weight, cp.square(diff)))
        else:
            obj = 0.5 * cp.quad_form(diff, cp.psd_wrap(weight))
        cons = []
        if slack is not None:
            s = cp.Variable(nonneg=True)
            obj = obj + 0.5 * slack * cp.square(s)
            if G.shape[1]:
                cons.append(G[k] @ u <= h[k] + s)
        elif G.shape[1]:
            cons.append(G[k] @ u <= h[k])
        if lb is not None:
            cons.append(u >= lb[k])
        if ub is not None:
            cons.append(u <= ub[k])
        prob = cp.Problem(cp.Minimize(obj), cons)
        prob.solve(
            solver="CLARABEL",
            tol_gap_abs=1e-12,
            tol_gap_rel=1e-12,
            tol_feas=1e-12,
            tol_ktratio=1e-10,
            max_iter=1000,
        )
        assert prob.status == cp.OPTIMAL, prob.status
        out.append(u.value)
    return np.array(out)


def kkt_residual(u: np.ndarray, u_ref: np.ndarray, A: np.ndarray, b: np.ndarray) -> float:
    """Largest KKT violation of u for min 1/2||u - u_ref||^2 s.t. A u <= b (one row)."""
    viol = A @ u - b
    tight = np.abs(viol) <= 1e-9 * (1 + np.abs(b))
    grad = u - u_ref
    if tight.any():
        _, res = nnls(A[tight].T, -grad)  # grad + A_t' lam = 0 with lam >= 0
    else:
        res = float(np.linalg.norm(grad))
    return max(float(viol.max(initial=0.0)), float(res))


def random_problem(
    rng: np.random.Generator, batch: int, n: int, m: int, bounds: bool, scale: float = 2.0
) -> tuple[torch.Tensor, ...]:
    """Feasible random problems whose solutions have active constraints."""
    u_ref = rng.normal(size=(batch, n)) * scale
    G = rng.normal(size=(batch, m, n))
    G /= np.linalg.norm(G, axis=-1, keepdims=True)
    x0 = rng.normal(size=(batch, n)) * 0.3
    h = np.einsum("bmn,bn->bm", G, x0) + rng.uniform(0.0, 0.5, size=(batch, m))
    lb = np.full((batch, n), -1.5) if bounds else None
    ub = np.full((batch, n), 1.5) if bounds else None
    t = lambda x: None if x is None else torch.tensor(x, dtype=F64)  # noqa: E731
    return t(u_ref), t(G), t(h), t(lb), t(ub)


def as_np(x: torch.Tensor | None) -> np.ndarray | None:
    return None if x is None else x.detach().numpy()


# ------------------------------------------------------------------------------ accuracy
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("n", "m", "bounds", "slack"),
    [
        (1, 3, False, None),
        (2, 4, False, None),
        (2, 4, True, None),
        (2, 4, True, 10.0),
        (2, 16, True, None),
        (3, 6, True, None),
        (2, 0, True, None),
    ],
)
def test_matches_clarabel_small(
    method: str, n: int, m: int, bounds: bool, slack: float | None
) -> None:
    if method == "enumerate" and n + (slack is not None) > 3:
        pytest.skip("enumeration handles at most 3 variables")
    rng = np.random.default_rng(n * 100 + m)
    u_ref, G, h, lb, ub = random_problem(rng, 40, n, m, bounds)
    u, info = solve_qp(
        u_ref,
        G,
        h,
        lb,
        ub,
        slack_penalty=slack,
        method=method,  # type: ignore[arg-type]
        return_info=True,
    )
    ref = clarabel(as_np(u_ref), as_np(G), as_np(h), as_np(lb), as_np(ub), slack)
    assert np.abs(u.numpy() - ref).max() < 1e-9
    assert bool((info.status == QPStatus.OPTIMAL).all())


@pytest.mark.parametrize(("n", "m"), [(5, 12), (8, 32)])
@pytest.mark.parametrize("slack", [None, 5.0])
def test_matches_clarabel_large_active_set(n: int, m: int, slack: float | None) -> None:
    rng = np.random.default_rng(n + m)
    u_ref, G, h, lb, ub = random_problem(rng, 24, n, m, True)
    u = solve_qp(u_ref, G, h, lb, ub, slack_penalty=slack)
    assert isinstance(u, torch.Tensor)
    ref = clarabel(as_np(u_ref), as_np(G), as_np(h), as_np(lb), as_np(ub), slack)
    assert np.abs(u.numpy() - ref).max() < 1e-9


@pytest.mark.parametrize("kind", ["diag", "matrix"])
def test_weighted_norm_matches_clarabel(kind: str) -> None:
    rng = np.random.default_rng(7)
    u_ref, G, h, lb, ub = random_problem(rng, 20, 3, 5, True)
    if kind == "diag":
        w = rng.uniform(0.2, 3.0, size=3)
    else:
        r = rng.normal(size=(3, 3))
        w = r @ r.T + 0.5 * np.eye(3)
    u = solve_qp(u_ref, G, h, lb, ub, weight=torch.tensor(w, dtype=F64))
    assert isinstance(u, torch.Tensor)
    ref = clarabel(as_np(u_ref), as_np(G), as_np(h), as_np(lb), as_np(ub), weight=w)
    assert np.abs(u.numpy() - ref).max() < 1e-9


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 4),
    m=st.integers(0, 10),
    bounds=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_kkt_certificate_and_methods_agree(
    n: int, m: int, bounds: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    u_ref, G, h, lb, ub = random_problem(rng, 16, n, m, bounds)
    u = solve_qp(u_ref, G, h, lb, ub, method="active-set")
    assert isinstance(u, torch.Tensor)
    if n <= 3:
        u_enum = solve_qp(u_ref, G, h, lb, ub, method="enumerate")
        assert isinstance(u_enum, torch.Tensor)
        assert torch.allclose(u, u_enum, atol=1e-10, rtol=0)
    A = [as_np(G)]
    b = [as_np(h)]
    if bounds:
        A += [np.broadcast_to(-np.eye(n), (16, n, n)), np.broadcast_to(np.eye(n), (16, n, n))]
        b += [-as_np(lb), as_np(ub)]  # type: ignore[operator]
    A_all, b_all = np.concatenate(A, 1), np.concatenate(b, 1)  # type: ignore[arg-type]
    for k in range(16):
        assert kkt_residual(u[k].numpy(), as_np(u_ref)[k], A_all[k], b_all[k]) < 1e-9


# ------------------------------------------------------------------------------ degenerate
def test_degenerate_duplicated_and_parallel_rows() -> None:
    u_ref = torch.tensor([[2.0, 2.0], [2.0, 2.0], [0.1, 0.1]], dtype=F64)
    row = [1.0, 0.0]
    G = torch.tensor(
        [
            [row, row, [0.0, 1.0], [0.0, 1.0]],  # duplicated rows
            [row, [2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]],  # parallel rows, scaled
            [row, row, [0.0, 1.0], [1.0, 1.0]],  # already feasible
        ],
        dtype=F64,
    )
    h = torch.tensor([[1.0, 1.0, 0.5, 0.5], [1.0, 2.0, 0.5, 5.0], [1.0, 1.0, 1.0, 1.0]], dtype=F64)
    for method in METHODS:
        u = solve_qp(u_ref, G, h, method=method)  # type: ignore[arg-type]
        assert isinstance(u, torch.Tensor)
        expected = torch.tensor([[1.0, 0.5], [1.0, 0.5], [0.1, 0.1]], dtype=F64)
        assert torch.allclose(u, expected, atol=1e-12)


def test_degenerate_weakly_active_and_three_rows_through_a_vertex() -> None:
    # Weakly active: the constraint passes through u_ref (multiplier zero).
    u_ref = torch.tensor([[1.0, 1.0], [2.0, 2.0]], dtype=F64)
    G = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=F64
    )
    h = torch.tensor([[1.0, 3.0, 5.0], [1.0, 1.0, 2.0]], dtype=F64)  # row 2: 3 rows meet at (1,1)
    for method in METHODS:
        u, info = solve_qp(u_ref, G, h, method=method, return_info=True)  # type: ignore[arg-type]
        assert torch.allclose(u, torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=F64), atol=1e-12)
        assert bool((info.status == QPStatus.OPTIMAL).all())


def test_zero_row_is_harmless_when_satisfied() -> None:
    G = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]], dtype=F64)
    h = torch.tensor([[0.0, 0.5]], dtype=F64)
    for method in METHODS:
        u = solve_qp(torch.tensor([[1.0, 1.0]], dtype=F64), G, h, method=method)  # type: ignore[arg-type]
        assert torch.allclose(u, torch.tensor([[0.5, 1.0]], dtype=F64))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("slack", [None, 3.0])
def test_gradcheck(method: str, slack: float | None) -> None:
    rng = np.random.default_rng(11)
    u_ref, G, h, lb, ub = random_problem(rng, 6, 2, 3, True)
    lb, ub = lb - 0.3, ub + 0.2  # type: ignore[operator]
    if method == "enumerate" and slack is not None:
        pass  # n + slack = 3 still enumerates
    inputs = tuple(x.clone().requires_grad_() for x in (u_ref, G, h, lb, ub))

    def f(
        u_ref: torch.Tensor, G: torch.Tensor, h: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor
    ) -> torch.Tensor:
        out = solve_qp(u_ref, G, h, lb, ub, slack_penalty=slack, method=method)  # type: ignore[arg-type]
        assert isinstance(out, torch.Tensor)
        return out

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_gradcheck_weights() -> None:
    rng = np.random.default_rng(12)
    u_ref, G, h, _, _ = random_problem(rng, 4, 3, 4, False)
    w_diag = torch.tensor([0.5, 1.5, 2.0], dtype=F64, requires_grad=True)
    r = torch.tensor(rng.normal(size=(3, 3)))
    w_full = (r @ r.T + torch.eye(3, dtype=F64)).requires_grad_()

    def f_diag(w: torch.Tensor) -> torch.Tensor:
        return solve_qp(u_ref, G, h, weight=w)  # type: ignore[return-value]

    def f_full(w: torch.Tensor) -> torch.Tensor:
        return solve_qp(u_ref, G, h, weight=0.5 * (w + w.T))  # type: ignore[return-value]

    assert torch.autograd.gradcheck(f_diag, (w_diag,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(f_full, (w_full,), eps=1e-6, atol=1e-7)


def test_gradients_agree_with_cvxpylayers() -> None:
    rng = np.random.default_rng(3)
    u_ref, G, h, _, _ = random_problem(rng, 8, 2, 4, False)
    grads = []
    for backend in ("native", "cvxpylayers"):
        inputs = [x.clone().requires_grad_() for x in (u_ref, G, h)]
        u = solve_qp(*inputs, backend=backend)  # type: ignore[arg-type]
        assert isinstance(u, torch.Tensor)
        (u * torch.linspace(-1, 1, u.numel(), dtype=F64).reshape(u.shape)).sum().backward()
        grads.append([x.grad for x in inputs])
        if backend == "native":
            u_native = u.detach()
        else:
            assert torch.allclose(u.detach(), u_native, atol=1e-8)
    for g_native, g_layer in zip(grads[0], grads[1], strict=True):
        assert g_native is not None
        assert g_layer is not None
        assert torch.allclose(g_native, g_layer, atol=1e-6)


# ------------------------------------------------------------------------------ dtype, sizes
def test_float32_close_to_float64() -> None:
    rng = np.random.default_rng(5)
    u_ref, G, h, lb, ub = random_problem(rng, 64, 2, 4, True)
    u64 = solve_qp(u_ref, G, h, lb, ub)
    u32 = solve_qp(u_ref.float(), G.float(), h.float(), lb.float(), ub.float())  # type: ignore[union-attr]
    assert isinstance(u32, torch.Tensor)
    assert isinstance(u64, torch.Tensor)
    assert u32.dtype == torch.float32
    assert (u32.double() - u64).abs().max() < 1e-4


def test_large_batch_satisfies_kkt() -> None:
    rng = np.random.default_rng(6)
    u_ref, G, h, lb, ub = random_problem(rng, 100_000, 2, 4, True)
    u, info = solve_qp(u_ref, G, h, lb, ub, return_info=True)
    assert bool((info.status == QPStatus.OPTIMAL).all())
    viol = (G @ u.unsqueeze(-1)).squeeze(-1) - h
    assert float(viol.max()) < 1e-10
    assert bool(((u >= lb - 1e-12) & (u <= ub + 1e-12)).all())  # type: ignore[operator]
    sample = np.arange(0, 100_000, 5000)
    ref = clarabel(
        as_np(u_ref)[sample],
        as_np(G)[sample],
        as_np(h)[sample],
        as_np(lb)[sample],
        as_np(ub)[sample],
    )  # type: ignore[index]
    assert np.abs(u.numpy()[sample] - ref).max() < 1e-9


def test_one_dimensional_input_and_broadcast_constraints() -> None:
    u = solve_qp(
        torch.tensor([2.0, 0.0], dtype=F64),
        torch.tensor([[1.0, 0.0]], dtype=F64),
        torch.tensor([1.0], dtype=F64),
    )
    assert isinstance(u, torch.Tensor)
    assert u.shape == (2,)
    assert u.tolist() == [1.0, 0.0]
    batch = solve_qp(
        torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=F64),
        torch.tensor([[1.0, 0.0]], dtype=F64),
        torch.tensor([1.0], dtype=F64),
    )
    assert isinstance(batch, torch.Tensor)
    assert batch.tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_info_reports_active_rows_bounds_and_slack() -> None:
    u_ref = torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=F64)
    G = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    h = torch.tensor([1.0, 10.0], dtype=F64)
    u, info = solve_qp(
        u_ref, G, h, lb=-1.0, ub=torch.tensor([5.0, -0.5], dtype=F64), return_info=True
    )
    assert u.tolist() == [[1.0, -0.5], [0.0, -0.5]]
    assert info.active.tolist() == [[True, False], [False, False]]
    assert info.active_ub.tolist() == [[False, True], [False, True]]
    assert info.active_lb.tolist() == [[False, False], [False, False]]
    _, info_s = solve_qp(u_ref, G, h, slack_penalty=1.0, return_info=True)
    assert float(info_s.slack[0]) == pytest.approx(1.0)  # min (u-3)^2/2 + s^2/2, u <= 1 + s
    assert float(info_s.slack[1]) == 0.0


# ------------------------------------------------------------------------------ infeasible
@pytest.mark.parametrize("method", METHODS)
def test_infeasible_rows_are_reported_and_finite(method: str) -> None:
    # u <= -1 and -u <= -1 (u >= 1): infeasible; second row is feasible.
    G = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]], dtype=F64)
    h = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=F64)
    u_ref = torch.tensor([[0.5, 0.3], [2.0, 0.0]], dtype=F64, requires_grad=True)
    Gr, hr = G.clone().requires_grad_(), h.clone().requires_grad_()
    u, info = solve_qp(u_ref, Gr, hr, method=method, return_info=True)  # type: ignore[arg-type]
    assert info.status.tolist() == [QPStatus.INFEASIBLE, QPStatus.OPTIMAL]
    assert bool(torch.isfinite(u).all())
    # the elastic solution: u1 <= -1 + s, u1 >= 1 - s  => s = 1, u1 = 0
    assert torch.allclose(u[0].detach(), torch.tensor([0.0, 0.3], dtype=F64), atol=1e-5)
    assert float(info.slack[0]) == pytest.approx(1.0, abs=1e-5)
    assert u[1].tolist() == [1.0, 0.0]
    u.sum().backward()
    for x in (u_ref, Gr, hr):
        assert x.grad is not None
        assert bool(torch.isfinite(x.grad).all())


def test_infeasible_with_bounds_matches_elastic_reference() -> None:
    rng = np.random.default_rng(9)
    u_ref = torch.tensor(rng.normal(size=(5, 2)), dtype=F64)
    G = torch.tensor(np.tile([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], (5, 1, 1)))
    h = torch.tensor(np.tile([-1.0, -1.0, 0.2], (5, 1)))
    u, info = solve_qp(u_ref, G, h, lb=-2.0, ub=2.0, return_info=True)
    assert bool((info.status == QPStatus.INFEASIBLE).all())
    ref = clarabel(
        u_ref.numpy(),
        G.numpy(),
        h.numpy(),
        np.full((5, 2), -2.0),
        np.full((5, 2), 2.0),
        slack=ELASTIC_PENALTY,
    )
    assert np.abs(u.numpy() - ref).max() < 1e-7


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), slack=st.sampled_from([None, 1.0, 100.0]))
def test_property_never_nan(seed: int, slack: float | None) -> None:
    rng = np.random.default_rng(seed)
    G = torch.tensor(rng.normal(size=(8, 6, 2)))
    h = torch.tensor(rng.normal(size=(8, 6)))  # often infeasible
    u_ref = torch.tensor(rng.normal(size=(8, 2)) * 3, requires_grad=True)
    u, info = solve_qp(u_ref, G, h, lb=-3.0, ub=3.0, slack_penalty=slack, return_info=True)
    assert bool(torch.isfinite(u).all())
    if slack is not None:
        assert bool((info.status == QPStatus.OPTIMAL).all())
    u.sum().backward()
    assert u_ref.grad is not None
    assert bool(torch.isfinite(u_ref.grad).all())


# ------------------------------------------------------------------------------ bad input
def _ok() -> dict[str, object]:
    return {
        "u_ref": torch.zeros(3, 2, dtype=F64),
        "G": torch.ones(3, 4, 2, dtype=F64),
        "h": torch.ones(3, 4, dtype=F64),
    }


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"u_ref": [[0.0, 0.0]]}, "u_ref must be a torch tensor"),
        ({"u_ref": torch.zeros(3, 2, dtype=torch.int64)}, "u_ref must be float32 or float64"),
        ({"u_ref": torch.zeros(3, 2, 1, dtype=F64)}, "u_ref must have shape"),
        ({"u_ref": torch.tensor([[float("nan"), 0.0]] * 3, dtype=F64)}, "u_ref has NaN"),
        ({"G": torch.ones(3, 4, 3, dtype=F64)}, "G must have shape"),
        ({"G": torch.ones(2, 4, 2, dtype=F64)}, "G must have shape"),
        ({"G": torch.ones(3, 4, 2, dtype=torch.float32)}, "G has dtype"),
        ({"G": torch.full((3, 4, 2), float("inf"), dtype=F64)}, "G has NaN or infinite"),
        ({"h": torch.ones(3, 5, dtype=F64)}, "h must have shape"),
        ({"h": torch.tensor([[float("nan")] * 4] * 3, dtype=F64)}, "h has NaN"),
        ({"lb": torch.ones(3, 3, dtype=F64)}, "lb must have shape"),
        ({"lb": 1.0, "ub": 0.0}, "lb > ub"),
        ({"lb": float("inf")}, "lb has \\+inf"),
        ({"ub": float("nan")}, "ub has NaN"),
        ({"lb": torch.tensor([0.0, float("nan")], dtype=F64)}, "lb has NaN"),
        ({"ub": torch.tensor([float("-inf"), 1.0], dtype=F64)}, "ub has -inf"),
        ({"lb": 0.0, "ub": torch.tensor([1.0, -1.0], dtype=F64)}, "lb > ub"),
        ({"weight": torch.tensor([1.0, float("nan")], dtype=F64)}, "weight has NaN"),
        (
            {"u_ref": torch.tensor([[0.0, float("inf")]] * 3, dtype=F64), "lb": float("nan")},
            "u_ref has NaN",
        ),  # the first failing check is the one reported
        ({"slack_penalty": -1.0}, "slack_penalty"),
        ({"slack_penalty": 0.0}, "slack_penalty"),
        ({"weight": torch.tensor([1.0, -1.0], dtype=F64)}, "diagonal weight must be positive"),
        ({"weight": torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=F64)}, "symmetric"),
        ({"weight": torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64)}, "positive definite"),
        ({"weight": torch.ones(5, dtype=F64)}, "weight must have shape"),
        ({"backend": "qpth"}, "backend"),
        ({"method": "simplex"}, "method"),
        ({"lb": "low"}, "lb must be a tensor"),
    ],
)
def test_bad_input_raises_named_error(change: dict[str, object], match: str) -> None:
    kwargs = {**_ok(), **change}
    with pytest.raises(QPError, match=match):
        solve_qp(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", METHODS)
def test_infinite_bounds_are_absent_rows(method: str) -> None:
    """Infinite entries of lb/ub drop out of the problem: the same solution as without them."""
    rng = np.random.default_rng(5)
    u_ref, G, h, lb, ub = random_problem(rng, 64, 2, 3, True)
    assert lb is not None
    assert ub is not None
    lb, ub = lb.clone(), ub.clone()
    lb[::2, 0] = -np.inf
    ub[1::3, 1] = np.inf
    u, info = solve_qp(u_ref, G, h, lb, ub, method=method, return_info=True)
    big = 1e6  # a bound this far away is never active here
    ref = clarabel(
        as_np(u_ref), as_np(G), as_np(h), as_np(lb.clamp(min=-big)), as_np(ub.clamp(max=big))
    )
    assert np.abs(u.detach().numpy() - ref).max() < 1e-8
    assert not bool(info.active_lb[::2, 0].any())
    assert not bool(info.active_ub[1::3, 1].any())


@pytest.mark.parametrize("bounds", [False, True])
def test_gpu_path_reads_back_from_the_device_twice(
    bounds: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forward and backward pass synchronises with the device twice: the value checks (read
    back together) and the infeasibility flag. Here on the CPU, with the enumeration as on a GPU
    (no early stop); every read of a tensor into Python is counted."""
    from otsafe.safety import active_set as aset

    assert aset.stops_early(torch.device("cpu"))
    assert not aset.stops_early(torch.device("cuda"))  # constructing the device needs no GPU
    monkeypatch.setattr(aset, "stops_early", lambda device: False)
    reads: list[str] = []
    for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero"):
        original = getattr(torch.Tensor, name)

        def counted(
            self: torch.Tensor, *args: object, _f: Any = original, _n: str = name, **kw: object
        ) -> object:
            reads.append(_n)
            return _f(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    rng = np.random.default_rng(3)
    u_ref, G, h, lb, ub = random_problem(rng, 512, 2, 3, bounds)
    u_ref.requires_grad_(True)
    u = solve_qp(u_ref, G, h, lb, ub)
    assert isinstance(u, torch.Tensor)
    u.sum().backward()
    assert reads == ["tolist", "__bool__"]


def test_enumerate_refuses_too_many_variables() -> None:
    with pytest.raises(QPError, match="at most 3 variables"):
        solve_qp(
            torch.zeros(2, 4, dtype=F64),
            torch.ones(2, 1, 4, dtype=F64),
            torch.ones(2, 1, dtype=F64),
            method="enumerate",
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:  # pragma: no cover - runs only with a GPU
    rng = np.random.default_rng(1)
    u_ref, G, h, lb, ub = random_problem(rng, 512, 2, 4, True)
    u_cpu = solve_qp(u_ref, G, h, lb, ub)
    u_gpu = solve_qp(*(x.cuda() for x in (u_ref, G, h, lb, ub)))  # type: ignore[union-attr]
    assert isinstance(u_gpu, torch.Tensor)
    assert isinstance(u_cpu, torch.Tensor)
    assert torch.allclose(u_gpu.cpu(), u_cpu, atol=1e-12)


def test_beyond_the_fast_range_same_method_stays_exact() -> None:
    # n = 12, m = 48 (+ bounds): the same active-set method, just more iterations.
    rng = np.random.default_rng(21)
    u_ref, G, h, lb, ub = random_problem(rng, 6, 12, 48, True)
    u, info = solve_qp(u_ref, G, h, lb, ub, return_info=True)
    assert info.method == "active-set"
    assert bool((info.status == QPStatus.OPTIMAL).all())
    ref = clarabel(as_np(u_ref), as_np(G), as_np(h), as_np(lb), as_np(ub))
    assert np.abs(u.numpy() - ref).max() < 1e-8


@pytest.mark.parametrize("stop_early", [True, False])
@pytest.mark.parametrize("chunk_elements", [1 << 23, 700])
@pytest.mark.parametrize("n_barriers", [1, 3, 4])
def test_enumeration_picks_the_first_kkt_candidate_of_all(
    n_barriers: int, chunk_elements: int, stop_early: bool
) -> None:
    """The size-by-size enumeration (early stop, open rows alone, chunks; or, as on a GPU, every
    size on every row) returns the first KKT candidate of the full list, every size evaluated on
    every row: here with a box, so that the costly sizes do run on the open rows alone, and with
    duplicated rows (degenerate)."""
    from otsafe.safety import active_set as aset
    from otsafe.safety.qp import _build

    gen = torch.Generator().manual_seed(n_barriers)
    batch, n = 300, 2
    u = torch.rand(batch, n, generator=gen, dtype=torch.float64) * 3 - 1.5
    G = torch.randn(batch, n_barriers, n, generator=gen, dtype=torch.float64)
    if n_barriers > 1:
        G[::3, 1] = G[::3, 0]  # duplicated rows in a third of the problems
    h = torch.rand(batch, n_barriers, generator=gen, dtype=torch.float64) * 2 - 0.3
    box = torch.ones(batch, n, dtype=torch.float64)
    prob, _ = _build(u, G, h, -box, box, None, None)
    g = aset.gram(prob)
    got = aset.enumerate_active_set(g, n, chunk_elements=chunk_elements, stop_early=stop_early)
    n_rows = prob.a.shape[1]
    shared = aset._Shared.of(g)
    ok = torch.cat([aset._kkt_candidates(g, k, n, shared) for k in range(n + 1)], 1)
    table = aset._candidate_table(n_rows, n, range(n + 1), g.v.device)
    want = torch.where(
        ok.any(-1, keepdim=True), table[ok.to(torch.int8).argmax(-1)], aset.INFEASIBLE_SLOT
    )
    assert torch.equal(got, want)
    assert bool((got[:, 0] == aset.INFEASIBLE_SLOT).any()) == bool((~ok.any(-1)).any())
