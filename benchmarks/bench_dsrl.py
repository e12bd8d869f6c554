"""Benchmark: DSRL training throughput, otsafe's QP layer vs the same pipeline on cvxpylayers.

Side by side in one run, the identical DSRL training loop on the Dubins car (the ``dsrl-dubins``
preset's agent, environment and safety layer: nominal QP, worst-case ascent, QP with the worst
case, replay updates through the QP), once with ``solve_qp`` (native) and once with the QP on the
cvxpylayers backend. It counts environment steps per second, updates included, after
``learning_starts``. cvxpylayers runs with its default solver tolerances (the fast setting; its
solutions are then about 1e-4 off) and, optionally (``--tight``), with the 1e-10 tolerances of
otsafe's reference backend.

A last row times the same DDPG with no safety layer at all (``ddpg``): its ratio to the
cvxpylayers row is the ceiling of any speed-up a faster QP could bring.

Usage: ``python benchmarks/bench_dsrl.py [--steps 200] [--tight]``.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from otsafe.experiments.config import resolve_config
from otsafe.experiments.dsrl_config import DSRLConfig
from otsafe.experiments.dsrl_runner import make_agent, make_env
from otsafe.safety import qp as qp_module


def throughput(backend: str, steps: int, warmup: int, method: str = "dsrl") -> float:
    """Environment steps per second of training (acting + one update per step)."""
    cfg = resolve_config(
        "dsrl-dubins",
        sets=[
            "safety.weight=null",  # cvxpylayers' backend takes no QP weight: same for both
            f"safety.qp_backend={backend}",
            f"agent.learning_starts={warmup}",
            "agent.batch_size=128",
        ],
    )
    assert isinstance(cfg, DSRLConfig)
    env = make_env(cfg)
    agent = make_agent(cfg, env, method, seed=0)
    obs, _ = env.reset(seed=0)
    base = env.unwrapped

    def step() -> None:
        nonlocal obs
        state = np.asarray(base.safety_state(), dtype=np.float64)
        action, _ = agent.act(obs, state)
        nxt, reward, term, trunc, _ = env.step(action.astype(np.float32))
        agent.observe(
            obs=obs,
            state=state,
            action=action,
            reward=float(reward),
            next_obs=nxt,
            next_state=np.asarray(base.safety_state(), dtype=np.float64),
            done=float(term),
        )
        agent.update()
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()

    for _ in range(warmup):  # fill the buffer (acting only, no updates yet)
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--cvx-steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--tight", action="store_true", help="also time cvxpylayers at 1e-10")
    args = parser.parse_args()
    torch.set_num_threads(1)
    native = throughput("native", args.steps, args.warmup)
    default_args = {"eps_abs": 1e-4, "eps_rel": 1e-4}  # SCS's defaults
    tight_args = dict(qp_module.CVXPYLAYERS_SOLVER_ARGS)
    # The ceiling of any speed-up: the same DDPG with no safety layer at all.
    ceiling = throughput("native", args.steps, args.warmup, method="ddpg")
    rows = [("otsafe solve_qp (exact)", native)]
    qp_module.CVXPYLAYERS_SOLVER_ARGS.clear()
    qp_module.CVXPYLAYERS_SOLVER_ARGS.update(default_args)
    rows.append(
        ("cvxpylayers, default tolerances", throughput("cvxpylayers", args.cvx_steps, args.warmup))
    )
    if args.tight:
        qp_module.CVXPYLAYERS_SOLVER_ARGS.clear()
        qp_module.CVXPYLAYERS_SOLVER_ARGS.update(tight_args)
        rows.append(
            (
                "cvxpylayers, tolerances 1e-10",
                throughput("cvxpylayers", args.cvx_steps, args.warmup),
            )
        )
    qp_module.CVXPYLAYERS_SOLVER_ARGS.clear()
    qp_module.CVXPYLAYERS_SOLVER_ARGS.update(tight_args)
    print("# DSRL training throughput, Dubins car (dsrl-dubins agent), batch 128, 1 thread\n")
    print(
        f"machine: {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}\n"
    )
    print("| QP backend | env steps / s (updates included) | otsafe speed-up |")
    print("|---|---:|---:|")
    for name, value in rows:
        print(f"| {name} | {value:.2f} | {native / value:.0f}x |")
    cvx = rows[1][1]
    print(
        f"| *for scale:* `ddpg`, no safety layer | {ceiling:.2f} | "
        f"(the most any QP could give: {ceiling / cvx:.0f}x) |"
    )


if __name__ == "__main__":
    main()
