r"""Barrier functions :math:`h(x)` with safe set :math:`\{x : h(x) \ge 0\}`, batched in torch.

Every :class:`Barrier` evaluates :math:`h`, its gradient and its Hessian for a batch of states;
the geometric barriers (:class:`CircleBarrier`, :class:`HalfSpaceBarrier`,
:class:`BoxObstacleBarrier`, :func:`box_barriers`) act on a *position* :math:`p = P(x)`, chosen
by coordinate indices (analytic derivatives) or by any differentiable map (derivatives by
autograd). :class:`FunctionBarrier` wraps a user function; missing derivatives come from autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

import torch
from torch import Tensor

from otsafe.errors import ConfigError
from otsafe.safety._autograd import autograd_grad, autograd_hessian

__all__ = [
    "Barrier",
    "BoxObstacleBarrier",
    "CircleBarrier",
    "FunctionBarrier",
    "HalfSpaceBarrier",
    "PositionMap",
    "SphereBarrier",
    "box_barriers",
]

PositionMap: TypeAlias = "Sequence[int] | Callable[[Tensor], Tensor] | None"
r"""How a geometric barrier reads its position from the state: ``None`` (the whole state), a
sequence of state indices, or a differentiable map ``x (B, n_x) -> p (B, d)``.

A map may also carry its Jacobian as a method ``jacobian(x) -> (B, d, n_x)``; the barrier's
gradient is then the chain rule :math:`\nabla h = J_P^\top \nabla_p \phi` in closed form
(no autograd), while its Hessian still comes from autograd."""


# ---------------------------------------------------------------------------------- barriers
def _tracks_grad(obj: object) -> bool:
    """Whether ``obj`` has trainable parameters (it is a module, or a barrier that says so)."""
    if isinstance(obj, Barrier):
        return obj.tracks_grad()
    if isinstance(obj, torch.nn.Module):
        return any(p.requires_grad for p in obj.parameters())
    return False


class Barrier:
    r"""A barrier function :math:`h(x)`, safe where :math:`h(x) \ge 0`.

    Subclasses implement :meth:`h`; :meth:`grad` and :meth:`hessian` default to autograd and are
    overridden where closed forms exist (then :attr:`analytic` is true). All methods take a batch
    of states ``x`` of shape ``(B, n_x)``; row ``b`` of the output depends on ``x[b]`` only.

    :func:`cbf_rows` returns rows with an autograd graph when the state or the atoms require
    grad, or when :meth:`tracks_grad` is true (a barrier with trainable parameters, e.g. a
    subclass that is also a :class:`torch.nn.Module`); otherwise the rows are detached.
    """

    def tracks_grad(self) -> bool:
        """Whether the barrier has parameters that require grad (modules are detected)."""
        if isinstance(self, torch.nn.Module):
            return any(p.requires_grad for p in self.parameters())
        return False

    @property
    def analytic(self) -> bool:
        """Whether :meth:`grad` and :meth:`hessian` are closed-form (else autograd)."""
        return False

    def h(self, x: Tensor) -> Tensor:
        """Barrier values, shape ``(B,)``."""
        raise NotImplementedError

    def grad(self, x: Tensor) -> Tensor:
        r""":math:`\nabla h(x)`, shape ``(B, n_x)`` (autograd unless overridden)."""
        return autograd_grad(self.h, x)

    def hessian(self, x: Tensor) -> Tensor:
        r""":math:`\nabla^2 h(x)`, shape ``(B, n_x, n_x)`` (autograd unless overridden)."""
        return autograd_hessian(self.h, x)

    def __call__(self, x: Tensor) -> Tensor:
        return self.h(x)


class FunctionBarrier(Barrier):
    r"""A barrier given by functions of the full state.

    Parameters
    ----------
    fn : callable
        ``x (B, n_x) -> h (B,)``, differentiable by autograd if ``grad``/``hessian`` are missing.
    grad, hessian : callable, optional
        Closed forms ``x -> (B, n_x)`` and ``x -> (B, n_x, n_x)``; autograd where not given.
    trainable : bool, optional
        Whether ``fn`` has parameters to train through the rows (see :meth:`tracks_grad`);
        ``None`` detects :class:`torch.nn.Module` functions only (not closures over modules).
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        grad: Callable[[Tensor], Tensor] | None = None,
        hessian: Callable[[Tensor], Tensor] | None = None,
        trainable: bool | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"fn must be callable, got {type(fn).__name__}")
        self._fn, self._grad, self._hess = fn, grad, hessian
        self._trainable = trainable

    @property
    def analytic(self) -> bool:
        return self._grad is not None and self._hess is not None

    def tracks_grad(self) -> bool:
        """``trainable`` if given, else whether ``fn``, ``grad`` or ``hessian`` is a module with
        parameters that require grad."""
        if self._trainable is not None:
            return self._trainable
        return any(
            isinstance(f, torch.nn.Module) and any(p.requires_grad for p in f.parameters())
            for f in (self._fn, self._grad, self._hess)
        )

    def h(self, x: Tensor) -> Tensor:
        return self._fn(x)

    def grad(self, x: Tensor) -> Tensor:
        return super().grad(x) if self._grad is None else self._grad(x)

    def hessian(self, x: Tensor) -> Tensor:
        return super().hessian(x) if self._hess is None else self._hess(x)


