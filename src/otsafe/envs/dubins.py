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
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from otsafe.envs._navigation import (
    FloatArray,
    ObstacleSpec,
    _check_outside,
    _NavigationEnv,
    _nonneg,
    _positive,
    _real,
    _vector,
)
from otsafe.envs.uncertainty import Disturbance, Gaussian
from otsafe.errors import ConfigError, OtsafeError
from otsafe.safety.barriers import CircleBarrier

__all__ = ["DEFAULT_OBSTACLES", "DubinsCar", "DubinsModel", "LookAheadPoint"]


DEFAULT_OBSTACLES: tuple[tuple[tuple[float, float], float], ...] = (
    ((3.0, 0.25), 0.8),
    ((6.0, -0.3), 0.9),
    ((8.3, 0.9), 0.6),
)
"""The car's default layout: start (0, 0) heading east, goal (10, 0); the first two circles
cross the straight line start -> goal, the third one guards the way in above it."""


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
    callable). Its Jacobian is in closed form (:meth:`jacobian`), so the barrier's gradient
    needs no autograd; second derivatives (a HOCBF) come from autograd.
    """

    def __init__(self, distance: float) -> None:
        self.distance = _nonneg("lookahead", distance)

    def __call__(self, x: Tensor) -> Tensor:
        th = x[:, 2]
        return x[:, :2] + self.distance * torch.stack([torch.cos(th), torch.sin(th)], dim=-1)

    def jacobian(self, x: Tensor) -> Tensor:
        r"""The Jacobian :math:`[I_2,\ \ell(-\sin\theta, \cos\theta)^\top]`, shape ``(B, 2, 3)``."""
        th = x[:, 2]
        eye = torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
        column = self.distance * torch.stack([-torch.sin(th), torch.cos(th)], dim=-1)
        return eye + torch.nn.functional.pad(column.unsqueeze(-1), (2, 0))

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
