"""Regenerate the large built-in maps ``rooms100`` and ``city1000`` (their provenance).

Both maps are produced from fixed seeds and are shipped as data, so the maps used by experiments
never change even if this generator or its dependencies do:

* ``rooms100`` (100x100) is a building of rooms: a recursive division of the floor by one-cell
  walls, each wall pierced by a doorway of one or two cells (sometimes two doorways, which makes
  loops), with small furniture blocks inside the rooms. Seed 2024. Shipped as plain text
  (10 kB), like the other small maps::

      python scripts/make_large_maps.py rooms100 --out src/otsafe/envs/maps/rooms100.txt

* ``city1000`` (1000x1000) is a city: a recursive division by three-cell-thick barriers
  (rivers, rail lines) with gates into districts, each district cut into lots, and each lot a
  solid building set back from its edges, a park with scattered trees, or an open plaza.
  Seed 1000. Shipped gzip-compressed (the plain text would be 1 MB in the wheel)::

      python scripts/make_large_maps.py city1000 --out src/otsafe/envs/maps/city1000.txt.gz

Without ``--out`` the map text is written to standard output; an output path ending in ``.gz``
is gzip-compressed (level 9, no timestamp or file name in the header, so the bytes depend only
on the text and the zlib version). ``--stats`` prints the obstacle fraction, the number of
free, reachable and risky cells and the shortest-path length from the start to the goal.

Both generators guarantee that every free cell is reachable from the start: a free pocket that
the construction happens to enclose is filled with obstacle cells (there are none for the
shipped seeds). Start and goal are the top-left and bottom-right corners.

Randomness comes only from :meth:`random.Random.random` seeded with an integer, the one part of
the standard library whose output Python guarantees to stay the same across versions, so
re-running this script reproduces the shipped maps exactly (``tests/test_large_maps.py``
checks it).
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["Region", "make_city1000", "make_rooms100", "map_text", "recursive_division"]

#: ``(row0, col0, row1, col1)``: the half-open cell rectangle ``[row0, row1) x [col0, col1)``.
Region = tuple[int, int, int, int]


def _randint(rng: random.Random, low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` drawn from ``rng.random()`` only (version-stable)."""
    return low + min(int(rng.random() * (high - low + 1)), high - low)


@dataclass(frozen=True)
class _Walls:
    """Parameters of a recursive division."""

    min_room: int  # smallest side of a room (free cells between walls)
    thickness: int  # wall thickness in cells
    door_min: int  # doorway width range
    door_max: int
    second_door: float  # probability that a wall gets a second doorway (creates loops)


def _wall_positions(
    grid: NDArray[np.bool_], region: Region, horizontal: bool, walls: _Walls
) -> list[int]:
    """Positions where a wall may split ``region`` without blocking a doorway at its ends."""
    r0, c0, r1, c1 = region
    h, w = grid.shape
    t = walls.thickness
    lo, hi = (r0, r1) if horizontal else (c0, c1)
    positions = []
    for p in range(lo + walls.min_room, hi - walls.min_room - t + 1):
        if horizontal:
            ends = [grid[p : p + t, c0 - 1] if c0 > 0 else None]
            ends.append(grid[p : p + t, c1] if c1 < w else None)
        else:
            ends = [grid[r0 - 1, p : p + t] if r0 > 0 else None]
            ends.append(grid[r1, p : p + t] if r1 < h else None)
        # The region is bounded by walls or the grid edge, so a free cell there is a doorway.
        if all(end is None or bool(end.all()) for end in ends):
            positions.append(p)
    return positions