def _vector(name: str, value: Sequence[float] | Tensor | float, dim: int | None = None) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).detach().clone()
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1 or t.numel() == 0 or (dim is not None and t.numel() != dim):
        want = "a non-empty vector" if dim is None else f"a vector of length {dim}"
        raise ConfigError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    return t


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


class _PositionBarrier(Barrier):
    """A barrier :math:`h(x) = \\phi(P(x))` of a position ``p = P(x)`` (see :data:`PositionMap`)."""

    def __init__(self, position: PositionMap, dim: int) -> None:
        self.dim = dim
        self._index: tuple[int, ...] | None = None
        self._slice: slice | None = None
        self._map: Callable[[Tensor], Tensor] | None = None
        if position is None:
            pass
        elif callable(position):
            self._map = position
        else:
            try:
                index = tuple(int(i) for i in position)
            except (TypeError, ValueError):
                raise ConfigError(
                    "position must be None, a sequence of state indices or a callable"
                ) from None
            if len(index) != dim or len(set(index)) != dim or min(index) < 0:
                raise ConfigError(
                    f"position must list {dim} distinct non-negative state indices, got {index}"
                )
            self._index = index
            # contiguous indices are read as a slice (a view) and embedded by padding
            if index == tuple(range(index[0], index[0] + dim)):
                self._slice = slice(index[0], index[0] + dim)

    @property
    def analytic(self) -> bool:
        return self._map is None

    def check_state_dim(self, state_dim: int) -> None:
        """Raise :class:`ConfigError` if the position cannot be read from states of that size.

        Position maps (callables) are not checked.
        """
        if self._index is not None and max(self._index) >= state_dim:
            raise ConfigError(
                f"position indices {self._index} exceed the state dimension {state_dim}"
            )
        if self._index is None and self._map is None and state_dim != self.dim:
            raise ConfigError(
                f"{type(self).__name__} needs a {self.dim}-D position, but the state has "
                f"dimension {state_dim}: pass position="
            )

    def position(self, x: Tensor) -> Tensor:
        """The position :math:`p = P(x)`, shape ``(B, d)``."""
        if self._map is not None:
            p = self._map(x)
        elif self._index is not None:
            if max(self._index) >= x.shape[1]:
                raise ConfigError(
                    f"position indices {self._index} exceed the state dimension {x.shape[1]}"
                )
            p = x[:, self._slice] if self._slice is not None else x[:, list(self._index)]
        else:
            p = x
        if p.dim() != 2 or p.shape[1] != self.dim:
            raise ConfigError(
                f"{type(self).__name__} needs a {self.dim}-D position, but the position map "
                f"gives shape {tuple(p.shape)}"
            )
        return p

    # closed forms in position coordinates
    def _value(self, p: Tensor) -> Tensor:
        raise NotImplementedError

    def _grad_p(self, p: Tensor) -> Tensor:
        raise NotImplementedError

    def _hess_p(self, p: Tensor) -> Tensor:
        raise NotImplementedError

    def h(self, x: Tensor) -> Tensor:
        return self._value(self.position(x))

    def grad(self, x: Tensor) -> Tensor:
        if self._map is not None:
            jacobian = getattr(self._map, "jacobian", None)
            if jacobian is None:
                return super().grad(x)
            jac = jacobian(x)
            expected = (x.shape[0], self.dim, x.shape[1])
            if not isinstance(jac, Tensor) or tuple(jac.shape) != expected:
                got = tuple(jac.shape) if isinstance(jac, Tensor) else type(jac).__name__
                raise ConfigError(
                    f"the position map's jacobian(x) must have shape {expected}, got {got}"
                )
            return (self._grad_p(self.position(x)).unsqueeze(1) @ jac).squeeze(1)
        gp = self._grad_p(self.position(x))
        if self._index is None:
            return gp
        if self._slice is not None:
            return torch.nn.functional.pad(gp, (self._slice.start, x.shape[1] - self._slice.stop))
        out = torch.zeros(x.shape[0], x.shape[1], dtype=gp.dtype, device=gp.device)
        return out.index_copy(1, self._idx(x), gp)

    def hessian(self, x: Tensor) -> Tensor:
        if self._map is not None:
            return super().hessian(x)
        hp = self._hess_p(self.position(x))
        if self._index is None:
            return hp
        if self._slice is not None:
            lo, hi = self._slice.start, x.shape[1] - self._slice.stop
            return torch.nn.functional.pad(hp, (lo, hi, lo, hi))
        n = x.shape[1]
        idx = self._idx(x)
        rows = torch.zeros(x.shape[0], self.dim, n, dtype=hp.dtype, device=hp.device)
        rows = rows.index_copy(2, idx, hp)
        out = torch.zeros(x.shape[0], n, n, dtype=hp.dtype, device=hp.device)
        return out.index_copy(1, idx, rows)

    def _idx(self, x: Tensor) -> Tensor:
        assert self._index is not None
        return torch.tensor(self._index, dtype=torch.long, device=x.device)


