"""Grid maps for the OT-Q gridworld: parsing, validation, safety values and the transition table.

A map is ASCII text (DESIGN §1): ``.`` free, ``#`` obstacle, ``S`` start, ``G`` goal, exactly one
start and one goal, all rows the same length. Cells are indexed row-major, ``index = row * W +
col``, and every per-cell array in otsafe is flat over the ``H * W`` cells in that order.

Dynamics (DESIGN §1), deterministic, four actions ``up, down, right, left``:

* a move off the grid leaves the agent in place, reward ``-1``;
* a move into an obstacle leaves the agent in place, reward ``-10``, and is a *collision*;
* entering the goal gives ``+10`` and ends the episode;
* every other move gives ``-1``.

Safety values (the expert's "safety preference"): a free cell gets
:math:`v(s) = \\max(0, 1 - 0.3\\,k(s))` where :math:`k(s)` counts its four neighbours that are
off-grid or obstacles; the goal gets 1, obstacles 0. The risk distribution is
:math:`P^s = v / \\sum v`. Free cells that cannot be reached from the start (closed pockets) carry
no preference: the agent can never be there, so :math:`P^s` is zero on them too.

Everything here is vectorised over cells (no Python loop over cells), so maps of :math:`10^6`
cells such as ``city1000`` load and build their tables in well under a second.
"""

from __future__ import annotations

import functools
import gzip
import re
import zlib
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from otsafe.errors import MapError, SafetyValuesError

__all__ = [
    "ACTIONS",
    "ACTION_DELTAS",
    "BUILTIN_MAPS",
    "GridMap",
    "TransitionTable",
    "builtin_map_names",
    "load_map",
    "parse_map",
]

ACTIONS: Final = ("up", "down", "right", "left")
ACTION_DELTAS: Final = np.array([[-1, 0], [1, 0], [0, 1], [0, -1]], dtype=np.int64)

REWARD_STEP: Final = -1.0
REWARD_COLLISION: Final = -10.0
REWARD_GOAL: Final = 10.0

_MAP_CHARS: Final = frozenset(".#SG")
_BAD_CHAR: Final = re.compile(r"[^.#SG]")

#: Built-in maps shipped in ``otsafe/envs/maps``: name -> short description.
#:
#: Each is the file ``maps/<name>.txt``, or ``maps/<name>.txt.gz`` for the large ones. The
#: 1000x1000 ``city1000`` map is shipped gzip-compressed (36 kB instead of 1 MB of text)
#: rather than generated from a seed at load time: the shipped data fixes the map for good,
#: whatever the generator's dependencies do later (a random stream or a library change could
#: otherwise silently change the map, and every result obtained on it), it reads the same way
#: as every other map file, and decompressing it costs a few milliseconds. Its generator,
#: ``scripts/make_large_maps.py``, documents and reproduces it (``tests/test_large_maps.py``).
BUILTIN_MAPS: Final = {
    "paper": "15x15, start and goal in opposite corners, obstacle blocks and walls (our layout)",
    "rooms30": "30x30, four rooms joined by doorways, with furniture",
    "maze50": "50x50 maze with loops (recursive backtracker, seed 7, 12% of walls opened)",
    "rooms100": (
        "100x100 building: rooms joined by doorways, furniture blocks, 21.4% obstacles "
        "(scripts/make_large_maps.py, seed 2024)"
    ),
    "city1000": (
        "1000x1000 city: districts behind walls with gates, buildings and parks, 21.5% obstacles "
        "(scripts/make_large_maps.py, seed 1000; shipped gzip-compressed)"
    ),
}


