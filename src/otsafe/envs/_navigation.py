"""Shared machinery of the continuous navigation environments (Dubins car, quadrotor).

Validation of layouts and parameters, and :class:`_NavigationEnv`, the Gymnasium base class that
both environments extend: obstacles, goal, reward, violation bookkeeping, disturbance sampling and
rendering.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from numpy.typing import ArrayLike, NDArray

from otsafe.envs.uncertainty import Disturbance, disturbance_from_config
from otsafe.errors import ConfigError

FloatArray = NDArray[np.float64]
ObstacleSpec = Sequence[Any] | Mapping[str, Any]
"""One obstacle: ``(center, radius)`` or ``{"center": ..., "radius": ...}``."""


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
