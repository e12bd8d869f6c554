r"""Control-affine models with an uncertainty term (DESIGN §2).

.. math:: \dot x = f(x) + g(x)\,u + D(x)\,\omega,

with state :math:`x \in \mathbb R^{n_x}`, control :math:`u \in \mathbb R^{n_u}` and uncertainty
:math:`\omega \in \mathbb R^{n_w}` (wind, drift, gusts). Any object with batched methods ``f``,
``g``, ``D`` and the attributes ``state_dim``, ``control_dim``, ``disturbance_dim`` is a
:class:`ControlAffineModel`; :class:`SingleIntegrator` and :class:`DoubleIntegrator` are the
reference models used by the tests and examples.

A model may also provide the vector-Jacobian products that the HOCBF rows need, ``f_vjp`` and
``D_vjp`` (:class:`ModelJacobians`); the reference models do, in closed form. Without them the
rows take the products by autograd, which records a graph for every call and costs one backward
pass per barrier (the gain on the quadrotor is in docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from otsafe.errors import ConfigError

__all__ = [
    "ControlAffineModel",
    "DoubleIntegrator",
    "ModelJacobians",
    "SingleIntegrator",
    "check_model_jacobians",
]


# ------------------------------------------------------------------------------------ models
@runtime_checkable
class ControlAffineModel(Protocol):
    r"""Batched control-affine dynamics :math:`\dot x = f(x) + g(x)u + D(x)\omega`.

    Attributes
    ----------
    state_dim, control_dim, disturbance_dim : int
        :math:`n_x`, :math:`n_u`, :math:`n_w` (``disturbance_dim`` may be 0).

    Notes
    -----
    Every method maps a batch of states ``x`` of shape ``(B, n_x)`` to tensors on the device and
    in the dtype of ``x``, row ``b`` depending on ``x[b]`` only, differentiably (the HOCBF rows
    need :math:`J_f` and :math:`J_D`: by autograd, unless the model is also a
    :class:`ModelJacobians`).
    """

    state_dim: int
    control_dim: int
    disturbance_dim: int

    def f(self, x: Tensor) -> Tensor:
        """Drift :math:`f(x)`, shape ``(B, n_x)``."""
        ...

    def g(self, x: Tensor) -> Tensor:
        """Control matrix :math:`g(x)`, shape ``(B, n_x, n_u)``."""
        ...

    def D(self, x: Tensor) -> Tensor:  # noqa: N802 - the D(x) of the dynamics
        """Uncertainty matrix :math:`D(x)`, shape ``(B, n_x, n_w)``."""
        ...


@runtime_checkable
class ModelJacobians(Protocol):
    r"""Optional closed-form Jacobian products of a :class:`ControlAffineModel`.

    A model that has both methods gives the HOCBF rows of :func:`otsafe.safety.cbf.cbf_rows`
    :math:`J_f^\top \nabla h` and :math:`J_{D_{:k}}^\top \nabla h` without autograd. They must
    equal the autograd products of ``f`` and ``D`` (tested for the reference models) and be
    differentiable in ``x`` and ``v``.
    """

    def f_vjp(self, x: Tensor, v: Tensor) -> Tensor:
        r""":math:`J_f(x)^\top v` row by row: ``x`` and ``v`` of shape ``(B, n_x)``, result too."""
        ...

    def D_vjp(self, x: Tensor, v: Tensor) -> Tensor:  # noqa: N802 - the D(x) of the dynamics
        r""":math:`J_{D_{:k}}(x)^\top v` for every column :math:`k`, shape ``(B, n_w, n_x)``."""
        ...


def _check_dim(name: str, dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"{name} must be a positive integer, got {dim!r}")
    return dim


def _eye(n: int, x: Tensor) -> Tensor:
    return torch.eye(n, dtype=x.dtype, device=x.device).expand(x.shape[0], n, n)


class SingleIntegrator:
    r"""Single integrator :math:`\dot p = u + \omega` in ``dim`` dimensions.

    The state is the position, :math:`f = 0`, :math:`g = D = I`.

    Parameters
    ----------
    dim : int
        Dimension of the position (2 for a planar robot).
    """

    def __init__(self, dim: int = 2) -> None:
        self.dim = _check_dim("dim", dim)
        self.state_dim = self.dim
        self.control_dim = self.dim
        self.disturbance_dim = self.dim
        self.position_indices: tuple[int, ...] = tuple(range(self.dim))

    def f(self, x: Tensor) -> Tensor:
        """:math:`f(x) = 0`."""
        return torch.zeros_like(x)

    def g(self, x: Tensor) -> Tensor:
        """:math:`g(x) = I`."""
        return _eye(self.dim, x)

    def D(self, x: Tensor) -> Tensor:  # noqa: N802 - the D(x) of the dynamics
        """:math:`D(x) = I`."""
        return _eye(self.dim, x)

    def f_vjp(self, x: Tensor, v: Tensor) -> Tensor:
        r""":math:`J_f^\top v = 0`."""
        return torch.zeros_like(x)

    def D_vjp(self, x: Tensor, v: Tensor) -> Tensor:  # noqa: N802 - the D(x) of the dynamics
        r""":math:`J_{D_{:k}}^\top v = 0` (constant :math:`D`), shape ``(B, n_w, n_x)``."""
        return x.new_zeros(x.shape[0], self.disturbance_dim, self.state_dim)

    def step(self, x: Tensor, u: Tensor, dt: float, w: Tensor | None = None) -> Tensor:
        r"""Exact step with u and :math:`\omega` held for ``dt``: :math:`x + dt(u + \omega)`."""
        return x + dt * (u if w is None else u + w)

    def __repr__(self) -> str:
        return f"SingleIntegrator(dim={self.dim})"


class DoubleIntegrator:
    r"""Double integrator :math:`\dot p = v`, :math:`\dot v = u + \omega` in ``dim`` dimensions.

    The state is :math:`x = (p, v)` of size ``2 * dim``; :math:`f(x) = (v, 0)`,
    :math:`g = D = (0, I)^\top`. A barrier on the position has relative degree 2 (use the HOCBF).

    Parameters
    ----------
    dim : int
        Dimension of the position (3 for the quadcopter's translational dynamics).
    """

    def __init__(self, dim: int = 2) -> None:
        self.dim = _check_dim("dim", dim)
        self.state_dim = 2 * self.dim
        self.control_dim = self.dim
        self.disturbance_dim = self.dim
        self.position_indices: tuple[int, ...] = tuple(range(self.dim))
        self.velocity_indices: tuple[int, ...] = tuple(range(self.dim, 2 * self.dim))

    def f(self, x: Tensor) -> Tensor:
        """:math:`f(x) = (v, 0)`."""
        v = x[:, self.dim :]
        return torch.cat([v, torch.zeros_like(v)], dim=1)

    def g(self, x: Tensor) -> Tensor:
        """:math:`g(x) = (0, I)^\\top`."""
        z = torch.zeros(x.shape[0], self.dim, self.dim, dtype=x.dtype, device=x.device)
        return torch.cat([z, _eye(self.dim, x)], dim=1)

    def D(self, x: Tensor) -> Tensor:  # noqa: N802 - the D(x) of the dynamics
        """:math:`D(x) = (0, I)^\\top`."""
        return self.g(x)

    def f_vjp(self, x: Tensor, v: Tensor) -> Tensor:
        r""":math:`J_f^\top v = (0, v_p)`: :math:`f = (v, 0)` moves the position part of ``v``."""
        return torch.cat([torch.zeros_like(v[:, : self.dim]), v[:, : self.dim]], dim=1)

    def D_vjp(self, x: Tensor, v: Tensor) -> Tensor:  # noqa: N802 - the D(x) of the dynamics
        r""":math:`J_{D_{:k}}^\top v = 0` (constant :math:`D`), shape ``(B, n_w, n_x)``."""
        return x.new_zeros(x.shape[0], self.disturbance_dim, self.state_dim)

    def step(self, x: Tensor, u: Tensor, dt: float, w: Tensor | None = None) -> Tensor:
        r"""Exact step with :math:`a = u + \omega` held for ``dt`` (zero-order hold).

        :math:`p \leftarrow p + dt\, v + \tfrac12 dt^2 a`, :math:`v \leftarrow v + dt\, a`.
        """
        a = u if w is None else u + w
        p, v = x[:, : self.dim], x[:, self.dim :]
        return torch.cat([p + dt * v + 0.5 * dt * dt * a, v + dt * a], dim=1)

    def __repr__(self) -> str:
        return f"DoubleIntegrator(dim={self.dim})"


def _check_model(model: object) -> ControlAffineModel:
    if not isinstance(model, ControlAffineModel):
        raise ConfigError(
            "model must provide f, g, D and state_dim, control_dim, disturbance_dim "
            f"(a ControlAffineModel), got {type(model).__name__}"
        )
    for name in ("state_dim", "control_dim"):
        _check_dim(f"model.{name}", getattr(model, name))
    nw = model.disturbance_dim
    if isinstance(nw, bool) or not isinstance(nw, int) or nw < 0:
        raise ConfigError(f"model.disturbance_dim must be a non-negative integer, got {nw!r}")
    return model


def check_model_jacobians(model: ControlAffineModel, x: Tensor, tol: float = 1e-10) -> float:
    r"""Check a model's closed-form ``f_vjp``/``D_vjp`` against autograd at the states ``x``.

    For a model of your own that implements :class:`ModelJacobians`: a wrong closed form would
    make every HOCBF row silently wrong, so compare it once with the autograd products
    :math:`J_f^\top v` and :math:`J_{D_{:k}}^\top v` at random directions :math:`v` (drawn from a
    fixed seed: the check is deterministic and leaves the global random state alone).

    Parameters
    ----------
    model : ControlAffineModel
        A model that is also a :class:`ModelJacobians`.
    x : Tensor, shape (B, n_x)
        States to check at (float64 recommended).
    tol : float
        Largest accepted difference, relative to ``1 + max |autograd product|``.

    Returns
    -------
    float
        The largest relative difference found.

    Raises
    ------
    ConfigError
        ``x`` is not a batch of states, the model has no closed form, or it differs from
        autograd by more than ``tol``.
    """
    model = _check_model(model)
    if not isinstance(model, ModelJacobians):
        raise ConfigError(f"{type(model).__name__} has no f_vjp and D_vjp to check")
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != model.state_dim:
        raise ConfigError(f"x must be a tensor of shape (B, {model.state_dim})")
    x = x.detach()
    gen = torch.Generator(device=x.device).manual_seed(0)  # leaves the global RNG alone
    v = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=gen)
    _, jf = torch.autograd.functional.vjp(model.f, x, v)  # type: ignore[no-untyped-call]
    pairs = [("f_vjp", model.f_vjp(x, v), jf)]
    jd = model.D_vjp(x, v)
    expected = (x.shape[0], model.disturbance_dim, x.shape[1])
    if tuple(jd.shape) != expected:
        raise ConfigError(f"model.D_vjp has shape {tuple(jd.shape)}, expected {expected}")
    for k in range(model.disturbance_dim):

        def column(y: Tensor, k: int = k) -> Tensor:
            return model.D(y)[:, :, k]

        _, ref = torch.autograd.functional.vjp(column, x, v)  # type: ignore[no-untyped-call]
        pairs.append((f"D_vjp[:, {k}]", jd[:, k], ref))
    worst = 0.0
    for name, got, ref in pairs:
        if tuple(got.shape) != tuple(ref.shape):
            raise ConfigError(
                f"model.{name} has shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
            )
        err = float((got - ref).abs().max()) / (1.0 + float(ref.abs().max()))
        if not err <= tol:
            raise ConfigError(f"model.{name} differs from autograd by {err:.3g} (tol {tol:g})")
        worst = max(worst, err)
    return worst