class CircleBarrier(_PositionBarrier):
    r"""Keep the position outside a ball: safe set :math:`\|p - c\| \ge r` (circle or sphere).

    Parameters
    ----------
    center : array-like, shape (d,)
        Centre :math:`c` of the obstacle.
    radius : float
        Radius :math:`r > 0` (inflate it by the robot's radius and any margin).
    position : PositionMap
        Where the position lies in the state (``None``: the state is the position).
    form : {"squared", "distance"}
        ``"squared"`` (default): :math:`h = \|p - c\|^2 - r^2`, with
        :math:`\nabla_p h = 2(p - c)`, :math:`\nabla_p^2 h = 2I`. It is a polynomial, smooth
        everywhere (also at the centre), with a constant Hessian for the HOCBF, and convex, so
        for a single integrator :math:`h(p + \Delta t\, u) \ge (1 - \alpha \Delta t) h(p)`
        whenever the CBF row holds: the filter is safe in discrete time for
        :math:`\alpha \Delta t \le 1`. Its scale grows quadratically with distance.
        ``"distance"``: the signed distance :math:`h = \|p - c\| - r`, with
        :math:`\nabla_p h = n = (p - c)/\|p - c\|`,
        :math:`\nabla_p^2 h = (I - n n^\top)/\|p - c\|`: :math:`\alpha` then has the same
        meaning for every obstacle size, but :math:`h` is not differentiable at the centre
        (inside the obstacle; the norm is clamped there).
    """

    def __init__(
        self,
        center: Sequence[float] | Tensor,
        radius: float,
        position: PositionMap = None,
        form: Literal["squared", "distance"] = "squared",
    ) -> None:
        c = _vector("center", center)
        if not bool(torch.isfinite(c).all()):
            raise ConfigError("center has NaN or infinite entries")
        super().__init__(position, c.numel())
        self.center = c
        self.radius = _positive("radius", radius)
        if form not in ("squared", "distance"):
            raise ConfigError(f"form must be 'squared' or 'distance', got {form!r}")
        self.form = form

    def _offset(self, p: Tensor) -> Tensor:
        return p - self.center.to(dtype=p.dtype, device=p.device)

    def _norm(self, d: Tensor) -> Tensor:
        tiny = torch.finfo(d.dtype).tiny ** 0.5
        return d.square().sum(-1).clamp(min=tiny).sqrt()

    def _value(self, p: Tensor) -> Tensor:
        d = self._offset(p)
        if self.form == "squared":
            return d.square().sum(-1) - self.radius**2
        return self._norm(d) - self.radius

    def _grad_p(self, p: Tensor) -> Tensor:
        d = self._offset(p)
        if self.form == "squared":
            return 2.0 * d
        return d / self._norm(d).unsqueeze(-1)

    def _hess_p(self, p: Tensor) -> Tensor:
        d = self._offset(p)
        eye = torch.eye(self.dim, dtype=p.dtype, device=p.device)
        if self.form == "squared":
            return 2.0 * eye.expand(p.shape[0], self.dim, self.dim)
        r = self._norm(d)
        n = d / r.unsqueeze(-1)
        return (eye - n.unsqueeze(-1) * n.unsqueeze(-2)) / r[:, None, None]

    def __repr__(self) -> str:
        return (
            f"CircleBarrier(center={self.center.tolist()}, radius={self.radius}, "
            f"form={self.form!r})"
        )


