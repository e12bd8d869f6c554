"""Benchmark: the OT-Q paper experiment (OT-Q, 5 seeds x 500 episodes), literal vs otsafe.

Side by side in one run:

1. ``literal``: ``benchmarks/literal_otq.py`` (Gymnasium step loop, dense transition matrix and
   dense solve for P^pi, ``ot.emd`` on the dense cost), seeds one after another;
2. ``otsafe dense``: otsafe with the same OT solver (``ot_method="dense"``), one process; its
   metrics must equal the literal ones (this is checked, and the run fails otherwise);
3. ``otsafe``: otsafe's defaults (exact tripartite OT), one process;
4. ``otsafe, N workers``: the same, seeds in N processes (the runner's default on this machine).

Also reports where the time goes (step loop, P^pi, OT) as medians per episode, and how closely the
two exact OT solvers agree on W2 for the same P^pi.

Usage: ``python benchmarks/bench_otq.py [--seeds 5] [--episodes 500] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from literal_otq import run_literal
from otsafe.agents import OTQLearning
from otsafe.agents.tabular import OTMethod
from otsafe.envs import GridWorld
from otsafe.experiments.config import OTQConfig, resolve_config
from otsafe.experiments.runner import execute_jobs, make_jobs
from otsafe.transport import ExactOT, GridExactOT, sqeuclidean_cost

KEYS = ("length", "collisions", "risky_visits", "env_return", "bonus", "success")


class Timed:
    """Wrap a callable and accumulate the seconds of each call."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls: list[float] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.calls.append(time.perf_counter() - t)