def recursive_division(
    grid: NDArray[np.bool_], region: Region, walls: _Walls, rng: random.Random
) -> list[Region]:
    """Split ``region`` of ``grid`` (True = obstacle) into rooms by walls with doorways.

    Each region is split across its longer side (a coin decides squares) at a random position
    that leaves both parts at least ``min_room`` wide and does not end the wall in front of a
    doorway of an enclosing wall; the wall then gets one doorway (two with probability
    ``second_door``). The free cells stay connected. Returns the rooms (leaf regions).
    """
    rooms: list[Region] = []
    stack = [region]
    while stack:
        r0, c0, r1, c1 = stack.pop()
        h, w = r1 - r0, c1 - c0
        first_horizontal = h > w or (h == w and rng.random() < 0.5)
        split = None
        for horizontal in (first_horizontal, not first_horizontal):
            positions = _wall_positions(grid, (r0, c0, r1, c1), horizontal, walls)
            if positions:
                split = (horizontal, positions[_randint(rng, 0, len(positions) - 1)])
                break
        if split is None:
            rooms.append((r0, c0, r1, c1))
            continue
        horizontal, p = split
        t = walls.thickness
        length = w if horizontal else h
        n_doors = 2 if rng.random() < walls.second_door else 1
        if horizontal:
            grid[p : p + t, c0:c1] = True
        else:
            grid[r0:r1, p : p + t] = True
        for _ in range(n_doors):
            width = min(_randint(rng, walls.door_min, walls.door_max), length)
            q = _randint(rng, 0, length - width)
            if horizontal:
                grid[p : p + t, c0 + q : c0 + q + width] = False
            else:
                grid[r0 + q : r0 + q + width, p : p + t] = False
        if horizontal:
            stack += [(r0, c0, p, c1), (p + t, c0, r1, c1)]
        else:
            stack += [(r0, c0, r1, p), (r0, p + t, r1, c1)]
    return rooms


def _place_block(
    grid: NDArray[np.bool_], room: Region, height: int, width: int, rng: random.Random
) -> bool:
    """Put a ``height x width`` obstacle block in ``room`` with a free ring around it.

    The block keeps one free cell to the room's edges and to every other obstacle (also
    diagonally), so it can neither close a doorway nor cut the room in two. Returns whether it
    fitted at the drawn position.
    """
    r0, c0, r1, c1 = room
    if r1 - r0 < height + 2 or c1 - c0 < width + 2:
        return False
    r = _randint(rng, r0 + 1, r1 - 1 - height)
    c = _randint(rng, c0 + 1, c1 - 1 - width)
    if grid[r - 1 : r + height + 1, c - 1 : c + width + 1].any():
        return False
    grid[r : r + height, c : c + width] = True
    return True


def _split_lots(region: Region, min_lot: int, max_lot: int, rng: random.Random) -> list[Region]:
    """Cut ``region`` into lots with sides in ``[min_lot, max_lot]`` where possible."""
    lots: list[Region] = []
    stack = [region]
    while stack:
        r0, c0, r1, c1 = stack.pop()
        h, w = r1 - r0, c1 - c0
        if max(h, w) <= max_lot or max(h, w) < 2 * min_lot:
            lots.append((r0, c0, r1, c1))
        elif h >= w:
            p = _randint(rng, r0 + min_lot, r1 - min_lot)
            stack += [(r0, c0, p, c1), (p, c0, r1, c1)]
        else:
            p = _randint(rng, c0 + min_lot, c1 - min_lot)
            stack += [(r0, c0, r1, p), (r0, p, r1, c1)]
    return lots


def _fill_pockets(grid: NDArray[np.bool_], start: tuple[int, int]) -> int:
    """Turn free cells not connected to ``start`` into obstacles; return how many there were."""
    labels, _ = ndimage.label(~grid)  # 4-neighbourhood
    pockets = ~grid & (labels != labels[start])
    grid[pockets] = True
    return int(pockets.sum())


def map_text(grid: NDArray[np.bool_]) -> str:
    """ASCII text of an obstacle mask with ``S`` top-left and ``G`` bottom-right."""
    h, w = grid.shape
    chars = np.full((h, w + 1), ord("."), dtype=np.uint8)
    chars[:, :w][grid] = ord("#")
    chars[:, w] = ord("\n")
    chars[0, 0] = ord("S")
    chars[h - 1, w - 1] = ord("G")
    return chars.tobytes().decode("ascii")


def _finish(grid: NDArray[np.bool_]) -> str:
    h, w = grid.shape
    if grid[0, 0] or grid[h - 1, w - 1]:
        raise RuntimeError("the start or the goal corner is an obstacle")
    _fill_pockets(grid, (0, 0))
    if grid[h - 1, w - 1]:
        raise RuntimeError("the goal cannot be reached from the start")
    return map_text(grid)


