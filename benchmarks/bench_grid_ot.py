"""Grid OT at scale: POT's exact ``ot.emd`` vs otsafe's exact tripartite solver vs grid Sinkhorn.

Every measurement runs in a fresh subprocess, so its peak memory (resident set size above the
process's size after imports and input creation) is its own. The test pair on an H x W grid is a
source concentrated near one corner (a Gaussian blob plus a 1% floor, like an early OT-Q policy
distribution) and a target with smooth structure (like a safety distribution): both positive
everywhere. W2^2 errors are relative to the exact solution (otsafe's multiscale solver where it
runs, else the tripartite one).

Run (docs/benchmarks.md)::

    python benchmarks/bench_grid_ot.py --sizes 30 50 100 256 --epsilons 1 4 16

and on a GPU machine ``--device cuda --sizes 100 256 1000 --no-exact``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray


def test_pair(h: int, w: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """A corner-concentrated source and a structured target on an h x w grid (both positive)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.exp(-((yy - 0.2 * h) ** 2 + (xx - 0.3 * w) ** 2) / (2 * (0.15 * h) ** 2)) + 0.01
    b = 1 + 0.5 * np.sin(xx / w * 6) * np.cos(yy / h * 4) + 0.1 * rng.random((h, w))
    return a / a.sum(), b / b.sum()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (in its own process)."""
    size, method = int(spec["size"]), spec["method"]
    a, b = test_pair(size, size)
    if method == "pot-emd":
        from otsafe.transport._pot import ot
        from otsafe.transport.costs import grid_coordinates, sqeuclidean_cost

        base = _rss_mb()
        t0 = time.perf_counter()
        cost_matrix = sqeuclidean_cost(grid_coordinates((size, size)))
        value = float(ot.emd2(a.ravel(), b.ravel(), cost_matrix, numItermax=100_000_000))
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "peak_mb": _rss_mb() - base, "cost": value}
    if method in ("tripartite", "multiscale"):
        from otsafe.transport import GridExactOT, GridMultiscaleOT, grid_coordinates

        solver_type = GridExactOT if method == "tripartite" else GridMultiscaleOT
        base = _rss_mb()
        t0 = time.perf_counter()
        exact = solver_type(grid_coordinates((size, size))).solve(a.ravel(), b.ravel())
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "peak_mb": _rss_mb() - base, "cost": exact.cost}
    import torch

    from otsafe.transport import GridSinkhorn

    torch.set_num_threads(int(spec["threads"]))

    def make_solver() -> GridSinkhorn:
        return GridSinkhorn(
            (size, size),
            epsilon=float(spec["epsilon"]),
            tol=float(spec["tol"]),
            device=spec["device"],
            dtype=spec["dtype"],
        )

    solver = make_solver()
    if spec["device"] == "cuda":
        # Warm-up (CUDA context, kernels, cuBLAS handles) on a separate solver, so that the timed
        # solve starts from the default block sizes, like a first solve on the CPU.
        make_solver().solve(a, b)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()
    t0 = time.perf_counter()
    plan = solver.solve(a, b)
    cost = plan.cost
    if spec["device"] == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if spec["device"] == "cuda" else _rss_mb() - base
    )
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "cost": cost,
        "iterations": plan.info.iterations,
        "marginal_error": plan.info.marginal_error,
    }


def measure(spec: dict[str, Any], repeats: int) -> dict[str, Any]:
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = dict(runs[-1])
    result["seconds"] = statistics.median(r["seconds"] for r in runs)
    result["peak_mb"] = max(r["peak_mb"] for r in runs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 50, 100, 256])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pot-max", type=int, default=100, help="largest size for POT's ot.emd")
    parser.add_argument(
        "--tripartite-max", type=int, default=100, help="largest size for the tripartite solver"
    )
    parser.add_argument(
        "--multiscale-max", type=int, default=256, help="largest size for the multiscale solver"
    )
    parser.add_argument("--no-exact", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    print(
        "| grid | cells | method | eps | time (s) | peak MB | iterations | marginal err | "
        "W2^2 | rel. err vs exact | speed-up vs POT emd |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        exact = pot = None
        rows: list[tuple[str, str, dict[str, Any]]] = []
        if size <= args.pot_max and not args.no_exact:
            repeats = 1 if size >= 100 else args.repeats
            pot = measure({"size": size, "method": "pot-emd"}, repeats)
            rows.append(("POT ot.emd (exact)", "-", pot))
        for method, largest in (
            ("tripartite", args.tripartite_max),
            ("multiscale", args.multiscale_max),
        ):
            if size <= largest and not args.no_exact:
                repeats = 1 if size >= 100 else args.repeats
                exact = measure({"size": size, "method": method}, repeats)
                rows.append((f"otsafe {method} (exact)", "-", exact))
        for eps in args.epsilons:
            spec = {
                "size": size,
                "method": "sinkhorn",
                "epsilon": eps,
                "tol": args.tol,
                "device": args.device,
                "dtype": args.dtype,
                "threads": args.threads,
            }
            label = f"grid Sinkhorn ({args.device}, {args.dtype})"
            rows.append((label, f"{eps:g}", measure(spec, args.repeats)))
        for label, eps_s, r in rows:
            rel = f"{(r['cost'] - exact['cost']) / exact['cost']:+.2%}" if exact else "-"
            speed = f"{pot['seconds'] / r['seconds']:.0f}x" if pot else "-"
            its = str(r.get("iterations", "-"))
            err = f"{r['marginal_error']:.1e}" if "marginal_error" in r else "exact"
            print(
                f"| {size}x{size} | {size * size} | {label} | {eps_s} | {r['seconds']:.3f} | "
                f"{r['peak_mb']:.0f} | {its} | {err} | {r['cost']:.2f} | {rel} | {speed} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
