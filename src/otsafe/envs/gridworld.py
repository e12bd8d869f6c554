"""The OT-Q gridworld as a Gymnasium environment (``otsafe/GridWorld-v0``).

Observations are the flat row-major cell index (``Discrete(H * W)``); actions are
``0 up, 1 down, 2 right, 3 left``. Dynamics and rewards are those of
:class:`otsafe.envs.gridmap.GridMap` (DESIGN §1). Episodes end at the goal and are truncated
after ``max_steps`` steps. ``info`` carries ``collision`` (the move hit an obstacle), ``cell``
(``(row, col)`` after the move) and ``risky`` (the new cell has safety value below 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from numpy.typing import ArrayLike, NDArray

from otsafe.envs.gridmap import GridMap, TransitionTable, load_map
from otsafe.errors import ConfigError

__all__ = ["GridWorld"]

_COLOURS = {
    "free": (245, 245, 245),
    "obstacle": (60, 60, 70),
    "start": (120, 200, 120),
    "goal": (240, 190, 40),
    "agent": (40, 90, 220),
    "grid": (200, 200, 200),
}


class GridWorld(gym.Env[np.int64, np.int64]):
    """Gridworld of the OT-Q paper (DESIGN §1).

    Parameters
    ----------
    map : str, Path or GridMap
        A built-in map name (``paper``, ``rooms30``, ``maze50``), a path to an ASCII map file,
        or the ASCII text itself.
    max_steps : int
        Episodes are truncated after this many steps.
    safety_values : array-like, optional
        Per-cell safety values replacing the DESIGN §1 rule (shape ``(H, W)`` or ``(H*W,)``).
    render_mode : {"rgb_array", None}
        ``"rgb_array"`` makes :meth:`render` return an ``(H*cell_px, W*cell_px, 3)`` uint8 image.
    cell_px : int
        Pixels per cell in the rendered image.

    Attributes
    ----------
    grid : GridMap
        The validated map.
    safety : ndarray, shape (H, W)
        Per-cell safety values ``v``.
    risk_distribution : ndarray, shape (H*W,)
        The expert safety distribution :math:`P^s` (zero on obstacles).
    transitions : TransitionTable
        The deterministic transition table.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 8}  # noqa: RUF012

    def __init__(
        self,
        map: str | Path | GridMap = "paper",
        max_steps: int = 500,
        safety_values: ArrayLike | None = None,
        render_mode: str | None = None,
        cell_px: int = 16,
    ) -> None:
        if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
            raise ConfigError(f"max_steps must be a positive integer, got {max_steps!r}")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.grid = load_map(map)
        self.max_steps = int(max_steps)
        self.render_mode = render_mode
        self.cell_px = int(cell_px)
        self.safety: NDArray[np.float64] = self.grid.safety_values(safety_values)
        self.risk_distribution: NDArray[np.float64] = self.grid.risk_distribution(safety_values)
        self.risky: NDArray[np.bool_] = (~self.grid.obstacles & (self.safety < 1.0)).ravel()
        self.transitions: TransitionTable = self.grid.transitions
        self.observation_space = gym.spaces.Discrete(self.grid.n_cells)
        self.action_space = gym.spaces.Discrete(4)
        self._state = self.grid.start_index
        self._steps = 0

    @property
    def state(self) -> int:
        """Current flat cell index."""
        return self._state

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.int64, dict[str, Any]]:
        super().reset(seed=seed)
        self._state = self.grid.start_index
        self._steps = 0
        return np.int64(self._state), {"cell": self.grid.start}

    def step(
        self, action: np.int64 | int
    ) -> tuple[np.int64, SupportsFloat, bool, bool, dict[str, Any]]:
        a = int(action)
        if not 0 <= a < 4:
            raise ValueError(
                f"invalid action {action!r}; actions are 0 up, 1 down, 2 right, 3 left"
            )
        table = self.transitions
        s = self._state
        s2 = int(table.next_state[s, a])
        reward = float(table.reward[s, a])
        collision = bool(table.collision[s, a])
        self._state = s2
        self._steps += 1
        terminated = bool(table.terminal[s2])
        truncated = not terminated and self._steps >= self.max_steps
        w = self.grid.shape[1]
        info = {"collision": collision, "cell": (s2 // w, s2 % w), "risky": bool(self.risky[s2])}
        return np.int64(s2), reward, terminated, truncated, info

    def render(self) -> NDArray[np.uint8] | None:
        if self.render_mode != "rgb_array":
            return None
        return self.draw(agent=self._state)

    def draw(self, agent: int | None = None) -> NDArray[np.uint8]:
        """RGB image of the map, the start, the goal and (optionally) the agent's cell."""
        h, w = self.grid.shape
        px = self.cell_px
        img = np.empty((h, w, 3), dtype=np.uint8)
        img[:] = _COLOURS["free"]
        img[self.grid.obstacles] = _COLOURS["obstacle"]
        img[self.grid.start] = _COLOURS["start"]
        img[self.grid.goal] = _COLOURS["goal"]
        big = np.repeat(np.repeat(img, px, axis=0), px, axis=1)
        if px >= 4:
            big[::px, :] = _COLOURS["grid"]
            big[:, ::px] = _COLOURS["grid"]
        if agent is not None:
            r, c = divmod(int(agent), w)
            m = max(px // 4, 1)
            big[r * px + m : (r + 1) * px - m + 1, c * px + m : (c + 1) * px - m + 1] = _COLOURS[
                "agent"
            ]
        return big