SphereBarrier = CircleBarrier
"""Alias of :class:`CircleBarrier` (a ball in any dimension)."""


class HalfSpaceBarrier(_PositionBarrier):
    r"""Keep the position in a half-space :math:`n^\top p \le d`.

    :math:`h = (d - n^\top p)/\|n\|` is the signed distance to the boundary plane (positive
    inside); :math:`\nabla_p h = -n/\|n\|`, :math:`\nabla_p^2 h = 0`.

    Parameters
    ----------
    normal : array-like, shape (k,)
        Outward normal :math:`n \ne 0`.
    offset : float
        :math:`d`.
    position : PositionMap
        Where the position lies in the state.
    """

    def __init__(
        self, normal: Sequence[float] | Tensor, offset: float, position: PositionMap = None
    ) -> None:
        nv = _vector("normal", normal)
        norm = float(nv.norm())
        if not (math.isfinite(norm) and norm > 0):
            raise ConfigError("normal must be finite and non-zero")
        if isinstance(offset, bool) or not isinstance(offset, (int, float)):
            raise ConfigError(f"offset must be a number, got {type(offset).__name__}")
        if not math.isfinite(offset):
            raise ConfigError(f"offset must be finite, got {offset!r}")
        super().__init__(position, nv.numel())
        self.normal = nv / norm
        self.offset = float(offset) / norm

    def _value(self, p: Tensor) -> Tensor:
        return self.offset - p @ self.normal.to(dtype=p.dtype, device=p.device)

    def _grad_p(self, p: Tensor) -> Tensor:
        return (-self.normal.to(dtype=p.dtype, device=p.device)).expand(p.shape[0], self.dim)

    def _hess_p(self, p: Tensor) -> Tensor:
        return torch.zeros(p.shape[0], self.dim, self.dim, dtype=p.dtype, device=p.device)

    def __repr__(self) -> str:
        return f"HalfSpaceBarrier(normal={self.normal.tolist()}, offset={self.offset})"


def box_barriers(
    low: Sequence[float] | Tensor,
    high: Sequence[float] | Tensor,
    position: PositionMap = None,
) -> list[HalfSpaceBarrier]:
    r"""Keep the position *inside* the box :math:`low \le p \le high`: one half-space per face.

    Returns ``2 d`` :class:`HalfSpaceBarrier` (fewer when some bounds are infinite), each one row
    of the safety QP; :math:`h` of each is the distance to its face.
    """
    lo, hi = _vector("low", low), _vector("high", high)
    if lo.numel() != hi.numel():
        raise ConfigError(f"low and high have lengths {lo.numel()} and {hi.numel()}")
    if bool(torch.isnan(lo).any() | torch.isnan(hi).any()):
        raise ConfigError("low and high must not be NaN")
    if not bool((lo < hi).all()):
        raise ConfigError("the box must have low < high in every coordinate")
    d = lo.numel()
    out: list[HalfSpaceBarrier] = []
    for k in range(d):
        e = torch.zeros(d, dtype=torch.float64)
        e[k] = 1.0
        if math.isfinite(float(hi[k])):
            out.append(HalfSpaceBarrier(e, float(hi[k]), position))
        if math.isfinite(float(lo[k])):
            out.append(HalfSpaceBarrier(-e, -float(lo[k]), position))
    if not out:
        raise ConfigError("the box has no finite face")
    return out


