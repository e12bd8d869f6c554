r"""A Dubins car (unicycle) among circular obstacles: ``otsafe/DubinsCar-v0`` (DESIGN §2).

Dynamics
--------
State :math:`x = (p_x, p_y, \theta)`, control :math:`u = (v, r)` (speed and turn rate, bounded by
``v_min <= v <= v_max`` and :math:`|r| \le` ``turn_rate_max``), uncertainty
:math:`\omega = (\omega_1, \omega_2)` an additive planar drift (m/s):

.. math::

    \dot p_x = v\cos\theta + \omega_1, \qquad \dot p_y = v\sin\theta + \omega_2, \qquad
    \dot\theta = r,

i.e. :math:`f(x) = 0`, :math:`g(x) = \begin{pmatrix}\cos\theta & 0\\ \sin\theta & 0\\ 0 & 1
\end{pmatrix}`, :math:`D(x) = \begin{pmatrix} I_2 \\ 0 \end{pmatrix}`
(:class:`DubinsModel`, batched in torch: the same model the safety layer uses).

**Discretisation.** Each step holds :math:`u` and the sampled :math:`\omega` constant for ``dt``
(zero-order hold) and integrates *exactly*: with :math:`a = r\,dt/2`,

.. math::

    \theta' = \theta + r\,dt, \qquad
    p' = p + v\,dt\,\operatorname{sinc}(a)\,(\cos(\theta + a), \sin(\theta + a)) + \omega\,dt,

where :math:`\operatorname{sinc}(a) = \sin a / a` (1 at :math:`a = 0`, so straight driving is the
same formula), which is the closed-form solution of the ODE (the arc of radius :math:`v/r` plus
the drift); :math:`\theta'` is wrapped to :math:`[-\pi, \pi)`.

Observation
-----------
A ``Box`` of 9 float64 numbers (:attr:`DubinsCar.observation_names`):
``[p_x, p_y, cos θ, sin θ, Δx, Δy, Δ_fwd, Δ_left, ‖Δ‖]`` with :math:`\Delta = goal - p` (world
frame), :math:`\Delta_{fwd} = \Delta^\top(\cos\theta, \sin\theta)` and
:math:`\Delta_{left} = \Delta^\top(-\sin\theta, \cos\theta)` (the goal in the car's frame).
Positions are unbounded (the space's bounds are infinite for them).

Reward
------
With :math:`d_t = \|goal - p_t\|`, per step

.. math::

    r_t = w_p\,(d_{t-1} - d_t) - dt \sum_i c_i u_i^2 + B\,[d_t \le r_{goal}]
          - P\,[\text{violation}],

``progress_weight`` :math:`w_p`, ``control_cost`` :math:`c` (a number or one per control),
``goal_bonus`` :math:`B`, ``violation_penalty`` :math:`P` (default 0: safety is left to the safety
layer). The episode terminates when the goal region is reached, and, with
``terminate_on_violation=True``, at the first violation (default False: the episode goes on,
so violation steps can be counted); it is truncated after ``max_steps`` steps.

Violations
----------
After each step the clearances :math:`h_j = \|p - c_j\| - R_j` (signed distances to the obstacle
boundaries, in metres) are recorded in ``info["barriers"]``, their minimum in
``info["min_barrier"]`` (``inf`` without obstacles) and ``info["violation"] = min_j h_j < 0``.
They are measured at the step times only.

Look-ahead barriers
-------------------
A barrier on the position alone has :math:`L_g h = (\nabla_p h^\top(\cos\theta, \sin\theta), 0)`:
the turn rate never enters :math:`\dot h`, and when the heading is tangent to the obstacle the
row loses its control coefficient (DESIGN §2). :meth:`DubinsCar.barriers` instead keeps the
*look-ahead point* :math:`q = p + \ell(\cos\theta, \sin\theta)` outside the obstacle *inflated by*
:math:`\ell`, :math:`\|q - c\| \ge R + \ell`. Then

.. math:: \dot q = v(\cos\theta, \sin\theta) + \ell r(-\sin\theta, \cos\theta) + \omega,

so :math:`L_g h = \nabla_q h^\top [(\cos\theta, \sin\theta),\ \ell(-\sin\theta, \cos\theta)]`,
which vanishes only if :math:`\nabla_q h = 0` (at the centre, deep inside the obstacle). And the
car stays safe: by the triangle inequality
:math:`\|p - c\| \ge \|q - c\| - \|q - p\| = \|q - c\| - \ell \ge R`. The price is conservatism of
at most :math:`2\ell` (the car keeps a clearance of up to :math:`2\ell` when heading straight at
an obstacle and none when heading away).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from otsafe.envs.uncertainty import Disturbance, Gaussian, disturbance_from_config
from otsafe.errors import ConfigError, OtsafeError
from otsafe.safety.barriers import CircleBarrier

__all__ = ["DEFAULT_OBSTACLES", "DubinsCar", "DubinsModel", "LookAheadPoint"]

FloatArray = NDArray[np.float64]
ObstacleSpec = Sequence[Any] | Mapping[str, Any]
"""One obstacle: ``(center, radius)`` or ``{"center": ..., "radius": ...}``."""

DEFAULT_OBSTACLES: tuple[tuple[tuple[float, float], float], ...] = (
    ((3.0, 0.25), 0.8),
    ((6.0, -0.3), 0.9),
    ((8.3, 0.9), 0.6),
)
"""The car's default layout: start (0, 0) heading east, goal (10, 0); the first two circles
cross the straight line start -> goal, the third one guards the way in above it."""


# ------------------------------------------------------------------------------ validation
def _real(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return out


def _positive(name: str, value: object) -> float:
    out = _real(name, value)
    if not out > 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return out


def _nonneg(name: str, value: object) -> float:
    out = _real(name, value)
    if not out >= 0:
        raise ConfigError(f"{name} must be non-negative, got {value!r}")
    return out


def _vector(name: str, value: object, sizes: Sequence[int]) -> FloatArray:
    """A finite float64 vector whose length is one of ``sizes``."""
    if isinstance(value, (str, bytes, Mapping)):
        raise ConfigError(f"{name} must be a vector of numbers, got {value!r}")
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a vector of numbers, got {value!r}") from None
    if arr.ndim != 1 or arr.size not in sizes:
        want = " or ".join(str(s) for s in sizes)
        raise ConfigError(f"{name} must be a vector of length {want}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} has NaN or infinite entries: {arr.tolist()}")
    return arr


def _per_control(name: str, value: object, n: int) -> FloatArray:
    """A non-negative number or one per control, as an (n,) vector."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
        return np.full(n, _nonneg(name, value))
    arr = _vector(name, value, (n,))
    if not np.all(arr >= 0):
        raise ConfigError(f"{name} must be non-negative, got {arr.tolist()}")
    return arr


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _obstacles(value: object, dim: int) -> tuple[FloatArray, FloatArray]:
    """Obstacle centres (K, dim) and radii (K,) from ``[(center, radius), ...]``."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ConfigError(
            f"obstacles must be a list of (center, radius) pairs, got {type(value).__name__}"
        )
    centers = np.zeros((len(value), dim))
    radii = np.zeros(len(value))
    for k, item in enumerate(value):
        where = f"obstacles[{k}]"
        if isinstance(item, Mapping):
            extra = set(item) - {"center", "radius"}
            if extra or "center" not in item or "radius" not in item:
                raise ConfigError(f"{where} must have exactly the keys 'center' and 'radius'")
            center, radius = item["center"], item["radius"]
        elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and len(item) == 2:
            center, radius = item
        else:
            raise ConfigError(f"{where} must be a (center, radius) pair, got {item!r}")
        centers[k] = _vector(f"{where} center", center, (dim,))
        radii[k] = _positive(f"{where} radius", radius)
    return centers, radii


def _check_outside(
    name: str, point: FloatArray, centers: FloatArray, radii: FloatArray, inflate: float, how: str
) -> None:
    """Raise if ``point`` lies in an obstacle inflated by ``inflate`` (boundary included)."""
    if centers.shape[0] == 0:
        return
    dist = np.linalg.norm(point[None, :] - centers, axis=1)
    inside = np.flatnonzero(dist <= radii + inflate)
    if inside.size:
        k = int(inside[0])
        raise ConfigError(
            f"obstacles[{k}] (center {centers[k].tolist()}, radius {radii[k]:g}{how}) contains "
            f"the {name} {point.tolist()}"
        )


def _as_disturbance(value: object, dim: int, default: Disturbance) -> Disturbance:
    if value is None:
        return default.with_dim(dim)
    if not isinstance(value, (Disturbance, Mapping)):
        raise ConfigError(
            "disturbance must be a Disturbance (otsafe.envs.uncertainty) or a mapping, got "
            f"{type(value).__name__}"
        )
    model = disturbance_from_config(value)
    declared = model.declared_dim
    if declared is not None and declared != dim:
        raise ConfigError(
            f"disturbance has dimension {declared}, but this environment's uncertainty has "
            f"dimension {dim}"
        )
    return model.with_dim(dim)


_COLOURS = {
    "free": (250, 250, 250),
    "inflated": (215, 215, 225),
    "obstacle": (90, 90, 105),
    "goal": (240, 190, 40),
    "start": (120, 200, 120),
    "agent": (40, 90, 220),
    "heading": (200, 40, 40),
}


# --------------------------------------------------------------------------- shared base
class _NavigationEnv(gym.Env[NDArray[Any], NDArray[Any]]):
    """Shared machinery of the obstacle-navigation environments (not a public class).

    Subclasses set the spaces, the state, :attr:`control_affine_model` and implement
    :meth:`_integrate`, :meth:`_observe`, :meth:`_position` and :meth:`_check_state`.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012

    pos_dim: int
    state_dim: int
    control_dim: int
    disturbance_dim: int
    observation_names: tuple[str, ...]
    observation_space: gym.spaces.Box[Any]
    action_space: gym.spaces.Box[Any]

    def _setup(
        self,
        *,
        obstacles: object,
        default_obstacles: object,
        goal: object,
        goal_radius: object,
        max_steps: object,
        dt: object,
        disturbance: object,
        default_disturbance: Disturbance,
        progress_weight: object,
        goal_bonus: object,
        control_cost: object,
        violation_penalty: object,
        terminate_on_violation: object,
        render_mode: object,
        render_px: object,
    ) -> None:
        d = self.pos_dim
        self.obstacle_centers, self.obstacle_radii = _obstacles(
            default_obstacles if obstacles is None else obstacles, d
        )
        self.goal = _vector("goal", goal, (d,))
        self.goal_radius = _positive("goal_radius", goal_radius)
        if (
            isinstance(max_steps, (bool, np.bool_))
            or not isinstance(max_steps, (int, np.integer))
            or max_steps < 1
        ):
            raise ConfigError(f"max_steps must be a positive integer, got {max_steps!r}")
        self.max_steps = int(max_steps)
        self.dt = _positive("dt", dt)
        self.progress_weight = _nonneg("progress_weight", progress_weight)
        self.goal_bonus = _nonneg("goal_bonus", goal_bonus)
        self.control_cost = _per_control("control_cost", control_cost, self.control_dim)
        self.violation_penalty = _nonneg("violation_penalty", violation_penalty)
        self.terminate_on_violation = _flag("terminate_on_violation", terminate_on_violation)
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.render_mode: str | None = render_mode
        if (
            isinstance(render_px, (bool, np.bool_))
            or not isinstance(render_px, (int, np.integer))
            or not 16 <= render_px <= 4096
        ):
            raise ConfigError(f"render_px must be an integer in [16, 4096], got {render_px!r}")
        self.render_px = int(render_px)
        self._disturbance = _as_disturbance(disturbance, self.disturbance_dim, default_disturbance)
        self._canvas: NDArray[np.uint8] | None = None
        self._steps = 0
        self._last_w = np.zeros(self.disturbance_dim)

    # ----------------------------------------------------------------------- to implement
    def _integrate(self, x: FloatArray, u: FloatArray, w: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _observe(self, x: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _position(self, x: FloatArray) -> FloatArray:
        return x[: self.pos_dim]

    def _heading(self, x: FloatArray) -> float | None:
        return None

    @property
    def _start_state(self) -> FloatArray:
        raise NotImplementedError

    # ------------------------------------------------------------------------- public API
    @property
    def obstacles(self) -> list[tuple[tuple[float, ...], float]]:
        """The obstacles as ``[(center, radius), ...]`` (the constructor's format)."""
        return [
            (tuple(float(v) for v in c), float(r))
            for c, r in zip(self.obstacle_centers, self.obstacle_radii, strict=True)
        ]

    @property
    def disturbance(self) -> Disturbance:
        r"""The disturbance model :math:`\omega` is drawn from at every step."""
        return self._disturbance

    @disturbance.setter
    def disturbance(self, model: Disturbance | Mapping[str, Any]) -> None:
        self.set_disturbance(model)

    def set_disturbance(self, model: Disturbance | Mapping[str, Any]) -> None:
        """Replace the disturbance model (e.g. by a shifted one for evaluation).

        The model is bound to this environment's uncertainty dimension; it takes effect at the
        next step and keeps drawing from ``self.np_random``.

        Raises
        ------
        ConfigError
            If ``model`` is not a disturbance model or has another dimension.
        """
        if model is None:
            raise ConfigError("set_disturbance needs a disturbance model, got None")
        self._disturbance = _as_disturbance(model, self.disturbance_dim, self._disturbance)

    def safety_state(self) -> FloatArray:
        """The current state :math:`x` (a float64 copy, shape ``(state_dim,)``)."""
        return np.array(self._x, dtype=np.float64)

    @property
    def obs_dim(self) -> int:
        """Size of the observation vector."""
        return int(self.observation_space.shape[0])

    @property
    def action_dim(self) -> int:
        """Size of the action (= control) vector."""
        return int(self.action_space.shape[0])

    @property
    def action_low(self) -> FloatArray:
        """Lower action bounds, shape ``(action_dim,)``."""
        return np.array(self.action_space.low, dtype=np.float64)

    @property
    def action_high(self) -> FloatArray:
        """Upper action bounds, shape ``(action_dim,)``."""
        return np.array(self.action_space.high, dtype=np.float64)

    @property
    def steps(self) -> int:
        """Steps taken in the current episode."""
        return self._steps

    def clearances(self, x: ArrayLike | None = None) -> FloatArray:
        r"""Signed distances :math:`\|p - c_j\| - R_j` to the obstacles, shape ``(K,)``.

        Of the current state, or of ``x`` (a state); negative inside an obstacle.
        """
        state = self._x if x is None else self._check_state(x, "x")
        p = self._position(state)
        out: FloatArray = np.linalg.norm(p[None, :] - self.obstacle_centers, axis=1)
        return out - self.obstacle_radii

    def goal_distance(self, x: ArrayLike | None = None) -> float:
        """Distance from the position to the goal (of the current state or of ``x``)."""
        state = self._x if x is None else self._check_state(x, "x")
        return float(np.linalg.norm(self.goal - self._position(state)))

    # ----------------------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[FloatArray, dict[str, Any]]:
        """Start an episode at the start state.

        ``options={"state": x}`` starts from the state ``x`` instead (any finite state, e.g.
        for tests and rollouts). ``seed`` seeds ``self.np_random``, which draws the
        disturbances.
        """
        super().reset(seed=seed)
        state = self._start_state
        if options is not None:
            if not isinstance(options, Mapping) or set(options) - {"state"}:
                raise ConfigError(f"options may only hold 'state', got {options!r}")
            if "state" in options:
                state = self._check_state(options["state"], "options['state']")
        self._x = np.array(state, dtype=np.float64)
        self._steps = 0
        self._last_w = np.zeros(self.disturbance_dim)
        return self._observe(self._x), self._info(np.zeros(self.control_dim), False)

    def step(
        self, action: ArrayLike
    ) -> tuple[FloatArray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Apply ``action`` (clipped to the bounds) for ``dt`` with one sampled disturbance."""
        u = self._action(action)
        w = self._disturbance.sample(self.np_random, 1)[0]
        d_prev = self.goal_distance()
        self._x = self._integrate(self._x, u, w)
        self._steps += 1
        self._last_w = w
        d_new = self.goal_distance()
        reached = d_new <= self.goal_radius
        clear = self.clearances()
        violation = bool(np.any(clear < 0))
        reward = (
            self.progress_weight * (d_prev - d_new)
            - self.dt * float(self.control_cost @ (u * u))
            + (self.goal_bonus if reached else 0.0)
            - (self.violation_penalty if violation else 0.0)
        )
        terminated = bool(reached or (violation and self.terminate_on_violation))
        truncated = not terminated and self._steps >= self.max_steps
        info = self._info(u, reached, clear)
        return self._observe(self._x), float(reward), terminated, truncated, info

    def _info(
        self, u: FloatArray, reached: bool, clear: FloatArray | None = None
    ) -> dict[str, Any]:
        clear = self.clearances() if clear is None else clear
        min_h = float(clear.min()) if clear.size else math.inf
        return {
            "violation": bool(min_h < 0),
            "min_barrier": min_h,
            "barriers": clear,
            "goal_distance": self.goal_distance(),
            "goal_reached": bool(reached),
            "action": np.array(u, dtype=np.float64),
            "disturbance": np.array(self._last_w, dtype=np.float64),
        }

    def _action(self, action: ArrayLike) -> FloatArray:
        try:
            u = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"invalid action {action!r}: expected {self.action_dim} numbers"
            ) from None
        if u.shape != self.action_space.shape:
            raise ValueError(
                f"invalid action of shape {u.shape}: expected shape {self.action_space.shape}"
            )
        if not np.all(np.isfinite(u)):
            raise ValueError(f"invalid action {u.tolist()}: NaN or infinite entries")
        out: FloatArray = np.clip(u, self.action_low, self.action_high)
        return out

    def _check_state(self, x: object, name: str) -> FloatArray:
        try:
            arr = np.array(x, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{name} must be a state vector of {self.state_dim} numbers"
            ) from None
        if arr.shape != (self.state_dim,) or not np.all(np.isfinite(arr)):
            raise ConfigError(
                f"{name} must be a finite state vector of length {self.state_dim}, got {x!r}"
            )
        return arr

    # ------------------------------------------------------------------------------ render
    def render(self) -> NDArray[np.uint8] | None:
        """An RGB image (top view, x to the right, y up) if ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            return None
        return self.draw()

    def _view(self) -> tuple[float, float, float, float]:
        pts = [self._position(self._start_state)[:2], self.goal[:2]]
        lo = np.min(pts, axis=0) - self.goal_radius
        hi = np.max(pts, axis=0) + self.goal_radius
        if self.obstacle_radii.size:
            c, r = self.obstacle_centers[:, :2], self.obstacle_radii[:, None]
            lo = np.minimum(lo, (c - r).min(axis=0))
            hi = np.maximum(hi, (c + r).max(axis=0))
        lo, hi = lo - 1.0, hi + 1.0
        return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])

    def _grid(self) -> tuple[FloatArray, FloatArray]:
        x0, x1, y0, y1 = self._view()
        scale = self.render_px / max(x1 - x0, y1 - y0)
        w, h = max(round((x1 - x0) * scale), 1), max(round((y1 - y0) * scale), 1)
        xs = x0 + (np.arange(w) + 0.5) / scale
        ys = y1 - (np.arange(h) + 0.5) / scale
        gx, gy = np.meshgrid(xs, ys)
        return gx, gy

    def _inflation(self) -> float:
        return 0.0

    def draw(self, x: ArrayLike | None = None) -> NDArray[np.uint8]:
        """RGB image of the layout and of the state ``x`` (default: the current state).

        Obstacles are dark discs (their :math:`x`-:math:`y` cross-sections through the centre
        for the quadrotor, a top view), inflated obstacles light, the goal region yellow, the
        start green, the robot blue with a red heading segment where it has a heading.
        """
        state = self._x if x is None else self._check_state(x, "x")
        gx, gy = self._grid()
        if self._canvas is None:
            canvas = np.empty((*gx.shape, 3), dtype=np.uint8)
            canvas[:] = _COLOURS["free"]
            c2, r = self.obstacle_centers[:, :2], self.obstacle_radii
            infl = self._inflation()
            for (cx, cy), rad in zip(c2, r, strict=True):
                d2 = (gx - cx) ** 2 + (gy - cy) ** 2
                if infl > 0:
                    canvas[d2 <= (rad + infl) ** 2] = _COLOURS["inflated"]
                canvas[d2 <= rad**2] = _COLOURS["obstacle"]
            g = self.goal
            canvas[(gx - g[0]) ** 2 + (gy - g[1]) ** 2 <= self.goal_radius**2] = _COLOURS["goal"]
            s = self._position(self._start_state)
            px = (gx[0, 1] - gx[0, 0]) if gx.shape[1] > 1 else 1.0
            canvas[(gx - s[0]) ** 2 + (gy - s[1]) ** 2 <= (3 * px) ** 2] = _COLOURS["start"]
            self._canvas = canvas
        img: NDArray[np.uint8] = self._canvas.copy()
        p = self._position(state)
        px = (gx[0, 1] - gx[0, 0]) if gx.shape[1] > 1 else 1.0
        size = max(4 * px, 0.15)
        img[(gx - p[0]) ** 2 + (gy - p[1]) ** 2 <= size**2] = _COLOURS["agent"]
        th = self._heading(state)
        if th is not None:
            for t in np.linspace(0.0, 3.0 * size, 12):
                qx, qy = p[0] + t * math.cos(th), p[1] + t * math.sin(th)
                img[(gx - qx) ** 2 + (gy - qy) ** 2 <= (0.8 * px) ** 2] = _COLOURS["heading"]
        return img


# ------------------------------------------------------------------------------ the model
def _wrap(theta: Any) -> Any:
    r"""Wrap angles to :math:`[-\pi, \pi)` (numpy or torch)."""
    return (theta + math.pi) % (2.0 * math.pi) - math.pi


class DubinsModel:
    r"""The unicycle :math:`\dot p = v(\cos\theta, \sin\theta) + \omega`, :math:`\dot\theta = r`.

    A :class:`~otsafe.safety.models.ControlAffineModel` with state :math:`(p_x, p_y, \theta)`,
    control :math:`(v, r)` and uncertainty :math:`\omega \in \mathbb R^2`: :math:`f = 0`,
    :math:`g(x) = [(\cos\theta, \sin\theta, 0)^\top, (0, 0, 1)^\top]`,
    :math:`D = [e_1, e_2]`. Batched over the first dimension, in the dtype and on the device
    of ``x``.
    """

    def __init__(self) -> None:
        self.state_dim = 3
        self.control_dim = 2
        self.disturbance_dim = 2
        self.position_indices: tuple[int, ...] = (0, 1)

    def f(self, x: Tensor) -> Tensor:
        """:math:`f(x) = 0`, shape ``(B, 3)``."""
        return torch.zeros_like(x)

    def g(self, x: Tensor) -> Tensor:
        r""":math:`g(x)`, shape ``(B, 3, 2)``."""
        th = x[:, 2]
        c, s = torch.cos(th), torch.sin(th)
        z, o = torch.zeros_like(th), torch.ones_like(th)
        return torch.stack(
            [torch.stack([c, z], -1), torch.stack([s, z], -1), torch.stack([z, o], -1)], 1
        )

    def D(self, x: Tensor) -> Tensor:  # noqa: N802 - the D(x) of the dynamics
        """:math:`D(x) = (I_2, 0)^\\top`, shape ``(B, 3, 2)``."""
        eye = torch.eye(3, 2, dtype=x.dtype, device=x.device)
        return eye.expand(x.shape[0], 3, 2)

    def step(self, x: Tensor, u: Tensor, dt: float, w: Tensor | None = None) -> Tensor:
        r"""Exact zero-order-hold step of length ``dt`` (see the module docstring), batched.

        ``x`` (B, 3), ``u`` (B, 2), ``w`` (B, 2) or None (no drift); :math:`\theta` is wrapped
        to :math:`[-\pi, \pi)`.
        """
        v, r, th = u[:, 0], u[:, 1], x[:, 2]
        half = 0.5 * dt * r
        arc = v * dt * torch.sinc(half / math.pi)
        dx, dy = arc * torch.cos(th + half), arc * torch.sin(th + half)
        if w is not None:
            dx, dy = dx + dt * w[:, 0], dy + dt * w[:, 1]
        return torch.stack([x[:, 0] + dx, x[:, 1] + dy, _wrap(th + dt * r)], dim=1)

    def __repr__(self) -> str:
        return "DubinsModel()"


class LookAheadPoint:
    r"""The position map :math:`x \mapsto p + \ell(\cos\theta, \sin\theta)`, shape ``(B, 2)``.

    Pass it as the ``position`` of a :class:`~otsafe.safety.barriers.CircleBarrier` (a picklable
    callable; its derivatives come from autograd).
    """

    def __init__(self, distance: float) -> None:
        self.distance = _nonneg("lookahead", distance)

    def __call__(self, x: Tensor) -> Tensor:
        th = x[:, 2]
        return x[:, :2] + self.distance * torch.stack([torch.cos(th), torch.sin(th)], dim=-1)

    def __repr__(self) -> str:
        return f"LookAheadPoint({self.distance})"


def _unicycle_step(x: FloatArray, u: FloatArray, w: FloatArray, dt: float) -> FloatArray:
    """Numpy twin of :meth:`DubinsModel.step` for one state."""
    v, r, th = float(u[0]), float(u[1]), float(x[2])
    half = 0.5 * dt * r
    arc = v * dt * float(np.sinc(half / math.pi))
    return np.array(
        [
            x[0] + arc * math.cos(th + half) + dt * w[0],
            x[1] + arc * math.sin(th + half) + dt * w[1],
            _wrap(th + dt * r),
        ],
        dtype=np.float64,
    )


# -------------------------------------------------------------------------------- the env
class DubinsCar(_NavigationEnv):
    r"""A Dubins car among circular obstacles, with an additive planar drift (DESIGN §2).

    See the module docstring for the dynamics, the observation, the reward and the look-ahead
    barriers.

    Parameters
    ----------
    obstacles : sequence of (center, radius), optional
        Circular obstacles (centres of length 2, radii > 0); ``None`` is
        :data:`DEFAULT_OBSTACLES`, ``[]`` no obstacles. Neither the start, its look-ahead point
        nor the goal may lie in an obstacle inflated by ``lookahead``.
    start : array-like, shape (2,) or (3,)
        Start position, or start state :math:`(p_x, p_y, \theta)`; a position starts heading
        straight at the goal. Default ``(0, 0, 0)``.
    goal : array-like, shape (2,)
        Centre of the goal region. Default ``(10, 0)``.
    goal_radius : float
        The episode ends (successfully) once :math:`\|p - goal\| \le` ``goal_radius``.
    max_steps : int
        Horizon: episodes are truncated after this many steps.
    dt : float
        Step length (s).
    v_min, v_max : float
        Speed bounds (m/s), ``v_min <= v_max``. With ``v_min <= 0 <= v_max`` the CBF-QP of the
        undisturbed car is always feasible (stopping keeps :math:`\dot h = 0`).
    turn_rate_max : float
        Bound on :math:`|r|` (rad/s), positive.
    lookahead : float
        :math:`\ell > 0` of :meth:`barriers` (m).
    disturbance : Disturbance or mapping, optional
        Model of the drift :math:`\omega` (m/s); default the nominal ``Gaussian(0, 0.1)``.
        Use ``Gaussian(0, 0)`` for the undisturbed car.
    progress_weight, goal_bonus, control_cost, violation_penalty : float
        Reward weights :math:`w_p, B, c, P` (non-negative; ``control_cost`` may be one per
        control).
    terminate_on_violation : bool
        End the episode at the first violation (default False).
    render_mode : {"rgb_array", None}
        ``"rgb_array"``: :meth:`render` returns a top view.
    render_px : int
        Size of the image's longer side in pixels.

    Attributes
    ----------
    control_affine_model : DubinsModel
        The batched torch model of the dynamics (the actions are its controls).
    obstacle_centers, obstacle_radii : ndarray
        Shapes ``(K, 2)`` and ``(K,)``.
    start_state : ndarray, shape (3,)
        The start state.

    Notes
    -----
    In the look-ahead row the turn rate's coefficient scales with :math:`\ell`, the speed's
    with the distance, so the safety QP with the identity objective prefers braking to steering
    and can stall a goal-seeking policy in front of an obstacle (safe, but stuck). Weighting
    speed changes more, e.g. ``SafetyFilter(..., weight=torch.tensor([10.0, 1.0]))``, makes it
    steer around: the naive goal-seeking controller then reaches the goal on the default
    layout (see the tests).

    Examples
    --------
    >>> from otsafe.envs.uncertainty import Gaussian
    >>> env = DubinsCar(disturbance=Gaussian(0.0, 0.0))
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, info["violation"], len(env.barriers())
    ((9,), False, 3)
    """

    pos_dim = 2
    state_dim = 3
    control_dim = 2
    disturbance_dim = 2
    observation_names = (
        "x",
        "y",
        "cos_theta",
        "sin_theta",
        "goal_dx",
        "goal_dy",
        "goal_forward",
        "goal_left",
        "goal_distance",
    )

    def __init__(
        self,
        obstacles: Sequence[ObstacleSpec] | None = None,
        start: ArrayLike = (0.0, 0.0, 0.0),
        goal: ArrayLike = (10.0, 0.0),
        goal_radius: float = 0.5,
        max_steps: int = 300,
        dt: float = 0.1,
        v_min: float = 0.0,
        v_max: float = 1.0,
        turn_rate_max: float = 1.0,
        lookahead: float = 0.3,
        disturbance: Disturbance | Mapping[str, Any] | None = None,
        progress_weight: float = 1.0,
        goal_bonus: float = 10.0,
        control_cost: float | Sequence[float] = 0.01,
        violation_penalty: float = 0.0,
        terminate_on_violation: bool = False,
        render_mode: str | None = None,
        render_px: int = 256,
    ) -> None:
        self._setup(
            obstacles=obstacles,
            default_obstacles=DEFAULT_OBSTACLES,
            goal=goal,
            goal_radius=goal_radius,
            max_steps=max_steps,
            dt=dt,
            disturbance=disturbance,
            default_disturbance=Gaussian(0.0, 0.1),
            progress_weight=progress_weight,
            goal_bonus=goal_bonus,
            control_cost=control_cost,
            violation_penalty=violation_penalty,
            terminate_on_violation=terminate_on_violation,
            render_mode=render_mode,
            render_px=render_px,
        )
        self.v_min = _real("v_min", v_min)
        self.v_max = _real("v_max", v_max)
        if self.v_min > self.v_max:
            raise ConfigError(f"v_min ({self.v_min:g}) must not exceed v_max ({self.v_max:g})")
        self.turn_rate_max = _positive("turn_rate_max", turn_rate_max)
        self.lookahead = _positive("lookahead", lookahead)
        s = _vector("start", start, (2, 3))
        if s.size == 2:
            heading = math.atan2(self.goal[1] - s[1], self.goal[0] - s[0])
            s = np.array([s[0], s[1], heading])
        s[2] = _wrap(s[2])
        self.start_state = s
        self._check_layout()

        self.control_affine_model = DubinsModel()
        self.action_space = gym.spaces.Box(
            low=np.array([self.v_min, -self.turn_rate_max]),
            high=np.array([self.v_max, self.turn_rate_max]),
            dtype=np.float64,
        )
        inf = np.inf
        low = np.array([-inf, -inf, -1.0, -1.0, -inf, -inf, -inf, -inf, 0.0])
        high = np.array([inf, inf, 1.0, 1.0, inf, inf, inf, inf, inf])
        self.observation_space = gym.spaces.Box(low=low, high=high, dtype=np.float64)
        self._x = self.start_state.copy()

    def _check_layout(self) -> None:
        c, r, ell = self.obstacle_centers, self.obstacle_radii, self.lookahead
        how = f" inflated by lookahead {ell:g}"
        p0 = self.start_state[:2]
        _check_outside("start", p0, c, r, ell, how)
        q0 = p0 + ell * np.array([math.cos(self.start_state[2]), math.sin(self.start_state[2])])
        _check_outside("start's look-ahead point", q0, c, r, ell, how)
        _check_outside("goal", self.goal, c, r, ell, how)
        if np.linalg.norm(p0 - self.goal) <= self.goal_radius:
            raise ConfigError(
                f"the start {p0.tolist()} lies in the goal region (goal {self.goal.tolist()}, "
                f"goal_radius {self.goal_radius:g})"
            )

    @property
    def _start_state(self) -> FloatArray:
        return self.start_state

    def _integrate(self, x: FloatArray, u: FloatArray, w: FloatArray) -> FloatArray:
        return _unicycle_step(x, u, w, self.dt)

    def _heading(self, x: FloatArray) -> float | None:
        return float(x[2])

    def _inflation(self) -> float:
        return self.lookahead

    def _observe(self, x: FloatArray) -> FloatArray:
        c, s = math.cos(x[2]), math.sin(x[2])
        dx, dy = self.goal[0] - x[0], self.goal[1] - x[1]
        return np.array(
            [x[0], x[1], c, s, dx, dy, dx * c + dy * s, -dx * s + dy * c, math.hypot(dx, dy)],
            dtype=np.float64,
        )

    def barriers(
        self,
        lookahead: float | None = None,
        margin: float = 0.0,
        form: Literal["squared", "distance"] = "squared",
    ) -> list[CircleBarrier]:
        r"""Look-ahead barriers, one per obstacle, for the safety filter (relative degree 1).

        Barrier :math:`j` keeps :math:`q = p + \ell(\cos\theta, \sin\theta)` outside the circle
        of radius :math:`R_j + \ell + margin`; by the triangle inequality (module docstring)
        this keeps the car at least ``margin`` outside obstacle :math:`j`.

        Parameters
        ----------
        lookahead : float, optional
            :math:`\ell > 0` (default: the environment's ``lookahead``).
        margin : float
            Extra clearance (m), non-negative.
        form : {"squared", "distance"}
            The barrier's form (see :class:`~otsafe.safety.barriers.CircleBarrier`).

        Raises
        ------
        ConfigError
            If the start state's look-ahead point violates a barrier (the filter could not
            start safe).
        """
        ell = self.lookahead if lookahead is None else _positive("lookahead", lookahead)
        extra = _nonneg("margin", margin)
        point = LookAheadPoint(ell)
        c, r = self.obstacle_centers, self.obstacle_radii
        th = self.start_state[2]
        q0 = self.start_state[:2] + ell * np.array([math.cos(th), math.sin(th)])
        _check_outside(
            "start's look-ahead point", q0, c, r, ell + extra, f" inflated by {ell + extra:g}"
        )
        try:
            return [
                CircleBarrier(ck, float(rk) + ell + extra, position=point, form=form)
                for ck, rk in zip(c, r, strict=True)
            ]
        except OtsafeError as exc:
            raise ConfigError(str(exc)) from None

    def __repr__(self) -> str:
        return (
            f"DubinsCar(obstacles={len(self.obstacle_radii)}, start={self.start_state.tolist()}, "
            f"goal={self.goal.tolist()}, dt={self.dt}, max_steps={self.max_steps})"
        )