@dataclass(frozen=True)
class TransitionTable:
    """The deterministic transition table of a grid map, flat over ``H * W`` cells.

    Attributes
    ----------
    next_state : ndarray of int64, shape (n_cells, 4)
        Cell reached by each action. Obstacle and goal rows are self-loops (never used).
    reward : ndarray of float64, shape (n_cells, 4)
        Reward of each move.
    collision : ndarray of bool, shape (n_cells, 4)
        Whether the move bumps into an obstacle.
    terminal : ndarray of bool, shape (n_cells,)
        True at the goal only.
    """

    next_state: NDArray[np.int64]
    reward: NDArray[np.float64]
    collision: NDArray[np.bool_]
    terminal: NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class GridMap:
    """A validated grid map.

    Build one with :func:`parse_map` or :func:`load_map`; the constructor checks the invariants.
    A map is immutable: its arrays, the cached per-cell arrays and tables included, are
    read-only, so one map can be shared by many environments. The per-cell properties are
    vectorised (no Python loop over cells); on a :math:`10^6`-cell map each takes milliseconds
    and :attr:`transitions` about 0.1 s.

    Attributes
    ----------
    obstacles : ndarray of bool, shape (H, W)
        True where a cell is an obstacle.
    start, goal : tuple of int
        ``(row, col)`` of the start and the goal.
    name : str
        A label for reports (built-in name, file name or ``"<string>"``).
    """

    obstacles: NDArray[np.bool_]
    start: tuple[int, int]
    goal: tuple[int, int]
    name: str = "<string>"

    def __post_init__(self) -> None:
        obstacles = np.asarray(self.obstacles, dtype=bool)
        if obstacles.ndim != 2 or obstacles.size == 0:
            raise MapError(f"map {self.name!r}: the obstacle mask must be a non-empty 2-D array")
        obstacles = obstacles.copy()
        obstacles.setflags(write=False)
        object.__setattr__(self, "obstacles", obstacles)
        h, w = obstacles.shape
        for label, (r, c) in (("start", self.start), ("goal", self.goal)):
            if not (0 <= r < h and 0 <= c < w):
                raise MapError(f"map {self.name!r}: {label} {(r, c)} lies outside the {h}x{w} grid")
            if obstacles[r, c]:
                raise MapError(f"map {self.name!r}: {label} {(r, c)} is an obstacle")
        if self.start == self.goal:
            raise MapError(f"map {self.name!r}: start and goal are the same cell {self.start}")
        if not self.reachable[self.goal]:
            raise MapError(
                f"map {self.name!r}: the goal {self.goal} cannot be reached from the start "
                f"{self.start}"
            )

    # ----------------------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        h, w = self.obstacles.shape
        return int(h), int(w)

    @property
    def n_cells(self) -> int:
        """``H * W``, the length of every flat per-cell array."""
        return int(self.obstacles.size)

    def index(self, cell: tuple[int, int]) -> int:
        """Flat row-major index of ``(row, col)``."""
        return int(cell[0]) * self.shape[1] + int(cell[1])

    @property
    def start_index(self) -> int:
        return self.index(self.start)

    @property
    def goal_index(self) -> int:
        return self.index(self.goal)

    @cached_property
    def coordinates(self) -> NDArray[np.float64]:
        """``(n_cells, 2)`` array of ``(row, col)`` coordinates in row-major order."""
        h, w = self.shape
        coords = np.empty((h * w, 2), dtype=np.float64)
        coords[:, 0] = np.repeat(np.arange(h, dtype=np.float64), w)
        coords[:, 1] = np.tile(np.arange(w, dtype=np.float64), h)
        coords.setflags(write=False)
        return coords

    @cached_property
    def reachable(self) -> NDArray[np.bool_]:
        """``(H, W)`` mask of the free cells connected to the start (4-neighbourhood)."""
        from scipy import ndimage  # imported here: only maps need it, and it is slow to import

        cross = ndimage.generate_binary_structure(2, 1)  # the 4-neighbourhood
        labels, _ = ndimage.label(~self.obstacles, structure=cross)
        seen = np.asarray(labels == labels[self.start], dtype=bool)
        seen.setflags(write=False)
        return seen

    @cached_property
    def blocked_neighbours(self) -> NDArray[np.int64]:
        """``(H, W)`` count ``k(s)`` of the four neighbours that are off-grid or obstacles."""
        padded = np.pad(self.obstacles, 1, constant_values=True).astype(np.int64)
        k = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
        k = np.asarray(k, dtype=np.int64)
        k.setflags(write=False)
        return k

    # ----------------------------------------------------------------------- safety values
    def safety_values(self, values: ArrayLike | None = None) -> NDArray[np.float64]:
        """Per-cell safety values ``v``, shape ``(H, W)``.

        Parameters
        ----------
        values : array-like of shape (H, W) or (H * W,), optional
            User-supplied values. They must be finite and non-negative with a positive value on
            at least one cell reachable from the start; values on obstacles are ignored (set to 0).
            When omitted, the DESIGN §1 rule :math:`v = \\max(0, 1 - 0.3 k)`, goal 1, is used.

        Raises
        ------
        SafetyValuesError
            For a wrong shape, negative or non-finite entries, or no positive mass.
        """
        h, w = self.shape
        if values is None:
            v = np.clip(1.0 - 0.3 * self.blocked_neighbours, 0.0, None)
            v[self.goal] = 1.0
        else:
            try:
                v = np.array(values, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise SafetyValuesError(f"safety values are not numeric: {exc}") from None
            if v.shape == (h * w,):
                v = v.reshape(h, w)
            if v.shape != (h, w):
                raise SafetyValuesError(
                    f"safety values have shape {v.shape}; map {self.name!r} needs ({h}, {w}) "
                    f"or ({h * w},)"
                )
            if not np.all(np.isfinite(v)):
                raise SafetyValuesError("safety values contain NaN or infinite entries")
            if np.any(v < 0):
                r, c = np.argwhere(v < 0)[0]
                raise SafetyValuesError(
                    f"safety values must be non-negative; cell ({r}, {c}) has {v[r, c]:g}"
                )
        v = np.where(self.obstacles, 0.0, v)
        if not np.any(v[self.reachable] > 0):
            raise SafetyValuesError(
                "safety values are zero on every cell reachable from the start; "
                "the risk distribution P^s would be undefined"
            )
        return np.asarray(v, dtype=np.float64)

    def risk_distribution(self, values: ArrayLike | None = None) -> NDArray[np.float64]:
        """The expert safety distribution :math:`P^s = v / \\sum v`, flat over ``H * W`` cells.

        Zero on obstacles and on free cells that cannot be reached from the start.
        """
        v = np.where(self.reachable, self.safety_values(values), 0.0).ravel()
        return np.asarray(v / v.sum(), dtype=np.float64)

    # ------------------------------------------------------------------------- transitions
    @cached_property
    def transitions(self) -> TransitionTable:
        """The deterministic :class:`TransitionTable` of this map (DESIGN §1 rewards)."""
        h, w = self.shape
        n = h * w
        here = np.arange(n, dtype=np.int64).reshape(h, w)
        # Pad by one cell: ``off`` marks the off-grid ring, ``obstacle`` the obstacles inside.
        off = np.pad(np.zeros((h, w), dtype=bool), 1, constant_values=True)
        obstacle = np.pad(self.obstacles, 1, constant_values=False)
        moves = np.empty((h, w, 4), dtype=np.int64)  # next_state, cell by cell
        bumps = np.empty((h, w, 4), dtype=bool)  # collision, cell by cell
        for a, (dr, dc) in enumerate(ACTION_DELTAS.tolist()):
            window = (slice(1 + dr, 1 + dr + h), slice(1 + dc, 1 + dc + w))
            hits = obstacle[window]
            bumps[..., a] = hits
            moves[..., a] = np.where(off[window] | hits, here, here + (dr * w + dc))
        next_state = moves.reshape(n, 4)
        collision = bumps.reshape(n, 4)
        reward = np.full((n, 4), REWARD_STEP)
        reward[collision] = REWARD_COLLISION
        terminal = np.zeros(n, dtype=bool)
        terminal[self.goal_index] = True
        reward[(next_state == self.goal_index) & (next_state != here.reshape(n, 1))] = REWARD_GOAL
        # Obstacle and goal rows are never used: make them inert self-loops.
        inert = self.obstacles.ravel() | terminal
        next_state[inert] = here.reshape(n, 1)[inert]
        reward[inert] = 0.0
        collision[inert] = False
        for arr in (next_state, reward, collision, terminal):
            arr.setflags(write=False)
        return TransitionTable(
            next_state=next_state, reward=reward, collision=collision, terminal=terminal
        )

    # ------------------------------------------------------------------------------- text
    def to_ascii(self) -> str:
        """The map as ASCII text (DESIGN §1 format), one row per line."""
        h, w = self.shape
        chars = np.full((h, w + 1), ord("."), dtype=np.uint8)
        chars[:, :w][self.obstacles] = ord("#")
        chars[:, w] = ord("\n")
        chars[self.start] = ord("S")
        chars[self.goal] = ord("G")
        return chars.tobytes().decode("ascii")


def parse_map(text: str, name: str = "<string>") -> GridMap:
    """Parse an ASCII map (DESIGN §1 format).

    Blank lines at the start and the end and trailing whitespace on each line are ignored.

    Raises
    ------
    MapError
        For unknown characters, ragged rows, no or several starts/goals, or an unreachable goal.
    """
    lines = [line.rstrip() for line in text.splitlines()]
    first = next((i for i, line in enumerate(lines) if line), len(lines))
    last = next((i for i in range(len(lines) - 1, first - 1, -1) if lines[i]), first - 1)
    lines = lines[first : last + 1]
    if not lines:
        raise MapError(f"map {name!r} is empty")
    width = len(lines[0])
    # One pass over the rows (the character scan of a row runs in C), reporting the first
    # ragged row or unknown character in reading order.
    for i, line in enumerate(lines):
        if len(line) != width:
            raise MapError(
                f"map {name!r}: ragged rows: row {i} has {len(line)} cells, row 0 has {width}"
            )
        bad = _BAD_CHAR.search(line)
        if bad is not None:
            raise MapError(
                f"map {name!r}: unknown character {bad.group()!r} at row {i}, "
                f"column {bad.start()} (allowed: '.' free, '#' obstacle, 'S' start, 'G' goal)"
            )
    # Every character is now one of ".#SG": one byte each.
    grid = np.frombuffer("".join(lines).encode("ascii"), dtype=np.uint8).reshape(-1, width)
    found: dict[str, tuple[int, int]] = {}
    for ch, label in (("S", "start"), ("G", "goal")):
        cells = [(int(r), int(c)) for r, c in np.argwhere(grid == ord(ch))]
        if len(cells) != 1:
            where = "" if not cells else f" at {cells}"
            raise MapError(
                f"map {name!r}: needs exactly one {label} {ch!r}, found {len(cells)}{where}"
            )
        found[label] = cells[0]
    return GridMap(obstacles=grid == ord("#"), start=found["start"], goal=found["goal"], name=name)


def builtin_map_names() -> list[str]:
    """Names of the built-in maps."""
    return list(BUILTIN_MAPS)


@functools.cache
def _load_builtin(name: str) -> GridMap:
    """The built-in map ``name``, parsed once per process and then shared.

    Sharing is safe because a :class:`GridMap` is immutable (a frozen dataclass whose arrays,
    cached ones included, are read-only), and it matters on large maps: every environment made
    on ``city1000`` (vector environments, ``check_env``, a config check then a run) reuses one
    transition table (about 70 MB) instead of parsing the map and building its own.
    """
    return parse_map(_builtin_text(name), name=name)


def _builtin_text(name: str) -> str:
    """Text of the built-in map ``name``: ``maps/<name>.txt``, else ``maps/<name>.txt.gz``."""
    maps = resources.files("otsafe.envs").joinpath("maps")
    plain = maps.joinpath(f"{name}.txt")
    if plain.is_file():
        return plain.read_text()
    return gzip.decompress(maps.joinpath(f"{name}.txt.gz").read_bytes()).decode("ascii")


def load_map(spec: str | Path | GridMap) -> GridMap:
    """Resolve a map given as a built-in name, a path to an ASCII file, or an ASCII string.

    A file whose name ends in ``.gz`` is read as gzip-compressed text. Built-in maps are parsed
    once per process: loading one again returns the same (immutable) :class:`GridMap`.

    Parameters
    ----------
    spec : str, Path or GridMap
        A name from :data:`BUILTIN_MAPS`, the map text itself, a path to a map file, or an
        already built :class:`GridMap` (returned as is).

    Returns
    -------
    GridMap
        The validated map, named after the built-in map or the file (``"<string>"`` for text).

    Raises
    ------
    MapError
        If ``spec`` is none of those (e.g. a missing file), or the map itself is invalid.
    """
    if isinstance(spec, GridMap):
        return spec
    if isinstance(spec, str) and spec in BUILTIN_MAPS:
        return _load_builtin(spec)
    if isinstance(spec, str) and ("\n" in spec or (spec and set(spec) <= _MAP_CHARS)):
        return parse_map(spec)
    path = Path(spec)
    if path.is_file():
        try:
            if path.suffix == ".gz":
                text = gzip.decompress(path.read_bytes()).decode("utf-8")
            else:
                text = path.read_text()
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
            raise MapError(f"cannot read map file {str(path)!r}: {exc}") from None
        return parse_map(text, name=path.name)
    raise MapError(
        f"unknown map {str(spec)!r}: not a built-in map ({', '.join(BUILTIN_MAPS)}) "
        "and no such file"
    )