class BoxObstacleBarrier(_PositionBarrier):
    r"""Keep the position *outside* an axis-aligned box obstacle, smoothly (superellipsoid).

    With centre :math:`c = (low + high)/2`, half-widths :math:`a = (high - low)/2` and an even
    order :math:`q`, the barrier is

    .. math:: h(p) = \|z\|_q - 1, \qquad z_k = \frac{p_k - c_k}{d^{1/q} a_k},

    one smooth row per obstacle. The superellipsoid :math:`\|z\|_q \le 1` *contains* the box
    (its corners lie on it; the faces are inflated by the factor :math:`d^{1/q}`, 9% in 2-D for
    :math:`q = 8`), so :math:`h \ge 0` implies being outside the box. :math:`h` is homogeneous of
    degree one in :math:`p - c` (it grows like a distance, in units of the half-widths).
    Derivatives: with :math:`N = \|z\|_q`, :math:`\partial N/\partial z_k = (z_k/N)^{q-1}` and
    :math:`\partial^2 N/\partial z_k \partial z_l = \frac{q-1}{N}\,[\delta_{kl}(z_k/N)^{q-2} -
    (z_k/N)^{q-1}(z_l/N)^{q-1}]`, scaled by :math:`1/(d^{1/q} a_k)` per coordinate.

    Parameters
    ----------
    low, high : array-like, shape (d,)
        Corners of the box (finite, ``low < high``).
    position : PositionMap
        Where the position lies in the state.
    order : int
        Even :math:`q \ge 2` (default 8): larger is tighter around the box but stiffer.
    """

    def __init__(
        self,
        low: Sequence[float] | Tensor,
        high: Sequence[float] | Tensor,
        position: PositionMap = None,
        order: int = 8,
    ) -> None:
        lo, hi = _vector("low", low), _vector("high", high)
        if lo.numel() != hi.numel():
            raise ConfigError(f"low and high have lengths {lo.numel()} and {hi.numel()}")
        if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
            raise ConfigError("a box obstacle needs finite low and high")
        if not bool((lo < hi).all()):
            raise ConfigError("the box must have low < high in every coordinate")
        if isinstance(order, bool) or not isinstance(order, int) or order < 2 or order % 2:
            raise ConfigError(f"order must be an even integer >= 2, got {order!r}")
        super().__init__(position, lo.numel())
        self.low, self.high, self.order = lo, hi, order
        self.center = (lo + hi) / 2
        self.scale = (hi - lo) / 2 * float(self.dim) ** (1.0 / order)

    def _z(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.center.to(dtype=p.dtype, device=p.device)
        s = self.scale.to(dtype=p.dtype, device=p.device)
        z = (p - c) / s
        tiny = torch.finfo(p.dtype).tiny ** 0.5
        n = z.pow(self.order).sum(-1).pow(1.0 / self.order).clamp(min=tiny)
        return z, n, s

    def _value(self, p: Tensor) -> Tensor:
        _, n, _ = self._z(p)
        return n - 1.0

    def _grad_p(self, p: Tensor) -> Tensor:
        z, n, s = self._z(p)
        return (z / n.unsqueeze(-1)).pow(self.order - 1) / s

    def _hess_p(self, p: Tensor) -> Tensor:
        z, n, s = self._z(p)
        q = self.order
        r = z / n.unsqueeze(-1)
        g = r.pow(q - 1)
        hz = torch.diag_embed(r.pow(q - 2)) - g.unsqueeze(-1) * g.unsqueeze(-2)
        hz = hz * ((q - 1) / n)[:, None, None]
        return hz / (s.unsqueeze(-1) * s.unsqueeze(-2))

    def __repr__(self) -> str:
        return (
            f"BoxObstacleBarrier(low={self.low.tolist()}, high={self.high.tolist()}, "
            f"order={self.order})"
        )
