"""Time per OT-Q episode on the large maps, split into the step loop, P^pi and the OT solve.

Run (docs/benchmarks.md)::

    python benchmarks/bench_otq_large.py --map rooms100 --episodes 10 --epsilons 1 2 --exact
    python benchmarks/bench_otq_large.py --map city1000 --episodes 3 --epsilons 1 --device cuda \
        --mode truncated --max-steps 1000000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from otsafe.agents.tabular import OTQLearning
from otsafe.envs.gridworld import GridWorld


class Timer:
    """Calls ``fn`` and adds the wall time to ``total``; with ``label``, prints each call's time
    to stderr as it ends (a city1000 episode on the CPU takes long enough to need it)."""

    def __init__(self, fn: Callable[..., Any], label: str | None = None) -> None:
        self.fn = fn
        self.label = label
        self.total = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        self.total += seconds
        if self.label is not None:
            info = getattr(out, "info", None)
            detail = "" if info is None else f", {info.iterations} iterations"
            print(f"  {self.label}: {seconds:.2f} s{detail}", file=sys.stderr, flush=True)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", default="rooms100")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="visits", choices=["visits", "truncated"])
    parser.add_argument("--max-steps", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--phases", action="store_true", help="print every P^pi and OT solve time as it ends"
    )
    parser.add_argument(
        "--exact", action="store_true", help="also time exact OT (multiscale and tripartite)"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    env = GridWorld(args.map, max_steps=args.max_steps)
    print(
        "| map | eps | episode (s), median | P^pi (s) | OT solve (s) | Sinkhorn iterations | "
        "steps per episode |"
    )
    print("|---|---|---|---|---|---|---|")
    exact = ["multiscale", "tripartite"] if args.exact else []
    runs: list[float | str] = [*args.epsilons, *exact]
    for eps in runs:
        agent = OTQLearning(
            env,
            seed=0,
            ot_method=eps if isinstance(eps, str) else "sinkhorn",
            ot_epsilon=1.0 if isinstance(eps, str) else eps,
            ot_tol=args.tol,
            ot_device=args.device,
            state_distribution=args.mode,
        )
        # Wrap the chain solve and the OT solve in timers (instance attributes shadow methods).
        chain_timer = Timer(agent._chain.state_distribution, "P^pi" if args.phases else None)
        ot_timer = Timer(agent._ot.solve, "OT solve" if args.phases else None)
        object.__setattr__(agent._chain, "state_distribution", chain_timer)
        agent._ot.solve = ot_timer  # type: ignore[method-assign]
        times: dict[str, list[float]] = {"episode": [], "chain": [], "ot": []}
        iterations, steps = [], []
        for _ in range(args.episodes):
            chain_timer.total = ot_timer.total = 0.0
            t0 = time.perf_counter()
            metrics = agent.run_episode()
            times["episode"].append(time.perf_counter() - t0)
            times["chain"].append(chain_timer.total)
            times["ot"].append(ot_timer.total)
            iterations.append(getattr(getattr(agent.last_plan, "info", None), "iterations", 0))
            steps.append(metrics.length)
            print(  # progress, for long episodes (stderr: the table stays clean)
                f"episode {len(steps)}: {times['episode'][-1]:.2f} s (P^pi "
                f"{times['chain'][-1]:.2f} s, OT {times['ot'][-1]:.2f} s, "
                f"{iterations[-1]} iterations, {metrics.length} steps)",
                file=sys.stderr,
                flush=True,
            )
        med = {k: statistics.median(v) for k, v in times.items()}
        label = f"exact ({eps})" if isinstance(eps, str) else f"{eps:g}"
        print(
            f"| {args.map} | {label} | {med['episode']:.2f} | {med['chain']:.2f} | "
            f"{med['ot']:.2f} | {'-' if isinstance(eps, str) else statistics.median(iterations)} | "
            f"{statistics.median(steps):.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
