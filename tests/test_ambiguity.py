"""Tests of the Wasserstein ambiguity set (exact projection) and the worst-case ascent."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from otsafe.errors import DistributionError
from otsafe.safety import solve_qp
from otsafe.safety.ambiguity import WassersteinBall, linear_worst_case_margin, worst_case

F64 = torch.float64


def cvxpy_projection(y: np.ndarray, nominal: np.ndarray, rho: float, order: int) -> np.ndarray:
    n, d = y.shape
    w = cp.Variable((n, d))
    disp = cp.norm(w - nominal, 2, axis=1)
    cost = cp.sum(disp) if order == 1 else cp.sum(cp.square(disp))
    prob = cp.Problem(cp.Minimize(cp.sum_squares(w - y)), [cost / n <= rho])
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return np.asarray(w.value)


@pytest.mark.parametrize("order", [1, 2])
def test_projection_matches_cvxpy(order: int) -> None:
    rng = np.random.default_rng(order)
    for _ in range(6):
        n, d = rng.integers(1, 8), rng.integers(1, 4)
        nominal = rng.normal(size=(n, d))
        y = nominal + rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0)
        rho = float(rng.uniform(0.05, 1.0))
        ball = WassersteinBall(torch.tensor(nominal), rho, order=order)  # type: ignore[arg-type]
        got = ball.project(torch.tensor(y)).squeeze(0).numpy()
        # Clarabel is accurate to ~1e-6 here; exactness is checked by the optimality property test
        assert np.abs(got - cvxpy_projection(y, nominal, rho, order)).max() < 2e-5


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    d=st.integers(1, 3),
    rho=st.floats(0.0, 2.0),
    order=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_projection(n: int, d: int, rho: float, order: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    nominal = torch.tensor(rng.normal(size=(3, n, d)))
    ball = WassersteinBall(nominal, rho, order=order)  # type: ignore[arg-type]
    y = nominal + torch.tensor(rng.normal(size=(3, n, d)) * 2.0)
    p = ball.project(y)
    assert bool(ball.contains(p, rtol=1e-9).all())  # feasible
    torch.testing.assert_close(ball.project(p), p, rtol=0, atol=1e-12)  # idempotent
    # optimality (variational inequality): <y - p, z - p> <= 0 for points z of the ball
    for _ in range(5):
        z = ball.project(nominal + torch.tensor(rng.normal(size=(3, n, d))))
        inner = ((y - p) * (z - p)).sum(dim=(1, 2))
        assert bool((inner <= 1e-9).all())
    # non-expansive
    y2 = y + torch.tensor(rng.normal(size=(3, n, d)) * 0.3)
    lhs = (ball.project(y2) - p).flatten(1).norm(dim=1)
    assert bool((lhs <= (y2 - y).flatten(1).norm(dim=1) + 1e-12).all())


def test_points_inside_are_unchanged_and_distance() -> None:
    nominal = torch.zeros(4, 2, dtype=F64)
    ball = WassersteinBall(nominal, 1.0)
    inside = torch.tensor([[[0.5, 0.0], [0.0, 0.5], [0.0, 0.0], [1.0, 0.0]]], dtype=F64)
    torch.testing.assert_close(ball.project(inside), inside)
    assert float(ball.distance(inside)[0]) == pytest.approx(0.5)


@pytest.mark.parametrize("order", [1, 2])
def test_ascent_reaches_the_closed_form_for_linear_margins(order: int) -> None:
    torch.manual_seed(0)
    batch, n, d = 8, 16, 2
    nominal = torch.randn(batch, n, d, dtype=F64) * 0.3
    c = torch.randn(batch, d, dtype=F64)
    a = torch.randn(batch, dtype=F64)
    rho = torch.rand(batch, dtype=F64) + 0.1
    ball = WassersteinBall(nominal, rho, order=order)  # type: ignore[arg-type]

    def margin(atoms: torch.Tensor) -> torch.Tensor:  # (B, N)
        return a[:, None] + (atoms * c[:, None, :]).sum(-1)

    worst = worst_case(lambda w: -margin(w), ball, steps=5, step_size=0.5)
    got = margin(worst).mean(-1)
    want = linear_worst_case_margin(margin(nominal).mean(-1), c, rho, order=order)  # type: ignore[arg-type]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert bool(ball.contains(worst).all())


def test_ascent_through_the_qp_increases_the_loss_and_has_exact_gradients() -> None:
    # u_r(w) = argmin ||u - u_ref||^2 s.t. G u <= h0 - mean_i(c . w_i): a CBF-like row in w.
    torch.manual_seed(1)
    batch, n, d = 4, 5, 2
    G = torch.tensor([[1.0, 0.5]], dtype=F64).expand(batch, 1, 2)
    c = torch.tensor([0.7, -0.4], dtype=F64)
    u_ref = torch.tensor([[2.0, 1.0]], dtype=F64).expand(batch, 2)

    def u_r(atoms: torch.Tensor) -> torch.Tensor:
        h = 1.0 - (atoms @ c).mean(-1, keepdim=True)
        out = solve_qp(u_ref, G, h)
        assert isinstance(out, torch.Tensor)
        return out

    def loss(atoms: torch.Tensor) -> torch.Tensor:  # a critic-like loss of the rectified action
        u = u_r(atoms)
        return -((u - torch.tensor([1.5, 1.5], dtype=F64)) ** 2).sum(-1)

    nominal = torch.randn(batch, n, d, dtype=F64) * 0.1
    # gradient through the QP against finite differences
    w = nominal.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x), (w,), eps=1e-6, atol=1e-7)
    ball = WassersteinBall(nominal, 0.5)
    worst = worst_case(loss, ball, steps=20, step_size=0.2)
    assert bool((loss(worst) >= loss(nominal) - 1e-12).all())
    assert bool((loss(worst) > loss(nominal) + 1e-6).any())


def test_warm_start_and_zero_radius() -> None:
    nominal = torch.zeros(2, 3, 1, dtype=F64)
    ball = WassersteinBall(nominal, 0.0)
    worst = worst_case(lambda w: w.sum(-1), ball, steps=3)
    torch.testing.assert_close(worst, nominal)
    ball = WassersteinBall(nominal, 1.0)
    far = torch.full((2, 3, 1), 10.0, dtype=F64)
    start = worst_case(lambda w: w.sum(-1), ball, steps=0, init=far)
    assert bool(ball.contains(start).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"atoms": torch.zeros(0, 2, dtype=F64)}, "atoms must have shape"),
        ({"atoms": [[0.0]]}, "atoms must be a torch tensor"),
        ({"atoms": torch.tensor([[float("nan")]], dtype=F64)}, "finite"),
        ({"radius": -1.0}, "radius"),
        ({"radius": float("inf")}, "radius"),
        ({"order": 3}, "order"),
    ],
)
def test_bad_input(kwargs: dict[str, object], match: str) -> None:
    args = {"atoms": torch.zeros(3, 2, dtype=F64), "radius": 0.5, "order": 1, **kwargs}
    with pytest.raises(DistributionError, match=match):
        WassersteinBall(**args)  # type: ignore[arg-type]


def test_bad_ascent_arguments() -> None:
    ball = WassersteinBall(torch.zeros(3, 2, dtype=F64), 0.5)
    with pytest.raises(DistributionError, match="steps"):
        worst_case(lambda w: w.sum(-1).sum(-1), ball, steps=-1)
    with pytest.raises(DistributionError, match="step_size"):
        worst_case(lambda w: w.sum(-1).sum(-1), ball, step_size=0.0)
    with pytest.raises(DistributionError, match="loss_fn must return"):
        worst_case(lambda w: w, ball, steps=1)
    with pytest.raises(DistributionError, match="atoms have shape"):
        ball.project(torch.zeros(1, 4, 2, dtype=F64))


def test_worst_case_grad_fn_replaces_autograd_and_checks_its_shape() -> None:
    ball = WassersteinBall(torch.zeros(3, 4, 2, dtype=torch.float64), 0.5)
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)

    def never_called(w: torch.Tensor) -> torch.Tensor:
        raise AssertionError("loss_fn must not run when grad_fn is given")

    # loss = c . w per atom: its gradient is c (over N for the row mean)
    worst = worst_case(never_called, ball, steps=2, grad_fn=lambda w: c.expand_as(w) / 4)
    want = worst_case(lambda w: w @ c, ball, steps=2)
    torch.testing.assert_close(worst, want)
    with pytest.raises(DistributionError, match="grad_fn"):
        worst_case(never_called, ball, steps=1, grad_fn=lambda w: w[:, 0])