def run_otsafe(
    seed: int, episodes: int, beta: float, ot_method: OTMethod
) -> tuple[list[Any], dict[str, Any]]:
    env = GridWorld("paper", max_steps=500)
    agent = OTQLearning(env, beta=beta, seed=seed, ot_method=ot_method)
    chain = Timed(agent._chain.state_distribution)
    solve = Timed(agent._ot.solve)
    object.__setattr__(agent._chain, "state_distribution", chain)  # frozen dataclass
    agent._ot.solve = solve  # type: ignore[method-assign]
    per_episode = []
    metrics = []
    for _ in range(episodes):
        t = time.perf_counter()
        metrics.append(agent.run_episode())
        per_episode.append(time.perf_counter() - t)
    return metrics, {"episode": per_episode, "chain": chain.calls, "ot": solve.calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--beta", type=float, default=OTQLearning.DEFAULT_BETA)
    args = parser.parse_args()
    seeds = range(args.seeds)
    n_ep = args.seeds * args.episodes
    rows = []

    # 1) literal
    timings: dict[str, float] = {}
    t = time.perf_counter()
    literal = [run_literal(s, args.episodes, beta=args.beta, timings=timings) for s in seeds]
    t_literal = time.perf_counter() - t
    rows.append(("literal (Gymnasium loop, dense solve, ot.emd)", t_literal))

    # 2) otsafe with POT's dense solver: must reproduce the literal metrics
    t = time.perf_counter()
    dense_runs = [run_otsafe(s, args.episodes, args.beta, "dense") for s in seeds]
    t_dense = time.perf_counter() - t
    rows.append(("otsafe, ot_method=dense, 1 process", t_dense))
    # Same trajectories: every discrete metric equal; bonus and W2 equal up to rounding (P^pi is
    # solved by a banded LU in otsafe and a dense LU in the literal version).
    mismatches = 0
    bonus_dev = w2_dev = 0.0
    for lit, (fast, _) in zip(literal, dense_runs, strict=True):
        for a, b in zip(lit, fast, strict=True):
            mismatches += any(a[k] != getattr(b, k) for k in KEYS if k != "bonus")
            bonus_dev = max(bonus_dev, abs(a["bonus"] - b.bonus) / max(abs(a["bonus"]), 1e-300))
            w2_dev = max(w2_dev, abs(a["w2"] - b.w2) / max(a["w2"], 1e-300))

    # 3) otsafe defaults, one process
    t = time.perf_counter()
    tri_runs = [run_otsafe(s, args.episodes, args.beta, "tripartite") for s in seeds]
    t_tri = time.perf_counter() - t
    rows.append(("otsafe default (tripartite exact OT), 1 process", t_tri))

    # 4) otsafe defaults through the runner, N processes
    config = resolve_config(
        "otq-paper",
        sets=[
            "experiment.methods=[ot-q]",
            f"experiment.seeds={args.seeds}",
            f"experiment.episodes={args.episodes}",
            f"agent.beta={args.beta}",
            f"experiment.workers={args.workers}",
        ],
    )
    assert isinstance(config, OTQConfig)
    t = time.perf_counter()
    pooled = execute_jobs(make_jobs(config), args.workers)
    t_pool = time.perf_counter() - t
    rows.append((f"otsafe default, {args.workers} worker processes (runner)", t_pool))
    pool_same = all(
        np.array_equal(res.metrics["length"], [m.length for m in run])
        and np.array_equal(res.metrics["collisions"], [m.collisions for m in run])
        for res, (run, _) in zip(pooled, tri_runs, strict=False)
    )

    # W2 agreement of the two exact solvers on the same P^pi (the literal run's policies).
    env = GridWorld("paper", max_steps=500)
    agent = OTQLearning(env, beta=args.beta, seed=0)
    support = np.flatnonzero(env.grid.reachable.ravel())
    cells = env.grid.coordinates[support]
    dense_solver, tri_solver = ExactOT(sqeuclidean_cost(cells)), GridExactOT(cells)
    w2_rel = 0.0
    for _ in range(min(args.episodes, 200)):
        agent.run_episode()
        p = agent.last_state_distribution
        assert p is not None
        p_pi, p_s = p[support], env.risk_distribution[support]
        c1, c2 = dense_solver.solve(p_pi, p_s).cost, tri_solver.solve(p_pi, p_s).cost
        w2_rel = max(w2_rel, abs(math.sqrt(c1) - math.sqrt(c2)) / math.sqrt(c1))

    def med(xs: list[float]) -> str:
        return f"{1e3 * statistics.median(xs):.3f}"

    print(
        f"# OT-Q paper experiment: OT-Q, {args.seeds} seeds x {args.episodes} episodes, "
        f"paper map, beta={args.beta:g}"
    )
    print(
        f"machine: {platform.machine()}, Python {platform.python_version()}, "
        f"{len(__import__('os').sched_getaffinity(0))} cores\n"
    )
    print("| implementation | wall time (s) | speed-up vs literal |")
    print("|---|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} | {t_literal / sec:.1f}x |")
    print()
    print("Where the time goes (total seconds over the experiment; median ms per episode):\n")
    print("| phase | literal | otsafe dense | otsafe default |")
    print("|---|---:|---:|---:|")
    d_chain = [x for _, tm in dense_runs for x in tm["chain"]]
    d_ot = [x for _, tm in dense_runs for x in tm["ot"]]
    d_ep = [x for _, tm in dense_runs for x in tm["episode"]]
    r_chain = [x for _, tm in tri_runs for x in tm["chain"]]
    r_ot = [x for _, tm in tri_runs for x in tm["ot"]]
    r_ep = [x for _, tm in tri_runs for x in tm["episode"]]
    lit_loop = timings["step loop"]
    d_loop = sum(d_ep) - sum(d_chain) - sum(d_ot)
    r_loop = sum(r_ep) - sum(r_chain) - sum(r_ot)
    print(f"| step loop + bookkeeping | {lit_loop:.2f} s | {d_loop:.2f} s | {r_loop:.2f} s |")
    lit_chain = timings["P^pi (chain)"]
    print(
        f"| P^pi (chain solve) | {lit_chain:.2f} s ({1e3 * lit_chain / n_ep:.3f} ms/ep) | "
        f"{sum(d_chain):.2f} s ({med(d_chain)} ms) | {sum(r_chain):.2f} s ({med(r_chain)} ms) |"
    )
    print(
        f"| OT plan | {timings['OT plan']:.2f} s ({1e3 * timings['OT plan'] / n_ep:.3f} ms/ep) | "
        f"{sum(d_ot):.2f} s ({med(d_ot)} ms) | {sum(r_ot):.2f} s ({med(r_ot)} ms) |"
    )
    print()
    print(
        f"- otsafe (ot_method=dense) vs literal: {mismatches} of {n_ep} episodes differ in length, "
        f"collisions, risky visits, return or success; bonus and W2 agree to a relative "
        f"{bonus_dev:.1e} and {w2_dev:.1e} (rounding: banded vs dense LU for P^pi)."
    )
    print(
        f"- runner with {args.workers} workers reproduces the 1-process default run: {pool_same}."
    )
    print(
        f"- W2 from the tripartite solver vs ot.emd on the same P^pi (200 episodes): max relative "
        f"difference {w2_rel:.1e}."
    )
    if mismatches or bonus_dev > 1e-9 or w2_dev > 1e-9:
        raise SystemExit("otsafe (dense) does not reproduce the literal implementation")


if __name__ == "__main__":
    main()
