"""Tests of otsafe.safety.cbf: barriers, Lie derivatives and CBF/HOCBF rows of the safety QP."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from otsafe.errors import ConfigError, DistributionError, OtsafeError
from otsafe.safety import (
    Barrier,
    BoxObstacleBarrier,
    CircleBarrier,
    ControlAffineModel,
    DoubleIntegrator,
    FunctionBarrier,
    HalfSpaceBarrier,
    ModelJacobians,
    SingleIntegrator,
    SphereBarrier,
    box_barriers,
    cbf_margin,
    cbf_rows,
    check_model_jacobians,
)
from otsafe.safety._autograd import autograd_grad, autograd_hessian

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_dsrl import AutogradJacobians  # the benchmark's "by autograd" row, tested here

F64 = torch.float64


class NonlinearSecondOrder:
    """A nonlinear control-affine model with state-dependent f, g and D (exercises J_f, J_D).

    x = (p, v) in R^2 x R^2; p' = v (1 + 0.1 sin p0) + 0.2 diag(cos p) w  (no control: a
    position barrier has relative degree 2, and the uncertainty enters h' itself);
    v' = -0.5 v + 0.3 sin p + B(x) u + E(x) w.
    """

    state_dim = 4
    control_dim = 2
    disturbance_dim = 2

    def f(self, x: Tensor) -> Tensor:
        p, v = x[:, :2], x[:, 2:]
        pdot = v * (1 + 0.1 * torch.sin(p[:, :1]))
        vdot = -0.5 * v + 0.3 * torch.sin(p)
        return torch.cat([pdot, vdot], dim=1)

    def g(self, x: Tensor) -> Tensor:
        p, v = x[:, :2], x[:, 2:]
        b = torch.stack(
            [
                torch.stack([1 + 0.1 * v[:, 0] ** 2, 0.2 * torch.sin(p[:, 1])], -1),
                torch.stack([0.1 * torch.cos(p[:, 0]), 1 + 0.05 * v[:, 1] ** 2], -1),
            ],
            dim=1,
        )
        return torch.cat([torch.zeros_like(b), b], dim=1)

    def D(self, x: Tensor) -> Tensor:  # noqa: N802
        p = x[:, :2]
        top = torch.diag_embed(0.2 * torch.cos(p))
        bottom = torch.diag_embed(1 + 0.1 * p**2) + 0.05 * torch.sin(p).sum(-1)[:, None, None]
        return torch.cat([top, bottom], dim=1)


class NonlinearFirstOrder:
    """A nonlinear first-order model (3 states, 2 controls, 2 disturbances)."""

    state_dim = 3
    control_dim = 2
    disturbance_dim = 2

    def f(self, x: Tensor) -> Tensor:
        return torch.stack([torch.sin(x[:, 1]), x[:, 0] * x[:, 2], -0.3 * x[:, 2]], dim=1)

    def g(self, x: Tensor) -> Tensor:
        c, s = torch.cos(x[:, 2]), torch.sin(x[:, 2])
        z, o = torch.zeros_like(c), torch.ones_like(c)
        return torch.stack(
            [torch.stack([c, 0.1 * s], -1), torch.stack([s, z], -1), torch.stack([z, o], -1)],
            dim=1,
        )

    def D(self, x: Tensor) -> Tensor:  # noqa: N802
        e = torch.eye(3, 2, dtype=x.dtype).expand(x.shape[0], 3, 2)
        return e * (1 + 0.2 * x[:, :1, None] ** 2)


def xdot(model: ControlAffineModel, x: Tensor, u: Tensor, w: Tensor) -> Tensor:
    return (
        model.f(x)
        + (model.g(x) @ u.unsqueeze(-1)).squeeze(-1)
        + (model.D(x) @ w.unsqueeze(-1)).squeeze(-1)
    )


def fd_along(fn: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, eps: float = 1e-5) -> Tensor:
    """Central difference of fn along the direction v: d/dt fn(x + t v) at t = 0."""
    return (fn(x + eps * v) - fn(x - eps * v)) / (2 * eps)


POS = (0, 1)


def lookahead(x: Tensor) -> Tensor:
    """A nonlinear position map (like a unicycle's look-ahead point p + l (cos th, sin th))."""
    return x[:, :2] + 0.3 * torch.stack([torch.cos(x[:, 2]), torch.sin(x[:, 2])], dim=-1)


def barrier_cases(pos: object = POS) -> dict[str, Barrier]:
    return {
        "circle_sq": CircleBarrier([0.3, -0.2], 0.5, position=pos),  # type: ignore[arg-type]
        "circle_dist": CircleBarrier([0.3, -0.2], 0.5, position=pos, form="distance"),  # type: ignore[arg-type]
        "halfspace": HalfSpaceBarrier([1.0, 2.0], 0.7, position=pos),  # type: ignore[arg-type]
        "box_face": box_barriers([-2.0, -1.5], [2.5, 1.0], position=pos)[2],  # type: ignore[arg-type]
        "box_obstacle": BoxObstacleBarrier([-0.5, -0.3], [0.4, 0.6], position=pos),  # type: ignore[arg-type]
        "function": FunctionBarrier(lambda x: x[:, 0] ** 2 * x[:, 1] + torch.sin(x[:, 1]) - 0.2),
    }


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# --------------------------------------------------------------------------- barriers
@pytest.mark.parametrize("name", list(barrier_cases()))
def test_analytic_derivatives_match_autograd(name: str, gen: torch.Generator) -> None:
    barrier = barrier_cases()[name]
    x = 1.5 * torch.randn(16, 4, generator=gen, dtype=F64)
    assert barrier.h(x).shape == (16,)
    torch.testing.assert_close(barrier.grad(x), autograd_grad(barrier.h, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        barrier.hessian(x), autograd_hessian(barrier.h, x), rtol=1e-9, atol=1e-9
    )
    # gradient against central differences of h, coordinate by coordinate
    eye = torch.eye(4, dtype=F64)
    fd = torch.stack([fd_along(barrier.h, x, eye[k].expand_as(x)) for k in range(4)], dim=1)
    torch.testing.assert_close(barrier.grad(x), fd, rtol=1e-6, atol=1e-7)


def test_barrier_values_and_flags() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=F64)
    sq = CircleBarrier([0.0, 0.0], 1.0)
    dist = CircleBarrier([0.0, 0.0], 1.0, form="distance")
    torch.testing.assert_close(sq.h(x), torch.tensor([0.0, -1.0, 24.0], dtype=F64))
    torch.testing.assert_close(dist.h(x), torch.tensor([0.0, -1.0, 4.0], dtype=F64))
    assert torch.isfinite(dist.grad(x)).all()
    assert torch.isfinite(dist.hessian(x)).all()
    half = HalfSpaceBarrier([0.0, 2.0], 2.0)  # y <= 1, h = 1 - y (normalised)
    torch.testing.assert_close(half.h(x), torch.tensor([1.0, 1.0, -3.0], dtype=F64))
    faces = box_barriers([-1.0, float("-inf")], [1.0, 2.0])
    assert len(faces) == 3  # x <= 1, x >= -1, y <= 2
    box = BoxObstacleBarrier([-1.0, -1.0], [1.0, 1.0])
    corners = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, 0.0], [0.0, 0.0]], dtype=F64)
    values = box.h(corners)
    assert torch.allclose(values[:2], torch.zeros(2, dtype=F64), atol=1e-12)  # corners on it
    assert (values[2:] < 0).all()  # faces and centre are unsafe (the box is covered)
    assert sq.analytic
    assert not FunctionBarrier(sq.h).analytic
    assert not CircleBarrier([0.0, 0.0], 1.0, position=lookahead).analytic


