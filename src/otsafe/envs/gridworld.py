"""The OT-Q gridworld as a Gymnasium environment (``otsafe/GridWorld-v0``).

Observations are the flat row-major cell index (``Discrete(H * W)``); actions are
``0 up, 1 down, 2 right, 3 left``. Dynamics and rewards are those of
:class:`otsafe.envs.gridmap.GridMap` (DESIGN §1). Episodes end at the goal and are truncated
after ``max_steps`` steps. ``info`` carries ``collision`` (the move hit an obstacle), ``cell``
(``(row, col)`` after the move) and ``risky`` (the new cell has safety value below 1).

Construction, ``reset``, ``step`` and ``render`` are vectorised or constant-time per call, so the
environment runs on maps of :math:`10^6` cells (``city1000``); rendered images are capped at
``max_render_px`` pixels a side (one or two pixels per cell on such maps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, SupportsFloat

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

#: Default cap on the long side of a rendered image, in pixels.
MAX_RENDER_PX: Final = 2048


class GridWorld(gym.Env[np.int64, np.int64]):
    """Gridworld of the OT-Q paper (DESIGN §1).

    Parameters
    ----------
    map : str, Path or GridMap
        A built-in map name (``paper``, ``rooms30``, ``maze50``, ``rooms100``, ``city1000``), a
        path to an ASCII map file (gzip-compressed if it ends in ``.gz``), or the ASCII text.
    max_steps : int
        Episodes are truncated after this many steps.
    safety_values : array-like, optional
        Per-cell safety values replacing the DESIGN §1 rule (shape ``(H, W)`` or ``(H*W,)``).
    render_mode : {"rgb_array", None}
        ``"rgb_array"`` makes :meth:`render` return an ``(H*px, W*px, 3)`` uint8 image, where
        ``px`` is :attr:`pixels_per_cell`.
    cell_px : int
        Pixels per cell in the rendered image (before the ``max_render_px`` cap).
    max_render_px : int or None
        Cap on the long side of the rendered image: cells get
        ``min(cell_px, max(1, max_render_px // max(H, W)))`` pixels, never fewer than one, so
        no cell is dropped (a 1000x1000 map renders at 2 pixels per cell, 2000x2000 pixels,
        12 MB). ``None`` means no cap. The built-in maps up to 100x100 are not affected at the
        default ``cell_px``.

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
        max_render_px: int | None = MAX_RENDER_PX,
    ) -> None:
        if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
            raise ConfigError(f"max_steps must be a positive integer, got {max_steps!r}")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        if max_render_px is not None and (
            not isinstance(max_render_px, (int, np.integer)) or max_render_px < 1
        ):
            raise ConfigError(
                f"max_render_px must be a positive integer or None, got {max_render_px!r}"
            )
        self.grid = load_map(map)
        self.max_steps = int(max_steps)
        self.render_mode = render_mode
        self.cell_px = int(cell_px)
        self.max_render_px = None if max_render_px is None else int(max_render_px)
        self._background: NDArray[np.uint8] | None = None  # the map image, drawn once
        self.safety: NDArray[np.float64] = self.grid.safety_values(safety_values)
        self.risk_distribution: NDArray[np.float64] = self.grid.risk_distribution(safety_values)
        self.risky: NDArray[np.bool_] = (~self.grid.obstacles & (self.safety < 1.0)).ravel()
        self.transitions: TransitionTable = self.grid.transitions
        self.observation_space = gym.spaces.Discrete(self.grid.n_cells)
        self.action_space = gym.spaces.Discrete(4)
        self._state = self.grid.start_index
        self._steps = 0

    @property
    def pixels_per_cell(self) -> int:
        """Pixels per cell in rendered images: ``cell_px`` within the ``max_render_px`` cap."""
        if self.max_render_px is None:
            return self.cell_px
        return min(self.cell_px, max(1, self.max_render_px // max(self.grid.shape)))

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
        """RGB image of the map, the start, the goal and (optionally) the agent's cell.

        Parameters
        ----------
        agent : int, optional
            Flat index of the cell to mark with the agent.

        Returns
        -------
        ndarray of uint8, shape (H * px, W * px, 3)
            A new image, ``px`` being :attr:`pixels_per_cell`. Grid lines are drawn from 4
            pixels per cell; the agent is a square inset by ``max(px // 4, 1)`` pixels in its
            cell, or the whole cell at 1 pixel per cell.
        """
        w = self.grid.shape[1]
        px = self.pixels_per_cell
        if self._background is None or self._background.shape[1] != w * px:
            self._background = self._draw_background(px)
        big: NDArray[np.uint8] = self._background.copy()
        if agent is not None:
            r, c = divmod(int(agent), w)
            m = max(px // 4, 1) if px > 1 else 0
            end = 1 if px > 1 else 0
            big[r * px + m : (r + 1) * px - m + end, c * px + m : (c + 1) * px - m + end] = (
                _COLOURS["agent"]
            )
        return big

    def _draw_background(self, px: int) -> NDArray[np.uint8]:
        """The map without the agent at ``px`` pixels per cell (drawn once, then copied)."""
        h, w = self.grid.shape
        img = np.empty((h, w, 3), dtype=np.uint8)
        img[:] = _COLOURS["free"]
        img[self.grid.obstacles] = _COLOURS["obstacle"]
        img[self.grid.start] = _COLOURS["start"]
        img[self.grid.goal] = _COLOURS["goal"]
        big = np.repeat(np.repeat(img, px, axis=0), px, axis=1)
        if px >= 4:
            big[::px, :] = _COLOURS["grid"]
            big[:, ::px] = _COLOURS["grid"]
        big.setflags(write=False)
        return big
