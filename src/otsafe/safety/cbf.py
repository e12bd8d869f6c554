r"""Control-barrier-function rows of the safety QP, averaged over uncertainty atoms (DESIGN §2).

The dynamics are a :class:`~otsafe.safety.models.ControlAffineModel`
:math:`\dot x = f(x) + g(x)u + D(x)\omega`, and the safe set is
:math:`\{h(x) \ge 0\}` for each :class:`~otsafe.safety.barriers.Barrier`.

**Rows of the safety QP.** :func:`cbf_rows` turns each barrier into one linear constraint
:math:`G_j u \le h_j` on the control, averaged over uncertainty atoms
:math:`\omega_1, \dots, \omega_N` (DESIGN §2). With the Lie derivatives
:math:`L_f h = \nabla h^\top f`, :math:`L_g h = \nabla h^\top g`, :math:`L_D h = \nabla h^\top D`:

* relative degree 1 (:math:`\dot h + \alpha h \ge 0`), for each atom
  :math:`L_f h + L_g h\,u + L_D h\,\omega_i + \alpha h \ge 0`, so the averaged row is

  .. math:: -L_g h\; u \;\le\; L_f h + \frac1N \sum_i L_D h\,\omega_i + \alpha h ;

* relative degree 2 (HOCBF; requires :math:`L_g h = 0`, so :math:`u` does not enter
  :math:`\dot h`), with :math:`F_i = f + D\omega_i` and
  :math:`\psi_{1,i} = \nabla h^\top F_i + \alpha_1 h`, the condition
  :math:`\dot\psi_{1,i} + \alpha_2 \psi_{1,i} \ge 0` reads

  .. math::

      \nabla\psi_{1,i}^\top F_i + \nabla\psi_{1,i}^\top g\, u + \alpha_2 \psi_{1,i} \ge 0,
      \qquad
      \nabla\psi_{1,i} = \nabla^2 h\, F_i + J_f^\top \nabla h + J_{D\omega_i}^\top \nabla h
      + \alpha_1 \nabla h,

  (the atom is held constant in time, :math:`\dot\omega = 0`), and the row is the average over
  atoms of :math:`-\nabla\psi_{1,i}^\top g\, u \le \nabla\psi_{1,i}^\top F_i + \alpha_2
  \psi_{1,i}`. This is quadratic in :math:`\omega_i`, so the average is *not* the row at the mean
  atom. With the mean :math:`\bar\omega`, :math:`\delta_i = \omega_i - \bar\omega` and the
  covariance :math:`\Sigma = \frac1N \sum_i \delta_i \delta_i^\top`,
  :math:`\nabla\psi_{1,i} = \nabla\psi_1(\bar\omega) + K\delta_i` with
  :math:`K = \nabla^2 h\, D + [J_{D_{:k}}^\top \nabla h]_k`, so the averaged row is the
  mean-atom row with :math:`\langle K^\top D, \Sigma\rangle` added to its right-hand side:
  exactly the mean of the per-atom rows (which ``reduce="none"`` returns), at the cost of one
  row. For relative degree 1 the average equals the row at the mean atom.

Both conditions are affine in :math:`u`; the relative-degree-1 row is also affine in
:math:`\omega`. The gradient and Hessian of :math:`h` are analytic when the barrier provides
them; the Jacobian products :math:`J_f^\top \nabla h` and :math:`J_{D\omega}^\top \nabla h` of the
model are closed-form when the model is a :class:`~otsafe.safety.models.ModelJacobians` (the
reference models are) and come from autograd otherwise (vector-Jacobian products, one for
:math:`f` and one per column of :math:`D`).

**Unicycle and look-ahead points.** For a unicycle :math:`(x, y, \theta)` with controls (speed,
turn rate), a barrier on the position :math:`(x, y)` has :math:`L_g h = (\nabla_p h^\top
(\cos\theta, \sin\theta), 0)`: the turn rate never enters :math:`\dot h`, and when the heading is
tangent to the obstacle the speed coefficient vanishes too, so the row loses its control
coefficient. The standard remedy is a barrier on the look-ahead point
:math:`p + \ell (\cos\theta, \sin\theta)`, whose derivative contains the turn rate through
:math:`\ell \dot\theta (-\sin\theta, \cos\theta)`; pass it as the ``position`` map of a geometric
barrier, e.g. ``CircleBarrier(c, r, position=lambda x: x[:, :2] + l * torch.stack((x[:, 2].cos(),
x[:, 2].sin()), -1))``.

All functions are batched over the first dimension, run on the device and in the dtype of the
state (float32 or float64), and are differentiable by autograd with respect to the state, the
atoms and any barrier parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeAlias, cast

import torch
from torch import Tensor

from otsafe.errors import ConfigError, DistributionError
from otsafe.safety._autograd import _leaf, _vjp
from otsafe.safety.barriers import Barrier, _PositionBarrier, _tracks_grad
from otsafe.safety.models import ControlAffineModel, ModelJacobians, _check_model

__all__ = ["cbf_margin", "cbf_rows"]

Reduce: TypeAlias = Literal["mean", "none"]


# ---------------------------------------------------------------------------- validation
def _as_barriers(barriers: Barrier | Sequence[Barrier]) -> list[Barrier]:
    items = [barriers] if isinstance(barriers, Barrier) else list(barriers)
    if not items:
        raise ConfigError("barriers is empty: give at least one barrier")
    for i, b in enumerate(items):
        if not isinstance(b, Barrier):
            raise ConfigError(f"barriers[{i}] is a {type(b).__name__}, not a Barrier")
    return items


def _check_barrier_dims(barriers: list[Barrier], state_dim: int) -> None:
    """Check the geometric barriers against the state dimension (early, without evaluating)."""
    for i, b in enumerate(barriers):
        if isinstance(b, _PositionBarrier):
            try:
                b.check_state_dim(state_dim)
            except ConfigError as exc:
                raise ConfigError(f"barriers[{i}]: {exc}") from None


def _check_rates(name: str, value: float | Sequence[float] | Tensor, count: int) -> Tensor:
    """Class-K rates: a positive number or one per barrier; returns a float64 (count,) tensor."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().clone()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{name} must be a positive number or one per barrier") from None
    if t.dim() == 0:
        t = t.expand(count).clone()
    if t.shape != (count,):
        raise ConfigError(f"{name} must be a number or have one entry per barrier ({count})")
    if not bool((torch.isfinite(t) & (t > 0)).all()):
        raise ConfigError(f"{name} must be positive and finite, got {t.tolist()}")
    return t