class _MapWithJacobian:
    """p = (x0 + l cos x2, x1 + l sin x2) with its Jacobian in closed form."""

    def __init__(self, jacobian_shape: tuple[int, ...] | None = None) -> None:
        self.jacobian_shape = jacobian_shape

    def __call__(self, x: Tensor) -> Tensor:
        return lookahead(x)

    def jacobian(self, x: Tensor) -> Tensor:
        if self.jacobian_shape is not None:
            return torch.zeros(self.jacobian_shape, dtype=x.dtype)
        jac = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype)
        jac[:, 0, 0] = jac[:, 1, 1] = 1.0
        jac[:, 0, 2] = -0.3 * torch.sin(x[:, 2])
        jac[:, 1, 2] = 0.3 * torch.cos(x[:, 2])
        return jac


@pytest.mark.parametrize("form", ["squared", "distance"])
def test_position_map_jacobian_gives_the_autograd_gradient(
    form: Literal["squared", "distance"], gen: torch.Generator
) -> None:
    """A map with ``jacobian``: the chain rule in closed form equals autograd's gradient."""
    x = torch.randn(64, 3, generator=gen, dtype=F64)
    closed = CircleBarrier([0.3, -0.2], 0.5, position=_MapWithJacobian(), form=form)
    auto = CircleBarrier([0.3, -0.2], 0.5, position=lookahead, form=form)
    torch.testing.assert_close(closed.grad(x), auto.grad(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(closed.hessian(x), auto.hessian(x))  # still autograd
    # the rows of a model with a control term in the heading agree too
    model = NonlinearSecondOrder()
    xs = torch.randn(16, 4, generator=gen, dtype=F64)
    on = [CircleBarrier([0.3, -0.2], 0.5, position=_Slice4(_MapWithJacobian()), form=form)]
    ref = [CircleBarrier([0.3, -0.2], 0.5, position=_Slice4(None), form=form)]
    for got, want in zip(cbf_rows(model, on, xs), cbf_rows(model, ref, xs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


class _Slice4:
    """The look-ahead point of the first three coordinates of a 4-D state (with a Jacobian
    when ``inner`` has one)."""

    def __init__(self, inner: _MapWithJacobian | None) -> None:
        self.inner = inner
        if inner is not None:
            self.jacobian = self._jacobian

    def __call__(self, x: Tensor) -> Tensor:
        return lookahead(x[:, :3])

    def _jacobian(self, x: Tensor) -> Tensor:
        assert self.inner is not None
        return torch.nn.functional.pad(self.inner.jacobian(x[:, :3]), (0, 1))


def test_position_map_jacobian_of_the_wrong_shape_is_named() -> None:
    b = CircleBarrier([0.0, 0.0], 1.0, position=_MapWithJacobian(jacobian_shape=(2, 3)))
    with pytest.raises(ConfigError, match="jacobian"):
        b.grad(torch.zeros(4, 3, dtype=F64))


def test_position_indices_embed_derivatives(gen: torch.Generator) -> None:
    """A barrier on (x[2], x[0]) of a 4-D state: gradient and Hessian land in those slots."""
    b = CircleBarrier([0.5, -1.0], 1.0, position=(2, 0))
    x = torch.randn(5, 4, generator=gen, dtype=F64)
    grad, hess = b.grad(x), b.hessian(x)
    assert (grad[:, [1, 3]] == 0).all()
    torch.testing.assert_close(grad[:, 2], 2 * (x[:, 2] - 0.5))
    torch.testing.assert_close(grad[:, 0], 2 * (x[:, 0] + 1.0))
    expected = torch.zeros(4, 4, dtype=F64)
    expected[0, 0] = expected[2, 2] = 2.0
    torch.testing.assert_close(hess, expected.expand(5, 4, 4))


# ----------------------------------------------------------------- rows vs finite differences
FIRST_ORDER = {
    "single": (SingleIntegrator(2), None),
    "nonlinear": (NonlinearFirstOrder(), None),
    "lookahead": (NonlinearFirstOrder(), lookahead),
}


@pytest.mark.parametrize("case", list(FIRST_ORDER))
@pytest.mark.parametrize("name", list(barrier_cases()))
def test_first_order_rows_match_finite_differences(
    case: str, name: str, gen: torch.Generator
) -> None:
    model, pos = FIRST_ORDER[case]
    barrier = barrier_cases(POS if pos is None else pos)[name]
    nx, nu, nw = model.state_dim, model.control_dim, model.disturbance_dim
    x = 1.5 * torch.randn(12, nx, generator=gen, dtype=F64)
    u = torch.randn(12, nu, generator=gen, dtype=F64)
    w = torch.randn(12, 1, nw, generator=gen, dtype=F64)
    alpha = 0.7
    G, h = cbf_rows(model, [barrier], x, w, alpha=alpha)
    margin = h[:, 0] - (G[:, 0] * u).sum(-1)  # h' + alpha h with this u and w
    hdot = fd_along(barrier.h, x, xdot(model, x, u, w[:, 0]))
    torch.testing.assert_close(margin, hdot + alpha * barrier.h(x), rtol=1e-6, atol=1e-7)


SECOND_ORDER = {
    "double": DoubleIntegrator(2),
    "nonlinear": NonlinearSecondOrder(),
}


@pytest.mark.parametrize("case", list(SECOND_ORDER))
@pytest.mark.parametrize("name", list(barrier_cases()))
def test_hocbf_rows_match_finite_differences(case: str, name: str, gen: torch.Generator) -> None:
    """d(psi1)/dt + alpha2 psi1 from the rows equals central differences of psi1 along xdot.

    psi1 = h' + alpha1 h is evaluated by the first-order rows (checked above against finite
    differences of h); its time derivative is then differenced once more.
    """
    model = SECOND_ORDER[case]
    barrier = barrier_cases(POS)[name]
    x = 1.5 * torch.randn(12, 4, generator=gen, dtype=F64)
    u = torch.randn(12, 2, generator=gen, dtype=F64)
    w = torch.randn(12, 1, 2, generator=gen, dtype=F64)
    a1, a2 = 0.8, 1.7

    def psi1(y: Tensor) -> Tensor:
        # u does not enter h' (L_g h = 0), so any control gives psi1
        G1, h1 = cbf_rows(model, [barrier], y, w, alpha=a1)
        assert torch.all(G1 == 0)
        return h1[:, 0]

    # psi1 itself against differences of h
    hdot = fd_along(barrier.h, x, xdot(model, x, u, w[:, 0]))
    torch.testing.assert_close(psi1(x), hdot + a1 * barrier.h(x), rtol=1e-6, atol=1e-7)
    G, h = cbf_rows(model, [barrier], x, w, alpha=a1, alpha2=a2, relative_degree=2)
    margin = h[:, 0] - (G[:, 0] * u).sum(-1)
    psidot = fd_along(psi1, x, xdot(model, x, u, w[:, 0]))
    torch.testing.assert_close(margin, psidot + a2 * psi1(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("relative_degree", [1, 2])
def test_analytic_and_autograd_rows_agree(relative_degree: int, gen: torch.Generator) -> None:
    model = NonlinearSecondOrder()
    x = 1.5 * torch.randn(20, 4, generator=gen, dtype=F64)
    atoms = torch.randn(20, 5, 2, generator=gen, dtype=F64)
    analytic = [b for n, b in barrier_cases(POS).items() if n != "function"]
    autograd = [FunctionBarrier(b.h) for b in analytic]
    Ga, ha = cbf_rows(model, analytic, x, atoms, alpha=0.9, relative_degree=relative_degree)
    Gb, hb = cbf_rows(model, autograd, x, atoms, alpha=0.9, relative_degree=relative_degree)
    assert Ga.shape == (20, len(analytic), 2)
    assert ha.shape == (20, len(analytic))
    torch.testing.assert_close(Ga, Gb, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ha, hb, rtol=1e-9, atol=1e-9)


def test_lookahead_point_restores_the_control_coefficient() -> None:
    """Unicycle (x, y, th; speed, turn rate): heading tangent to the obstacle.

    On the position, L_g h = 0 (no control coefficient); on the look-ahead point the turn rate
    enters the row (DESIGN §2).
    """

    class Unicycle:
        state_dim, control_dim, disturbance_dim = 3, 2, 2

        def f(self, x: Tensor) -> Tensor:
            return torch.zeros_like(x)

        def g(self, x: Tensor) -> Tensor:
            c, s = torch.cos(x[:, 2]), torch.sin(x[:, 2])
            z, o = torch.zeros_like(c), torch.ones_like(c)
            rows = [torch.stack([c, z], -1), torch.stack([s, z], -1), torch.stack([z, o], -1)]
            return torch.stack(rows, dim=1)

        def D(self, x: Tensor) -> Tensor:  # noqa: N802
            return torch.eye(3, 2, dtype=x.dtype).expand(x.shape[0], 3, 2)

    x = torch.tensor([[0.0, -2.0, 0.0]], dtype=F64)  # heading +x, obstacle straight above
    on_position = CircleBarrier([0.0, 0.0], 1.0, position=(0, 1))
    on_lookahead = CircleBarrier([0.0, 0.0], 1.0, position=lookahead)
    G_pos, _ = cbf_rows(Unicycle(), [on_position], x)
    G_look, _ = cbf_rows(Unicycle(), [on_lookahead], x)
    assert torch.all(G_pos == 0)
    assert G_look[0, 0, 1].abs() > 0.1  # the turn rate enters


# ----------------------------------------------------------------------------- atoms
@pytest.mark.parametrize("relative_degree", [1, 2])
def test_rows_are_the_mean_of_single_atom_rows(relative_degree: int, gen: torch.Generator) -> None:
    model = NonlinearSecondOrder()
    barriers = [CircleBarrier([0.3, -0.2], 0.5, position=POS), HalfSpaceBarrier([1.0, 1.0], 2.0)]
    barriers[1] = HalfSpaceBarrier([1.0, 1.0], 2.0, position=POS)
    x = 1.5 * torch.randn(7, 4, generator=gen, dtype=F64)
    kw = {"alpha": 0.6, "alpha2": 1.3, "relative_degree": relative_degree}
    for atoms in (
        torch.randn(6, 2, generator=gen, dtype=F64),  # shared
        torch.randn(7, 6, 2, generator=gen, dtype=F64),  # per state
    ):
        G, h = cbf_rows(model, barriers, x, atoms, **kw)  # type: ignore[arg-type]
        per = [cbf_rows(model, barriers, x, atoms[..., i : i + 1, :], **kw) for i in range(6)]  # type: ignore[arg-type]
        torch.testing.assert_close(G, torch.stack([p[0] for p in per]).mean(0))
        torch.testing.assert_close(h, torch.stack([p[1] for p in per]).mean(0))
        Gn, hn = cbf_rows(model, barriers, x, atoms, reduce="none", **kw)  # type: ignore[arg-type]
        assert Gn.shape == (7, 6, 2, 2)
        assert hn.shape == (7, 6, 2)
        torch.testing.assert_close(Gn.mean(1), G)
        if relative_degree == 1:  # affine in w: the mean of rows is the row at the mean atom
            mean_atom = atoms.mean(-2, keepdim=True)
            Gm, hm = cbf_rows(model, barriers, x, mean_atom, **kw)  # type: ignore[arg-type]
            torch.testing.assert_close(hm, h)
            torch.testing.assert_close(Gm, G)
    # zero atoms are the nominal model
    zero = torch.zeros(3, 2, dtype=F64)
    G0, h0 = cbf_rows(model, barriers, x, zero, **kw)  # type: ignore[arg-type]
    Gn, hn = cbf_rows(model, barriers, x, None, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(G0, Gn)
    torch.testing.assert_close(h0, hn)


def test_first_order_row_closed_form_single_integrator(gen: torch.Generator) -> None:
    """Single integrator, circle: row -2(p-c)^T u <= 2(p-c)^T mean(w) + alpha(|p-c|^2 - r^2)."""
    c = torch.tensor([0.5, -1.0], dtype=F64)
    x = torch.randn(9, 2, generator=gen, dtype=F64)
    atoms = torch.randn(9, 4, 2, generator=gen, dtype=F64)
    G, h = cbf_rows(SingleIntegrator(2), [CircleBarrier(c, 0.8)], x, atoms, alpha=2.0)
    d = x - c
    torch.testing.assert_close(G[:, 0], -2 * d)
    hand = 2 * (d * atoms.mean(1)).sum(-1) + 2.0 * (d.square().sum(-1) - 0.64)
    torch.testing.assert_close(h[:, 0], hand)


def test_double_integrator_hocbf_closed_form(gen: torch.Generator) -> None:
    """h = |p-c|^2 - r^2: psi1' + a2 psi1 = 2|v|^2 + 2 d.(u + w) + a1 h' + a2 (h' + a1 h)."""
    c, r, a1, a2 = torch.tensor([1.0, 2.0], dtype=F64), 0.7, 1.5, 2.5
    x = torch.randn(9, 4, generator=gen, dtype=F64)
    atoms = torch.randn(3, 2, generator=gen, dtype=F64)
    model = DoubleIntegrator(2)
    barrier = CircleBarrier(c, r, position=model.position_indices)
    G, h = cbf_rows(model, [barrier], x, atoms, alpha=a1, alpha2=a2, relative_degree=2)
    d, v = x[:, :2] - c, x[:, 2:]
    hv, hdot = d.square().sum(-1) - r * r, 2 * (d * v).sum(-1)
    torch.testing.assert_close(G[:, 0], -2 * d)
    hand = 2 * v.square().sum(-1) + 2 * d @ atoms.mean(0) + a1 * hdot + a2 * (hdot + a1 * hv)
    torch.testing.assert_close(h[:, 0], hand)


# ------------------------------------------------------- closed-form Jacobian products
@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["single", "double"]),
    dim=st.integers(1, 3),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_reference_models_jacobian_products_are_the_autograd_ones(
    kind: str, dim: int, batch: int, seed: int
) -> None:
    model = SingleIntegrator(dim) if kind == "single" else DoubleIntegrator(dim)
    assert isinstance(model, ModelJacobians)
    assert not isinstance(AutogradJacobians(model), ModelJacobians)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.state_dim, generator=gen, dtype=F64)
    v = torch.randn(batch, model.state_dim, generator=gen, dtype=F64)
    _, jf = torch.autograd.functional.vjp(model.f, x, v)
    torch.testing.assert_close(model.f_vjp(x, v), jf, rtol=0, atol=0)
    jd = model.D_vjp(x, v)
    assert jd.shape == (batch, model.disturbance_dim, model.state_dim)
    for k in range(model.disturbance_dim):
        _, ref = torch.autograd.functional.vjp(lambda y, k=k: model.D(y)[:, :, k], x, v)
        torch.testing.assert_close(jd[:, k], ref, rtol=0, atol=0)


@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_closed_form_products_give_the_autograd_rows_bit_for_bit(
    reduce: Literal["mean", "none"], gen: torch.Generator
) -> None:
    """The quadrotor's case: the closed form changes the cost, not one bit of the rows.

    ``AutogradJacobians`` hides the closed form, as in bench_dsrl.py's autograd row.
    """
    model = DoubleIntegrator(3)
    barriers = [
        SphereBarrier(c, r, position=model.position_indices)
        for c, r in (([1.0, 0.5, 0.2], 0.6), ([-0.4, 1.2, -0.3], 0.9))
    ]
    x = torch.randn(17, 6, generator=gen, dtype=F64)
    atoms = 0.3 * torch.randn(17, 8, 3, generator=gen, dtype=F64)
    kw = {"alpha": 0.8, "alpha2": 1.3, "relative_degree": 2, "reduce": reduce}
    Ga, ha = cbf_rows(model, barriers, x, atoms, **kw)  # type: ignore[arg-type]
    Gb, hb = cbf_rows(AutogradJacobians(model), barriers, x, atoms, **kw)  # type: ignore[arg-type]
    assert torch.equal(Ga, Gb)
    assert torch.equal(ha, hb)
    # with a graph (x and the atoms require grad) the gradients agree as well
    xg, wg = x[:4].clone().requires_grad_(), atoms[:4].clone().requires_grad_()
    grads = []
    for m in (model, AutogradJacobians(model)):
        G, h = cbf_rows(m, barriers, xg, wg, **kw)  # type: ignore[arg-type]
        grads.append(torch.autograd.grad((G.square().sum() + h.square().sum()), (xg, wg)))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda y, w: cbf_rows(model, barriers, y, w, **kw),  # type: ignore[arg-type]
        (xg[:2].detach().requires_grad_(), wg[:2].detach().requires_grad_()),
    )


def test_check_model_jacobians_catches_a_wrong_closed_form(gen: torch.Generator) -> None:
    x = torch.randn(6, 6, generator=gen, dtype=F64)
    assert check_model_jacobians(DoubleIntegrator(3), x) == 0.0
    assert check_model_jacobians(SingleIntegrator(3), x[:, :3]) == 0.0

    class Swapped(DoubleIntegrator):  # J_f' v with the halves exchanged: (v_p, 0), not (0, v_p)
        def f_vjp(self, x: Tensor, v: Tensor) -> Tensor:
            return torch.cat([v[:, : self.dim], torch.zeros_like(v[:, : self.dim])], dim=1)

    class WrongShape(DoubleIntegrator):
        def D_vjp(self, x: Tensor, v: Tensor) -> Tensor:  # noqa: N802
            return torch.zeros_like(x)

    with pytest.raises(ConfigError, match=r"model\.f_vjp differs from autograd"):
        check_model_jacobians(Swapped(3), x)
    with pytest.raises(ConfigError, match=r"model\.D_vjp has shape \(6, 6\), expected \(6, 3, 6\)"):
        check_model_jacobians(WrongShape(3), x)
    with pytest.raises(ConfigError, match="has no f_vjp and D_vjp"):
        check_model_jacobians(NonlinearSecondOrder(), x[:, :4])
    with pytest.raises(ConfigError, match=r"x must be a tensor of shape \(B, 6\)"):
        check_model_jacobians(DoubleIntegrator(3), x[:, :4])
    state = torch.random.get_rng_state()
    check_model_jacobians(DoubleIntegrator(3), x)
    assert torch.equal(state, torch.random.get_rng_state())


def test_jacobian_products_of_the_wrong_shape_are_named() -> None:
    class Bad(DoubleIntegrator):
        def D_vjp(self, x: Tensor, v: Tensor) -> Tensor:  # noqa: N802
            return torch.zeros_like(x)

    model = Bad(2)
    barrier = CircleBarrier([0.0, 0.0], 1.0, position=model.position_indices)
    with pytest.raises(ConfigError, match=r"model\.D_vjp\(x, v\) must have shape \(1, 2, 4\)"):
        cbf_rows(model, barrier, torch.ones(1, 4, dtype=F64), relative_degree=2)


def test_cbf_margin(gen: torch.Generator) -> None:
    model = DoubleIntegrator(2)
    barrier = CircleBarrier([0.0, 0.0], 1.0, position=model.position_indices)
    x = torch.randn(4, 4, generator=gen, dtype=F64)
    u = torch.randn(4, 2, generator=gen, dtype=F64)
    atoms = torch.randn(4, 3, 2, generator=gen, dtype=F64, requires_grad=True)
    margin = cbf_margin(model, barrier, x, u, atoms, alpha=1.0, relative_degree=2)
    G, h = cbf_rows(model, barrier, x, atoms, alpha=1.0, relative_degree=2, reduce="none")
    assert margin.shape == (4, 3, 1)
    torch.testing.assert_close(margin[..., 0], h[..., 0] - (G[..., 0, :] * u[:, None]).sum(-1))
    (grad,) = torch.autograd.grad(margin.sum(), atoms)  # differentiable in the atoms
    torch.testing.assert_close(grad, 2 * x[:, None, :2].expand(4, 3, 2))  # d(2 p.w)/dw


# ------------------------------------------------------------------- autograd through rows
@pytest.mark.parametrize("relative_degree", [1, 2])
def test_rows_gradcheck_in_state_and_atoms(relative_degree: int, gen: torch.Generator) -> None:
    model = NonlinearSecondOrder()
    barriers = [
        CircleBarrier([0.3, -0.2], 0.5, position=POS),
        BoxObstacleBarrier([-0.5, -0.3], [0.4, 0.6], position=POS),
    ]
    x = torch.randn(3, 4, generator=gen, dtype=F64, requires_grad=True)
    atoms = torch.randn(3, 2, 2, generator=gen, dtype=F64, requires_grad=True)

    def fn(xx: Tensor, ww: Tensor) -> tuple[Tensor, Tensor]:
        return cbf_rows(model, barriers, xx, ww, alpha=0.7, relative_degree=relative_degree)

    assert torch.autograd.gradcheck(fn, (x, atoms))


def test_rows_detached_without_grad_inputs() -> None:
    x = torch.tensor([[2.0, 0.0]], dtype=F64)
    G, h = cbf_rows(SingleIntegrator(2), CircleBarrier([0.0, 0.0], 1.0), x)
    assert not G.requires_grad
    assert not h.requires_grad
    net = torch.nn.Linear(2, 1).double()

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, y: Tensor) -> Tensor:
            return torch.tanh(self.net(y)[:, 0])

    for barrier in (
        FunctionBarrier(Net()),
        FunctionBarrier(lambda y: net(y)[:, 0], trainable=True),
    ):
        G, h = cbf_rows(SingleIntegrator(2), barrier, x)
        assert h.requires_grad  # trainable barrier parameters keep the graph
        (g,) = torch.autograd.grad(h.sum() + G.sum(), net.weight)
        assert torch.isfinite(g).all()
        assert g.abs().sum() > 0
        with torch.no_grad():
            G, h = cbf_rows(SingleIntegrator(2), barrier, x)
        assert not h.requires_grad
    G, h = cbf_rows(SingleIntegrator(2), FunctionBarrier(lambda y: net(y)[:, 0]), x)
    assert not h.requires_grad  # a closure is not detected: pass trainable=True


# ------------------------------------------------------------------------- dtype, device
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("relative_degree", [1, 2])
def test_float32_and_device(device: str, relative_degree: int, gen: torch.Generator) -> None:
    model = DoubleIntegrator(2) if relative_degree == 2 else SingleIntegrator(2)
    pos = model.position_indices
    barriers = [
        CircleBarrier([0.3, -0.2], 0.5, position=pos),
        FunctionBarrier(lambda x: x[:, 0] - 3.0),
        BoxObstacleBarrier([1.0, 1.0], [2.0, 2.0], position=pos),
    ]
    x64 = torch.randn(8, model.state_dim, generator=gen, dtype=F64)
    w64 = torch.randn(5, 2, generator=gen, dtype=F64)
    G64, h64 = cbf_rows(model, barriers, x64, w64, relative_degree=relative_degree)
    x32, w32 = x64.to(device, torch.float32), w64.to(device, torch.float32)
    G32, h32 = cbf_rows(model, barriers, x32, w32, relative_degree=relative_degree)
    assert G32.dtype == torch.float32
    assert G32.device.type == device
    torch.testing.assert_close(G32.cpu().double(), G64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h32.cpu().double(), h64, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ bad input
def test_bad_input_raises_named_errors() -> None:
    si, barrier = SingleIntegrator(2), CircleBarrier([0.0, 0.0], 1.0)
    x = torch.ones(3, 2, dtype=F64)
    cases: list[tuple[type[OtsafeError], str, Callable[[], object]]] = [
        (ConfigError, "x must have shape", lambda: cbf_rows(si, barrier, torch.ones(3, 4))),
        (ConfigError, "x must be float32", lambda: cbf_rows(si, barrier, torch.ones(3, 2).long())),
        (ConfigError, "x must be a torch", lambda: cbf_rows(si, barrier, [[1.0, 2.0]])),  # type: ignore[arg-type]
        (
            ConfigError,
            "x has NaN",
            lambda: cbf_rows(si, barrier, torch.tensor([[float("nan"), 0.0]])),
        ),
        (
            DistributionError,
            "atoms must have shape",
            lambda: cbf_rows(si, barrier, x, torch.ones(4, 3, dtype=F64)),
        ),
        (
            DistributionError,
            "atoms has dtype",
            lambda: cbf_rows(si, barrier, x, torch.ones(4, 2, dtype=torch.float32)),
        ),
        (
            DistributionError,
            "atoms has NaN",
            lambda: cbf_rows(si, barrier, x, torch.full((4, 2), float("inf"), dtype=F64)),
        ),
        (ConfigError, "alpha must be positive", lambda: cbf_rows(si, barrier, x, alpha=-1.0)),
        (ConfigError, "alpha must be positive", lambda: cbf_rows(si, barrier, x, alpha=0.0)),
        (ConfigError, "alpha2 must be", lambda: cbf_rows(si, barrier, x, alpha2=[1.0, 2.0])),
        (ConfigError, "barriers is empty", lambda: cbf_rows(si, [], x)),
        (ConfigError, "barriers[0] is a", lambda: cbf_rows(si, [lambda y: y], x)),  # type: ignore[list-item]
        (
            ConfigError,
            "relative_degree must be 1 or 2",
            lambda: cbf_rows(si, barrier, x, relative_degree=3),
        ),
        (ConfigError, "needs L_g h = 0", lambda: cbf_rows(si, barrier, x, relative_degree=2)),
        (ConfigError, "model must provide", lambda: cbf_rows(object(), barrier, x)),  # type: ignore[arg-type]
        (ConfigError, "radius must be positive", lambda: CircleBarrier([0.0, 0.0], -1.0)),
        (ConfigError, "form must be", lambda: CircleBarrier([0.0], 1.0, form="cube")),  # type: ignore[arg-type]
        (ConfigError, "position must list 2", lambda: CircleBarrier([0.0, 0.0], 1.0, position=[0])),
        (
            ConfigError,
            "exceed the state dimension",
            lambda: cbf_rows(si, CircleBarrier([0.0, 0.0], 1.0, position=(0, 5)), x),
        ),
        (
            ConfigError,
            "needs a 3-D position",
            lambda: cbf_rows(si, CircleBarrier([0.0] * 3, 1.0), x),
        ),
        (ConfigError, "normal must be", lambda: HalfSpaceBarrier([0.0, 0.0], 1.0)),
        (ConfigError, "low < high", lambda: box_barriers([0.0, 1.0], [1.0, 1.0])),
        (ConfigError, "order must be an even", lambda: BoxObstacleBarrier([0.0], [1.0], order=3)),
        (ConfigError, "dim must be a positive", lambda: DoubleIntegrator(0)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
            call()
    assert issubclass(ConfigError, ValueError)