def make_rooms100(seed: int = 2024) -> str:
    """The ``rooms100`` map: a 100x100 building of rooms with doorways and furniture."""
    rng = random.Random(seed)
    grid = np.zeros((100, 100), dtype=bool)
    walls = _Walls(min_room=8, thickness=1, door_min=1, door_max=2, second_door=0.3)
    rooms = recursive_division(grid, (0, 0, 100, 100), walls, rng)
    for room in sorted(rooms):
        area = (room[2] - room[0]) * (room[3] - room[1])
        for _ in range(area // 30):
            _place_block(grid, room, _randint(rng, 1, 3), _randint(rng, 1, 4), rng)
    return _finish(grid)


def make_city1000(seed: int = 1000) -> str:
    """The ``city1000`` map: a 1000x1000 city of districts, lots, buildings and parks."""
    rng = random.Random(seed)
    grid = np.zeros((1000, 1000), dtype=bool)
    barriers = _Walls(min_room=110, thickness=3, door_min=4, door_max=10, second_door=0.5)
    districts = recursive_division(grid, (0, 0, 1000, 1000), barriers, rng)
    for district in sorted(districts):
        for lot in _split_lots(district, min_lot=8, max_lot=26, rng=rng):
            r0, c0, r1, c1 = lot
            kind = rng.random()
            if kind < 0.3:  # a building set back from the lot's edges (alleys between lots)
                top, left = _randint(rng, 1, 3), _randint(rng, 1, 3)
                bottom, right = _randint(rng, 1, 3), _randint(rng, 1, 3)
                if r1 - r0 > top + bottom + 1 and c1 - c0 > left + right + 1:
                    grid[r0 + top : r1 - bottom, c0 + left : c1 - right] = True
            elif kind < 0.7:  # a park with trees
                area = (r1 - r0) * (c1 - c0)
                for _ in range(area // 40):
                    size = _randint(rng, 1, 2)
                    _place_block(grid, lot, size, size, rng)
            # otherwise an open plaza
    return _finish(grid)


MAKERS = {"rooms100": make_rooms100, "city1000": make_city1000}


def _shortest_path_length(grid: NDArray[np.bool_]) -> int:
    """Length of a shortest 4-neighbour path from the top-left to the bottom-right corner."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order

    h, w = grid.shape
    free = ~grid.ravel()
    index = np.arange(h * w).reshape(h, w)
    right = (index[:, :-1].ravel(), index[:, 1:].ravel())
    down = (index[:-1, :].ravel(), index[1:, :].ravel())
    src = np.concatenate([right[0], down[0]])
    dst = np.concatenate([right[1], down[1]])
    keep = free[src] & free[dst]
    adj = coo_matrix((np.ones(int(keep.sum())), (src[keep], dst[keep])), shape=(h * w, h * w))
    _, pred = breadth_first_order(adj.tocsr(), 0, directed=False)
    length, node = 0, h * w - 1
    while node != 0:
        node = int(pred[node])
        length += 1
    return length


def _stats(text: str) -> str:
    rows = text.splitlines()
    grid = np.array([np.frombuffer(r.encode(), dtype=np.uint8) for r in rows]) == ord("#")
    h, w = grid.shape
    padded = np.pad(grid, 1, constant_values=True)
    k = padded[:-2, 1:-1].astype(int) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    risky = int((~grid & (k > 0)).sum())
    return (
        f"{h}x{w}: obstacles {grid.mean():.1%}, free {int((~grid).sum())}, "
        f"risky (k >= 1) {risky}, shortest path {_shortest_path_length(grid)} "
        f"(Manhattan {h + w - 2})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("map", choices=sorted(MAKERS))
    parser.add_argument("--out", type=Path, help="output file (.gz: compressed); default stdout")
    parser.add_argument("--stats", action="store_true", help="print statistics to stderr")
    args = parser.parse_args(argv)
    text = MAKERS[args.map]()
    if args.stats:
        print(_stats(text), file=sys.stderr)
    if args.out is None:
        sys.stdout.write(text)
    elif args.out.suffix == ".gz":
        args.out.write_bytes(gzip.compress(text.encode("ascii"), compresslevel=9, mtime=0))
    else:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
