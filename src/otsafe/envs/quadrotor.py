r"""Quadcopter translational dynamics among spherical obstacles: ``otsafe/Quadrotor-v0``.

Dynamics
--------
State :math:`x = (p, v) \in \mathbb R^6` (position, velocity), control :math:`u = a \in
\mathbb R^3` the commanded acceleration, bounded per axis (:math:`|a_k| \le a_{max,k}`), and
uncertainty :math:`\omega \in \mathbb R^3` an additive gust acceleration (m/s²):

.. math:: \dot p = v, \qquad \dot v = a + \omega,

a double integrator (:class:`~otsafe.safety.models.DoubleIntegrator` with ``dim=3``:
:math:`f(x) = (v, 0)`, :math:`g = D = (0, I_3)^\top`). Gravity is assumed compensated by the
inner attitude/thrust loop, so :math:`a` is the acceleration *on top of* hovering, and the
rotational dynamics are not modelled (DESIGN §2: translational dynamics).

**Discretisation.** Exact for the control and the gust held constant over ``dt`` (zero-order
hold): :math:`p' = p + dt\,v + \tfrac12 dt^2 (a + \omega)`, :math:`v' = v + dt\,(a + \omega)`.

Observation
-----------
A ``Box`` of 10 float64 numbers (:attr:`Quadrotor.observation_names`):
``[p_x, p_y, p_z, v_x, v_y, v_z, Δx, Δy, Δz, ‖Δ‖]`` with :math:`\Delta = goal - p`; unbounded.

Reward, termination, violations
-------------------------------
As for the car (:mod:`otsafe.envs.dubins`): :math:`r_t = w_p (d_{t-1} - d_t) - dt \sum_k c_k a_k^2
+ B [d_t \le r_{goal}] - P [\text{violation}]`; the episode ends at the goal region (reached
at any speed), optionally at the first violation (``terminate_on_violation``, default False),
and is truncated after ``max_steps``. ``info["barriers"]`` holds the clearances
:math:`\|p - c_j\| - R_j`, ``info["min_barrier"]`` their minimum and ``info["violation"]``
whether it is negative.

Barriers
--------
:meth:`Quadrotor.barriers` gives one :class:`~otsafe.safety.barriers.SphereBarrier` per obstacle
on the position. Its gradient :math:`(\nabla_p h, 0)` is orthogonal to :math:`g = (0, I)^\top`,
so :math:`L_g h = 0`: the barriers have relative degree 2 and the safety filter uses the HOCBF
(``relative_degree=2``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from numpy.typing import ArrayLike

from otsafe.envs._navigation import (
    FloatArray,
    ObstacleSpec,
    _check_outside,
    _NavigationEnv,
    _nonneg,
    _vector,
)
from otsafe.envs.uncertainty import Disturbance, Gaussian
from otsafe.errors import ConfigError
from otsafe.safety.barriers import SphereBarrier
from otsafe.safety.models import DoubleIntegrator

__all__ = ["DEFAULT_OBSTACLES", "Quadrotor"]

DEFAULT_OBSTACLES: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((2.5, 0.2, 1.1), 0.8),
    ((5.0, -0.25, 0.9), 0.9),
    ((6.6, 0.6, 1.3), 0.5),
)
"""The quadrotor's default layout: start (0, 0, 1) at rest, goal (8, 0, 1); the first two
spheres cross the straight line start -> goal, the third one sits beside it near the goal."""


class Quadrotor(_NavigationEnv):
    r"""Quadcopter translational dynamics among spherical obstacles, with gusts (DESIGN §2).

    See the module docstring for the dynamics, the observation, the reward and the barriers.

    Parameters
    ----------
    obstacles : sequence of (center, radius), optional
        Spherical obstacles (centres of length 3, radii > 0); ``None`` is
        :data:`DEFAULT_OBSTACLES`, ``[]`` no obstacles. Neither the start nor the goal may lie in
        an obstacle.
    start : array-like, shape (3,) or (6,)
        Start position (at rest), or start state :math:`(p, v)`. Default ``(0, 0, 1)``.
    goal : array-like, shape (3,)
        Centre of the goal region. Default ``(8, 0, 1)``.
    goal_radius : float
        The episode ends once :math:`\|p - goal\| \le` ``goal_radius``.
    max_steps : int
        Horizon: episodes are truncated after this many steps.
    dt : float
        Step length (s).
    max_acceleration : float or array-like, shape (3,)
        Per-axis bound :math:`a_{max} > 0` of the commanded acceleration (m/s²).
    disturbance : Disturbance or mapping, optional
        Model of the gust :math:`\omega` (m/s²); default the nominal ``Gaussian(0, 0.2)``.
    progress_weight, goal_bonus, control_cost, violation_penalty : float
        Reward weights (see :mod:`otsafe.envs.dubins`).
    terminate_on_violation : bool
        End the episode at the first violation (default False).
    render_mode : {"rgb_array", None}
        ``"rgb_array"``: :meth:`render` returns a top view (x right, y up; the spheres'
        projections).
    render_px : int
        Size of the image's longer side in pixels.

    Attributes
    ----------
    control_affine_model : DoubleIntegrator
        The batched torch model of the dynamics (``DoubleIntegrator(3)``).
    start_state : ndarray, shape (6,)
        The start state.
    """

    pos_dim = 3
    state_dim = 6
    control_dim = 3
    disturbance_dim = 3
    observation_names = (
        "x",
        "y",
        "z",
        "vx",
        "vy",
        "vz",
        "goal_dx",
        "goal_dy",
        "goal_dz",
        "goal_distance",
    )

    def __init__(
        self,
        obstacles: Sequence[ObstacleSpec] | None = None,
        start: ArrayLike = (0.0, 0.0, 1.0),
        goal: ArrayLike = (8.0, 0.0, 1.0),
        goal_radius: float = 0.5,
        max_steps: int = 300,
        dt: float = 0.1,
        max_acceleration: float | Sequence[float] = 2.0,
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
            default_disturbance=Gaussian(0.0, 0.2),
            progress_weight=progress_weight,
            goal_bonus=goal_bonus,
            control_cost=control_cost,
            violation_penalty=violation_penalty,
            terminate_on_violation=terminate_on_violation,
            render_mode=render_mode,
            render_px=render_px,
        )
        if isinstance(max_acceleration, (int, float, np.number)) and not isinstance(
            max_acceleration, (bool, np.bool_)
        ):
            a_max = np.full(3, _nonneg("max_acceleration", max_acceleration))
        else:
            a_max = _vector("max_acceleration", max_acceleration, (3,))
        if not np.all(a_max > 0):
            raise ConfigError(f"max_acceleration must be positive, got {a_max.tolist()}")
        self.max_acceleration = a_max
        s = _vector("start", start, (3, 6))
        self.start_state = np.concatenate([s, np.zeros(3)]) if s.size == 3 else s
        self._check_layout()

        self.control_affine_model = DoubleIntegrator(3)
        self.action_space = gym.spaces.Box(low=-a_max, high=a_max, dtype=np.float64)
        low = np.full(10, -np.inf)
        low[-1] = 0.0
        self.observation_space = gym.spaces.Box(low=low, high=np.full(10, np.inf), dtype=np.float64)
        self._x = self.start_state.copy()

    def _check_layout(self) -> None:
        c, r = self.obstacle_centers, self.obstacle_radii
        p0 = self.start_state[:3]
        _check_outside("start", p0, c, r, 0.0, "")
        _check_outside("goal", self.goal, c, r, 0.0, "")
        if np.linalg.norm(p0 - self.goal) <= self.goal_radius:
            raise ConfigError(
                f"the start {p0.tolist()} lies in the goal region (goal {self.goal.tolist()}, "
                f"goal_radius {self.goal_radius:g})"
            )

    @property
    def _start_state(self) -> FloatArray:
        return self.start_state

    def _integrate(self, x: FloatArray, u: FloatArray, w: FloatArray) -> FloatArray:
        a = u + w
        dt = self.dt
        p, v = x[:3], x[3:]
        return np.concatenate([p + dt * v + 0.5 * dt * dt * a, v + dt * a])

    def _observe(self, x: FloatArray) -> FloatArray:
        delta = self.goal - x[:3]
        return np.concatenate([x, delta, [np.linalg.norm(delta)]]).astype(np.float64)

    def barriers(
        self, margin: float = 0.0, form: Literal["squared", "distance"] = "squared"
    ) -> list[SphereBarrier]:
        r"""Sphere barriers on the position, one per obstacle (relative degree 2: HOCBF).

        Barrier :math:`j` is :math:`\|p - c_j\|^2 - (R_j + margin)^2` (``form="squared"``) or
        :math:`\|p - c_j\| - (R_j + margin)` (``"distance"``).

        Parameters
        ----------
        margin : float
            Extra clearance (m), non-negative.
        form : {"squared", "distance"}
            The barrier's form (see :class:`~otsafe.safety.barriers.CircleBarrier`).

        Raises
        ------
        ConfigError
            If the start lies within ``margin`` of an obstacle.
        """
        extra = _nonneg("margin", margin)
        c, r = self.obstacle_centers, self.obstacle_radii
        _check_outside("start", self.start_state[:3], c, r, extra, f" inflated by {extra:g}")
        return [
            SphereBarrier(ck, float(rk) + extra, position=(0, 1, 2), form=form)
            for ck, rk in zip(c, r, strict=True)
        ]

    def __repr__(self) -> str:
        return (
            f"Quadrotor(obstacles={len(self.obstacle_radii)}, start={self.start_state.tolist()}, "
            f"goal={self.goal.tolist()}, dt={self.dt}, max_steps={self.max_steps})"
        )