def _check_state(model: ControlAffineModel, x: object, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise ConfigError(f"{name} must be a torch tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != model.state_dim or x.shape[0] == 0:
        raise ConfigError(
            f"{name} must have shape (B, {model.state_dim}) with B >= 1 (the model's state_dim), "
            f"got {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ConfigError(f"{name} has NaN or infinite entries")
    return x


def _check_atoms(model: ControlAffineModel, atoms: object, x: Tensor) -> Tensor:
    """Atoms as a ``(B, N, n_w)`` tensor; ``None`` is the single atom :math:`\\omega = 0`."""
    batch, nw = x.shape[0], model.disturbance_dim
    if atoms is None:
        return torch.zeros(batch, 1, nw, dtype=x.dtype, device=x.device)
    if not isinstance(atoms, Tensor):
        raise DistributionError(f"atoms must be a torch tensor or None, got {type(atoms).__name__}")
    if atoms.dtype != x.dtype:
        raise DistributionError(f"atoms has dtype {atoms.dtype}, expected {x.dtype} (that of x)")
    if atoms.device != x.device:
        raise DistributionError(f"atoms is on {atoms.device}, expected {x.device} (that of x)")
    if atoms.dim() == 2:
        atoms = atoms.unsqueeze(0).expand(batch, *atoms.shape)
    if atoms.dim() != 3 or atoms.shape[0] != batch or atoms.shape[2] != nw or atoms.shape[1] == 0:
        raise DistributionError(
            f"atoms must have shape (N, {nw}) or ({batch}, N, {nw}) with N >= 1 "
            f"(n_w = model.disturbance_dim), got {tuple(atoms.shape)}"
        )
    if not bool(torch.isfinite(atoms).all()):
        raise DistributionError("atoms has NaN or infinite entries")
    return atoms


def _model_terms(model: ControlAffineModel, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    batch, nx, nu, nw = x.shape[0], model.state_dim, model.control_dim, model.disturbance_dim
    f, g, d = model.f(x), model.g(x), model.D(x)
    for name, t, shape in (
        ("f", f, (batch, nx)),
        ("g", g, (batch, nx, nu)),
        ("D", d, (batch, nx, nw)),
    ):
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ConfigError(f"model.{name}(x) must have shape {shape}, got {got}")
    return f, g, d


def _barrier_terms(b: Barrier, x: Tensor, i: int, need_hessian: bool) -> tuple[Tensor, ...]:
    batch, nx = x.shape
    hv, gh = b.h(x), b.grad(x)
    if tuple(hv.shape) != (batch,) or tuple(gh.shape) != (batch, nx):
        raise ConfigError(
            f"barriers[{i}] gives h of shape {tuple(hv.shape)} and grad of shape "
            f"{tuple(gh.shape)}; expected ({batch},) and ({batch}, {nx})"
        )
    if not need_hessian:
        return hv, gh
    hess = b.hessian(x)
    if tuple(hess.shape) != (batch, nx, nx):
        raise ConfigError(
            f"barriers[{i}] gives a Hessian of shape {tuple(hess.shape)}; expected "
            f"({batch}, {nx}, {nx})"
        )
    return hv, gh, hess


# ------------------------------------------------------------------------------- QP rows
def cbf_rows(
    model: ControlAffineModel,
    barriers: Barrier | Sequence[Barrier],
    x: Tensor,
    atoms: Tensor | None = None,
    *,
    alpha: float | Sequence[float] | Tensor = 1.0,
    relative_degree: int = 1,
    alpha2: float | Sequence[float] | Tensor | None = None,
    reduce: Reduce = "mean",
) -> tuple[Tensor, Tensor]:
    r"""CBF conditions as rows :math:`G u \le h` of the safety QP (see the module docstring).

    Parameters
    ----------
    model : ControlAffineModel
        The dynamics :math:`\dot x = f(x) + g(x)u + D(x)\omega`.
    barriers : Barrier or sequence of Barrier
        One row per barrier.
    x : Tensor, shape (B, n_x)
        States (float32 or float64; rows and outputs share its dtype and device).
    atoms : Tensor, shape (N, n_w) or (B, N, n_w), optional
        Uncertainty atoms :math:`\omega_i`, shared by all states or per state; ``None`` is the
        nominal model :math:`\omega = 0`.
    alpha : float or sequence of float
        :math:`\alpha` (relative degree 1) or :math:`\alpha_1` (relative degree 2), positive; one
        value for all barriers or one per barrier (linear class-K functions).
    relative_degree : {1, 2}
        1: :math:`\dot h + \alpha h \ge 0`. 2: the HOCBF :math:`\dot\psi_1 + \alpha_2\psi_1 \ge
        0`, :math:`\psi_1 = \dot h + \alpha_1 h`; requires :math:`L_g h = 0`.
    alpha2 : float or sequence of float, optional
        :math:`\alpha_2` (relative degree 2); defaults to ``alpha``.
    reduce : {"mean", "none"}
        ``"mean"``: average the rows over atoms (the averaged CBF condition of DESIGN §2).
        ``"none"``: one row per atom.

    Returns
    -------
    G : Tensor, shape (B, n_barriers, n_u) (or (B, N, n_barriers, n_u) for ``reduce="none"``)
    h : Tensor, shape (B, n_barriers) (or (B, N, n_barriers))
        The condition for barrier :math:`j` is ``G[..., j, :] @ u <= h[..., j]``;
        the *margin* ``h - G @ u`` is :math:`\dot h + \alpha h` (relative degree 1) or
        :math:`\dot\psi_1 + \alpha_2 \psi_1` (relative degree 2) at the control ``u``.

    Raises
    ------
    ConfigError
        Bad model, barriers, rates, relative degree, state shape/dtype/values, or
        ``relative_degree=2`` for a barrier with :math:`L_g h \ne 0`.
    DistributionError
        Atoms with the wrong shape, dtype or device, or non-finite atoms.
    """
    model = _check_model(model)
    items = _as_barriers(barriers)
    if isinstance(relative_degree, bool) or relative_degree not in (1, 2):
        raise ConfigError(f"relative_degree must be 1 or 2, got {relative_degree!r}")
    if reduce not in ("mean", "none"):
        raise ConfigError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    a1 = _check_rates("alpha", alpha, len(items))
    a2 = a1 if alpha2 is None else _check_rates("alpha2", alpha2, len(items))
    x = _check_state(model, x)
    w = _check_atoms(model, atoms, x)
    return _cbf_rows(model, items, x, w, a1, a2, relative_degree, reduce == "mean")


def _cbf_rows(
    model: ControlAffineModel,
    barriers: list[Barrier],
    x: Tensor,
    w: Tensor,
    a1: Tensor,
    a2: Tensor,
    relative_degree: int,
    mean: bool,
) -> tuple[Tensor, Tensor]:
    """:func:`cbf_rows` on validated input (``w`` of shape (B, N, n_w))."""
    keep = torch.is_grad_enabled() and (
        x.requires_grad or w.requires_grad or any(_tracks_grad(o) for o in (model, *barriers))
    )
    # The HOCBF needs a graph for J_f and J_D unless the model gives them in closed form;
    # otherwise rows need one only to be returned (a barrier whose gradient comes from autograd
    # records its own).
    analytic = relative_degree == 2 and isinstance(model, ModelJacobians)
    need_graph = keep or (relative_degree == 2 and not analytic)
    with torch.enable_grad() if need_graph else torch.no_grad():
        G, h = _rows(model, barriers, x, w, a1.to(x), a2.to(x), relative_degree, mean, analytic)
    if not keep:
        G, h = G.detach(), h.detach()
    return G, h


def _rows(
    model: ControlAffineModel,
    barriers: list[Barrier],
    x: Tensor,
    w: Tensor,
    a1: Tensor,
    a2: Tensor,
    relative_degree: int,
    mean: bool,
    analytic: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Rows averaged over atoms, (B, J, n_u) and (B, J), or per atom, (B, N, J, n_u), (B, N, J).

    The average is computed from the first two moments of the atoms, which is exact: with
    :math:`\bar\omega`, :math:`\delta_i = \omega_i - \bar\omega` and
    :math:`\Sigma = \frac1N\sum_i \delta_i\delta_i^\top`, everything but the HOCBF term
    :math:`\nabla\psi_{1,i}^\top F_i` is affine in :math:`\omega_i`; writing
    :math:`\nabla\psi_{1,i} = \overline{\nabla\psi_1} + K\delta_i` with
    :math:`K = \nabla^2 h\, D + J_{D}^\top` and :math:`F_i = \bar F + D\delta_i`, its mean is
    :math:`\overline{\nabla\psi_1}^\top \bar F + \langle K^\top D, \Sigma\rangle`.
    ``analytic``: the model is a :class:`~otsafe.safety.models.ModelJacobians` (checked once by
    the caller; the protocol check is slow).
    """
    xx = _leaf(x) if torch.is_grad_enabled() else x
    f, g, d = _model_terms(model, xx)
    if mean:
        w_mean = w.mean(1)  # (B, nw)
        drift = f + (d @ w_mean.unsqueeze(-1)).squeeze(-1)  # F(w_mean), (B, nx)
    else:
        drift = f.unsqueeze(1) + (w @ d.transpose(1, 2))  # F_i = f + D w_i, (B, N, nx)
    cov: Tensor | None = None
    if mean and relative_degree == 2 and w.shape[1] > 1:
        delta = w - w_mean.unsqueeze(1)
        cov = delta.transpose(1, 2) @ delta / w.shape[1]  # (B, nw, nw)
    g_rows, h_rows = [], []
    for j, barrier in enumerate(barriers):
        terms = _barrier_terms(barrier, xx, j, need_hessian=relative_degree == 2)
        hv, gh = terms[0], terms[1]
        lg = (gh.unsqueeze(1) @ g).squeeze(1)  # L_g h, (B, nu)
        # L_f h + L_D h w: (B,) for the mean atom, (B, N) per atom
        lf = (drift * gh).sum(-1) if mean else (drift @ gh.unsqueeze(-1)).squeeze(-1)
        hv_ = hv if mean else hv.unsqueeze(1)
        if relative_degree == 1:
            g_rows.append(-lg if mean else -lg.unsqueeze(1).expand(-1, w.shape[1], -1))
            h_rows.append(lf + a1[j] * hv_)
            continue
        _check_relative_degree(lg, gh, g, j)
        hess = terms[2]
        jf, jd = _jacobian_products(model, f, d, xx, gh, analytic)  # J_f' grad h, J_D' grad h
        psi1 = lf + a1[j] * hv_
        if mean:
            grad_psi = (
                (hess @ drift.unsqueeze(-1)).squeeze(-1)
                + jf
                + (w_mean.unsqueeze(1) @ jd).squeeze(1)
                + a1[j] * gh
            )  # (B, nx)
            rhs = (grad_psi * drift).sum(-1) + a2[j] * psi1
            if cov is not None:
                k_mat = hess @ d + jd.transpose(1, 2)  # (B, nx, nw)
                rhs = rhs + ((k_mat.transpose(1, 2) @ d) * cov).sum((1, 2))
            g_rows.append(-(grad_psi.unsqueeze(1) @ g).squeeze(1))
        else:
            grad_psi = (
                drift @ hess.transpose(1, 2) + jf.unsqueeze(1) + w @ jd + a1[j] * gh.unsqueeze(1)
            )  # (B, N, nx)
            rhs = (grad_psi * drift).sum(-1) + a2[j] * psi1
            g_rows.append(-(grad_psi @ g))
        h_rows.append(rhs)
    dim = 1 if mean else 2
    return torch.stack(g_rows, dim=dim), torch.stack(h_rows, dim=dim)


def _jacobian_products(
    model: ControlAffineModel, f: Tensor, d: Tensor, x: Tensor, gh: Tensor, analytic: bool
) -> tuple[Tensor, Tensor]:
    r""":math:`J_f^\top \nabla h` (B, n_x), every :math:`J_{D_{:k}}^\top \nabla h` (B, n_w, n_x)."""
    if not analytic:
        jf = _vjp(f, x, gh)
        jd = torch.stack([_vjp(d[:, :, k], x, gh) for k in range(d.shape[2])], dim=1)
        return jf, jd
    jf, jd = cast(ModelJacobians, model).f_vjp(x, gh), cast(ModelJacobians, model).D_vjp(x, gh)
    batch, nx, nw = x.shape[0], x.shape[1], d.shape[2]
    for name, t, shape in (("f_vjp", jf, (batch, nx)), ("D_vjp", jd, (batch, nw, nx))):
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ConfigError(f"model.{name}(x, v) must have shape {shape}, got {got}")
    return jf, jd


def _check_relative_degree(lg: Tensor, gh: Tensor, g: Tensor, j: int) -> None:
    eps = torch.finfo(lg.dtype).eps ** 0.5
    scale = 1.0 + gh.detach().abs().sum(-1, keepdim=True) * g.detach().abs().amax((1, 2)).unsqueeze(
        -1
    )
    if bool((lg.detach().abs() > eps * scale).any()):
        raise ConfigError(
            f"relative_degree=2 needs L_g h = 0, but barriers[{j}] has a control term in its "
            "first derivative (it has relative degree 1 for this model): use relative_degree=1"
        )


def cbf_margin(
    model: ControlAffineModel,
    barriers: Barrier | Sequence[Barrier],
    x: Tensor,
    u: Tensor,
    atoms: Tensor | None = None,
    *,
    alpha: float | Sequence[float] | Tensor = 1.0,
    relative_degree: int = 1,
    alpha2: float | Sequence[float] | Tensor | None = None,
) -> Tensor:
    r"""Per-atom CBF margins ``h - G u`` at the control ``u`` (:func:`cbf_rows` per atom).

    For relative degree 1 the margin of barrier :math:`j` and atom :math:`i` is
    :math:`L_f h + L_g h\, u + L_D h\, \omega_i + \alpha h` (:math:`\dot h + \alpha h` with that
    atom); for relative degree 2 it is :math:`\dot\psi_{1,i} + \alpha_2 \psi_{1,i}`. Negative
    means the condition is violated. Differentiable in ``u``, ``x`` and ``atoms`` (the
    worst-case search over atoms holds ``u`` fixed, DESIGN §2).

    Returns
    -------
    Tensor, shape (B, N, n_barriers)
    """
    G, h = cbf_rows(
        model,
        barriers,
        x,
        atoms,
        alpha=alpha,
        relative_degree=relative_degree,
        alpha2=alpha2,
        reduce="none",
    )
    if not isinstance(u, Tensor) or u.dtype != x.dtype or u.device != x.device:
        raise ConfigError("u must be a tensor with the dtype and device of x")
    if tuple(u.shape) != (x.shape[0], model.control_dim):
        raise ConfigError(
            f"u must have shape ({x.shape[0]}, {model.control_dim}), got {tuple(u.shape)}"
        )
    return h - torch.einsum("bnju,bu->bnj", G, u)
