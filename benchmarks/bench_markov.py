"""Benchmark: the policy state distribution P^pi (``otsafe.markov``) on 10^4-10^6-cell grids.

For each size N, two N x N maps (open, and ~20% rectangular obstacles with start and goal in
opposite corners) and two policies (uniform, epsilon = 1; epsilon-greedy with epsilon = 0.1 around
the shortest-path greedy policy), the table reports per method the median wall time, the peak
memory and two relative residuals ``||e0 - (I - Q)^T n||_2`` (``||e0|| = 1``) of the expected
visits ``n``: the solver's own (:attr:`otsafe.markov.ChainModel.last_solve`, where it computes
one) and one recomputed here from the returned distribution, ``n = P / P(goal)`` (the goal is
entered exactly once per episode). The second also carries the rounding of ``P``'s goal entry,
``n . r`` summed over all cells (``1 - sum(residual)`` in exact arithmetic), which grows with the
number of cells.

Methods: ``spsolve`` (SuperLU, COLAMD + partial pivoting: the path ``"auto"`` took before for
bandwidth > 64), ``lu`` (nested-dissection ordered SuperLU, the new ``"auto"`` above 4096
cells), ``mmd`` (SuperLU's MMD_AT_PLUS_A ordering with diagonal pivots, for comparison; not a
library option), ``truncated`` (sparse mat-vec recursion, ``--max-steps``, default 2 (H + W)),
and with ``--device`` the torch path for both modes.

Memory: on Linux, the peak resident set size above the pre-call one (the kernel's high-water
mark is reset through ``/proc/self/clear_refs`` before each call, so SuperLU's and torch's C
allocations count); elsewhere ``tracemalloc``'s peak (Python/NumPy allocations only). CUDA rows
add ``torch.cuda.max_memory_allocated``.

Usage::

    python benchmarks/bench_markov.py --sizes 100 256 1000 --repeats 3 [--device cuda]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import NDArray
from scipy.sparse import csgraph

from otsafe.envs.gridmap import GridMap
from otsafe.markov import ChainModel, epsilon_greedy_policy

_PROC_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


# ------------------------------------------------------------------------------ memory probes
def _status_mib(key: str) -> float:
    with open(_PROC_STATUS) as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def _rss_probe_available() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")
        _status_mib("VmHWM:")
    except OSError:
        return False
    return True


def measure(fn: Callable[[], Any], use_rss: bool) -> tuple[float, float, Any]:
    """Run ``fn`` once: wall time (s), peak memory above the start (MiB), result."""
    gc.collect()
    if use_rss:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        base = _status_mib("VmRSS:")
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        return dt, _status_mib("VmHWM:") - base, out
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return dt, peak, out


# ---------------------------------------------------------------------------- maps, policies
def make_grid(n: int, obstacles: bool, seed: int = 0) -> GridMap:
    """An n x n map, start (0, 0), goal (n-1, n-1); optionally ~20% rectangular obstacles."""
    mask = np.zeros((n, n), dtype=bool)
    if obstacles:
        rng = np.random.default_rng(seed)
        side = max(2, n // 20)
        while mask.mean() < 0.2:
            h, w = rng.integers(1, side + 1, size=2)
            r, c = rng.integers(0, n, size=2)
            mask[r : r + h, c : c + w] = True
        mask[:2, :2] = False
        mask[-2:, -2:] = False
    # GridMap raises MapError if the goal is not reachable from the start.
    return GridMap(obstacles=mask, start=(0, 0), goal=(n - 1, n - 1), name=f"{n}x{n}")


def goal_distance(grid: GridMap) -> NDArray[np.float64]:
    """Shortest-path distance (moves) from every cell to the goal; 0 where unreachable."""
    nxt, n = grid.transitions.next_state, grid.n_cells
    src = np.repeat(np.arange(n), 4)
    keep = ~grid.obstacles.ravel()[src] & (src != nxt.ravel())
    adj = sp.csr_array((np.ones(int(keep.sum())), (src[keep], nxt.ravel()[keep])), shape=(n, n))
    dist = csgraph.shortest_path(adj, directed=False, unweighted=True, indices=grid.goal_index)
    return np.asarray(np.where(np.isfinite(dist), dist, 0.0), dtype=np.float64)


def policies(grid: GridMap) -> dict[str, NDArray[np.float64]]:
    q = -goal_distance(grid)[grid.transitions.next_state]  # greedy = a shortest path
    return {
        "uniform (eps=1)": np.full((grid.n_cells, 4), 0.25),
        "greedy eps=0.1": epsilon_greedy_policy(q, 0.1),
    }


# ---------------------------------------------------------------------------------- checks
def visits_residual(
    model: ChainModel, policy: NDArray[np.float64], p: NDArray[np.float64]
) -> float:
    """||e0 - (I - Q)^T n||_2 with n = P / P(goal) on the transient cells (||e0|| = 1)."""
    n_t = model.transient.size
    goal = p[model.grid.goal_index]
    if goal <= 0:
        return float("nan")
    n = p[model.transient] / goal
    q_values = policy[model.transient].ravel()[model.stay_mask]
    qt = sp.csr_array((q_values, (model.cols, model.rows)), shape=(n_t, n_t))
    r = n - qt @ n
    r[int(np.searchsorted(model.transient, model.grid.start_index))] -= 1.0
    return float(np.sqrt(np.sum(r * r)))


def mmd_state_distribution(model: ChainModel, policy: NDArray[np.float64]) -> NDArray[np.float64]:
    """P^pi by SuperLU with MMD_AT_PLUS_A and diagonal pivots (comparison only)."""
    n_t = model.transient.size
    flat = policy[model.transient].ravel()
    q_values = flat[model.stay_mask]
    diag = np.arange(n_t)
    a = sp.csc_array(
        (
            np.concatenate([np.ones(n_t), -q_values]),
            (np.concatenate([diag, model.cols]), np.concatenate([diag, model.rows])),
        ),
        shape=(n_t, n_t),
    )
    b = np.zeros(n_t)
    b[int(np.searchsorted(model.transient, model.grid.start_index))] = 1.0
    lu = spla.splu(
        a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
    )
    visits = lu.solve(b)
    to_goal = flat.copy()
    to_goal[model.stay_mask] = 0.0
    out = np.zeros(model.grid.n_cells)
    out[model.transient] = visits
    out[model.grid.goal_index] = float(visits @ to_goal.reshape(n_t, 4).sum(axis=1))
    return np.asarray(out / out.sum(), dtype=np.float64)


Case = tuple[str, str, Callable[[], NDArray[np.float64]]]


def build_cases(
    model: ChainModel,
    pi: NDArray[np.float64],
    methods: list[str],
    max_steps: int,
    device: str | None,
) -> list[Case]:
    """(mode, method label, call) for every method asked for."""
    cases: list[Case] = []
    for method in methods:
        if method == "spsolve":
            cases.append(
                ("visits", method, partial(model.state_distribution, pi, solver="spsolve"))
            )
        elif method == "lu":
            cases.append(("visits", method, partial(model.state_distribution, pi, solver="lu")))
        elif method == "mmd":
            cases.append(("visits", "mmd", partial(mmd_state_distribution, model, pi)))
        else:
            call = partial(model.state_distribution, pi, mode="truncated", max_steps=max_steps)
            cases.append(("truncated", f"numpy, T={max_steps}", call))
    if device is not None:
        cases.append(
            ("visits", f"torch:{device}", partial(model.state_distribution, pi, device=device))
        )
        call = partial(
            model.state_distribution, pi, mode="truncated", max_steps=max_steps, device=device
        )
        cases.append(("truncated", f"torch:{device}, T={max_steps}", call))
    return cases


# -------------------------------------------------------------------------------------- main
def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    import scipy

    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}); "
        f"numpy {np.__version__}, scipy {scipy.__version__}; load average "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 256, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=["spsolve", "lu", "mmd", "truncated"],
        default=["spsolve", "lu", "mmd", "truncated"],
        help="NumPy/SciPy methods (the torch rows come with --device)",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="default: 2 (H + W)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's own)"
    )
    parser.add_argument(
        "--maps", nargs="+", choices=["open", "obstacles"], default=["open", "obstacles"]
    )
    parser.add_argument(
        "--policies", nargs="+", choices=["uniform", "greedy"], default=["uniform", "greedy"]
    )
    args = parser.parse_args()
    use_rss = _rss_probe_available()
    mem_label = "peak RSS delta (MiB)" if use_rss else "tracemalloc peak (MiB)"
    torch: Any = None
    if args.device is not None:
        import torch as torch_module

        torch = torch_module
        if args.threads is not None:
            torch.set_num_threads(args.threads)

    print(f"Machine: {machine_line()}\n")
    setup_rows: list[str] = []
    rows: list[str] = []
    for size in args.sizes:
        for kind in args.maps:
            t = time.perf_counter()
            grid = make_grid(size, obstacles=kind == "obstacles")
            t_grid = time.perf_counter() - t
            t = time.perf_counter()
            _ = grid.transitions
            t_trans = time.perf_counter() - t
            t = time.perf_counter()
            model = ChainModel.from_grid(grid)
            t_model = time.perf_counter() - t
            t = time.perf_counter()
            model._nd_order()  # the ordering "lu" computes and caches on first use
            t_order = time.perf_counter() - t
            setup_rows.append(
                f"| {size} | {kind} | {model.transient.size} | {t_grid:.2f} | {t_trans:.2f} | "
                f"{t_model:.2f} | {t_order:.2f} |"
            )
            max_steps = args.max_steps or 2 * sum(grid.shape)
            for pol_name, pi in policies(grid).items():
                if pol_name.split()[0] not in args.policies:
                    continue
                cases = build_cases(model, pi, args.methods, max_steps, args.device)
                for mode, label, fn in cases:
                    times, mems, gpu = [], [], []
                    out: NDArray[np.float64] | None = None
                    error = ""
                    for _ in range(args.repeats):
                        if torch is not None and args.device == "cuda":
                            torch.cuda.synchronize()
                            torch.cuda.reset_peak_memory_stats()
                        try:
                            dt, mem, out = measure(fn, use_rss)
                        except Exception as exc:  # report, keep benchmarking
                            error = f"{type(exc).__name__}: {str(exc)[:60]}"
                            break
                        times.append(dt)
                        mems.append(mem)
                        if torch is not None and args.device == "cuda":
                            gpu.append(torch.cuda.max_memory_allocated() / 2**20)
                    if error or out is None:
                        rows.append(
                            f"| {size} | {kind} | {model.transient.size} | {pol_name} | {mode} | "
                            f"{label} | failed | | | {error} |"
                        )
                        print(rows[-1], file=sys.stderr, flush=True)  # progress
                        continue
                    info = model.last_solve
                    own = "n/a"
                    if mode == "visits":
                        res = f"{visits_residual(model, pi, out):.1e}"
                        fresh = label in ("lu", "spsolve") or label.startswith("torch")
                        if fresh and info is not None and np.isfinite(info.residual):
                            own = f"{info.residual:.1e}"
                        if label.startswith("torch") and info is not None:
                            label += f" ({info.method}, {info.iterations} mat-vecs)"
                    else:
                        res = "n/a"
                    mem_txt = f"{max(mems):.0f}"
                    if gpu:
                        mem_txt += f" (GPU {max(gpu):.0f})"
                    rows.append(
                        f"| {size} | {kind} | {model.transient.size} | {pol_name} | {mode} | "
                        f"{label} | {statistics.median(times):.3f} | {mem_txt} | {own} | {res} |"
                    )
                    print(rows[-1], file=sys.stderr, flush=True)  # progress
            del model, grid
            gc.collect()

    print("\nSetup cost (s): GridMap (incl. reachability), transitions, from_grid, ND ordering\n")
    print("| size | map | transient cells | GridMap | transitions | from_grid | ND order |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    print("\n".join(setup_rows))
    print(f"\nP^pi, median of {args.repeats} (memory: {mem_label}, max over repeats)\n")
    print(
        f"| size | map | cells | policy | mode | method | median time (s) | {mem_label} | "
        "solver's residual | residual of P |"
    )
    print("|---:|---|---:|---|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\nLoad average at the end: {machine_line().rsplit('load average ', 1)[1]}")


if __name__ == "__main__":
    main()
