"""Regenerate the built-in ``maze50`` map (provenance of ``src/otsafe/envs/maps/maze50.txt``).

A recursive-backtracker maze on a 24x24 lattice of rooms (49x49 cells), padded with one wall row
and column to 50x50, with 12% of the remaining interior walls opened to create loops.
Run: ``python scripts/make_maze.py > src/otsafe/envs/maps/maze50.txt``.
"""

from __future__ import annotations

import numpy as np


def make_maze(rooms: int = 24, seed: int = 7, open_fraction: float = 0.12) -> str:
    rng = np.random.default_rng(seed)
    size = 2 * rooms + 1
    grid = np.ones((size, size), dtype=bool)  # True = wall
    seen = np.zeros((rooms, rooms), dtype=bool)
    stack = [(0, 0)]
    seen[0, 0] = True
    grid[1, 1] = False
    while stack:
        r, c = stack[-1]
        options = [
            (r + dr, c + dc)
            for dr, dc in ((-1, 0), (1, 0), (0, 1), (0, -1))
            if 0 <= r + dr < rooms and 0 <= c + dc < rooms and not seen[r + dr, c + dc]
        ]
        if not options:
            stack.pop()
            continue
        nr, nc = options[rng.integers(len(options))]
        seen[nr, nc] = True
        grid[2 * nr + 1, 2 * nc + 1] = False
        grid[r + nr + 1, c + nc + 1] = False
        stack.append((nr, nc))
    # Open some interior walls between two rooms to create loops.
    walls = [
        (r, c)
        for r in range(1, size - 1)
        for c in range(1, size - 1)
        if grid[r, c] and ((r % 2 == 1) != (c % 2 == 1))
    ]
    for k in rng.choice(len(walls), size=int(open_fraction * len(walls)), replace=False):
        grid[walls[k]] = False
    full = np.ones((size + 1, size + 1), dtype=bool)
    full[:size, :size] = grid
    chars = np.where(full, "#", ".")
    chars[1, 1] = "S"
    chars[size - 2, size - 2] = "G"
    return "\n".join("".join(row) for row in chars) + "\n"


if __name__ == "__main__":
    print(make_maze(), end="")
