"""Time the grid-map and gridworld operations on large maps.

Run: ``python scripts/bench_large_maps.py rooms100 city1000`` (built-in names or map files).
Each operation is timed on fresh objects (cached properties and the built-in map cache are
cleared), best of ``--repeat`` runs; the table lists milliseconds per operation (microseconds
for ``step`` and ``reset``) and the size of a rendered image in MB. It also runs against the
code before the large-map work (there ``render`` is uncapped: 732 MB on ``city1000``), given
map files: ``python scripts/make_large_maps.py city1000 --out /tmp/city1000.txt``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from otsafe.envs import gridmap
from otsafe.envs.gridmap import GridMap, load_map
from otsafe.envs.gridworld import GridWorld


def _best(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``fn()`` over ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _recompute(grid: GridMap, name: str) -> object:
    """Evaluate the cached property ``name`` of ``grid`` again."""
    grid.__dict__.pop(name, None)
    return getattr(grid, name)


def bench(spec: str, repeat: int = 3, n_steps: int = 10_000) -> dict[str, float]:
    """Milliseconds per operation on the map ``spec`` (and microseconds per step)."""
    grid = load_map(spec)

    def load_uncached() -> GridMap:
        cache_clear = getattr(gridmap, "_load_builtin", None)  # absent before the cache existed
        if cache_clear is not None:
            cache_clear.cache_clear()
        return load_map(spec)

    def fresh() -> GridMap:
        return GridMap(grid.obstacles, grid.start, grid.goal, grid.name)

    g = fresh()
    ms: dict[str, float] = {
        "load_map": _best(load_uncached, repeat),
        "GridMap()": _best(fresh, repeat),
        "reachable": _best(lambda: _recompute(g, "reachable"), repeat),
        "blocked_neighbours": _best(lambda: _recompute(g, "blocked_neighbours"), repeat),
        "coordinates": _best(lambda: _recompute(g, "coordinates"), repeat),
        "safety_values": _best(g.safety_values, repeat),
        "risk_distribution": _best(g.risk_distribution, repeat),
        "transitions": _best(lambda: _recompute(g, "transitions"), repeat),
        "to_ascii": _best(g.to_ascii, repeat),
        "GridWorld()": _best(lambda: GridWorld(fresh()), repeat),
    }
    ms = {k: 1e3 * v for k, v in ms.items()}
    env = GridWorld(grid, render_mode="rgb_array", max_steps=n_steps + 1)
    t0 = time.perf_counter()
    env.render()
    first_render = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 4, size=n_steps)
    env.reset(seed=0)
    t0 = time.perf_counter()
    for a in actions:
        env.step(a)
    ms["step (us)"] = 1e6 * (time.perf_counter() - t0) / n_steps
    ms["reset (us)"] = 1e6 * _best(lambda: env.reset(), 100)
    ms["first render"] = 1e3 * first_render
    ms["render"] = 1e3 * _best(env.render, repeat)
    image = env.render()
    assert image is not None
    ms["render MB"] = image.nbytes / 2**20
    print(f"{grid.name}: {grid.shape[0]}x{grid.shape[1]}, image {image.shape}")
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("maps", nargs="+")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = {spec: bench(spec, args.repeat) for spec in args.maps}
    keys = list(next(iter(results.values())))
    print(f"{'operation':<20}" + "".join(f"{spec[-16:]:>18}" for spec in results))
    for key in keys:
        print(f"{key:<20}" + "".join(f"{r[key]:>18.2f}" for r in results.values()))


if __name__ == "__main__":
    main()
