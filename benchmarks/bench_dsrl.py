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

``--preset dsrl-quadrotor`` (or ``dsrl-quadrotor-gate``) runs the same on the quadrotor, with one
more row: the native pipeline with the HOCBF's Jacobian products :math:`J_f^\top\nabla h`,
:math:`J_D^\top\nabla h` taken by autograd (the model's closed-form ``f_vjp``/``D_vjp`` hidden),
as the rows were computed before they had a closed form.

``--split`` then times the native step's parts (the CBF rows, the QP solves, the worst-case
ascents; the rest is networks, optimiser, replay and environment) with timers wrapped around the
agent module's calls, in a separate pass so that the timers do not touch the throughput rows.

Usage: ``python benchmarks/bench_dsrl.py [--preset dsrl-dubins] [--steps 200] [--tight] [--split]``.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np
import torch

import otsafe.agents.ddpg as ddpg_module
from otsafe.experiments.config import resolve_config
from otsafe.experiments.dsrl_config import DSRLConfig
from otsafe.experiments.dsrl_runner import make_agent, make_env
from otsafe.safety import qp as qp_module

PRESETS = ("dsrl-dubins", "dsrl-quadrotor", "dsrl-quadrotor-gate")


class AutogradJacobians:
    """A control-affine model without ``f_vjp``/``D_vjp``: the CBF rows take them by autograd."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.state_dim = model.state_dim
        self.control_dim = model.control_dim
        self.disturbance_dim = model.disturbance_dim

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.f(x)  # type: ignore[no-any-return]

    def g(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.g(x)  # type: ignore[no-any-return]

    def D(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - the D(x) of the dynamics
        return self.model.D(x)  # type: ignore[no-any-return]


def throughput(
    backend: str,
    steps: int,
    warmup: int,
    method: str = "dsrl",
    around: Callable[[], AbstractContextManager[None]] = nullcontext,
    preset: str = "dsrl-dubins",
    autograd_jacobians: bool = False,
) -> float:
    """Environment steps per second of training (acting + one update per step); the timed
    steps run inside ``around()``."""
    cfg = resolve_config(
        preset,
        sets=[
            "safety.weight=null",  # cvxpylayers' backend takes no QP weight: same for both
            f"safety.qp_backend={backend}",
            f"agent.learning_starts={warmup}",
            "agent.batch_size=128",
        ],
    )
    assert isinstance(cfg, DSRLConfig)
    env = make_env(cfg)
    if autograd_jacobians:
        env.unwrapped.control_affine_model = AutogradJacobians(env.unwrapped.control_affine_model)
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
    with around():
        start = time.perf_counter()
        for _ in range(steps):
            step()
        elapsed = time.perf_counter() - start
    return steps / elapsed


@contextmanager
def timed_parts(totals: dict[str, float]) -> Iterator[None]:
    """Accumulate the seconds spent in the agent module's CBF rows, QP solves and ascents."""

    def timer(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - start

        return wrapped

    targets = [
        (ddpg_module, "solve_qp", "QP solves"),
        (ddpg_module, "worst_case", "worst-case ascents"),
        (ddpg_module.CBFRows, "__init__", "CBF rows"),
    ]
    saved = [getattr(owner, attr) for owner, attr, _ in targets]
    for (owner, attr, name), fn in zip(targets, saved, strict=True):
        setattr(owner, attr, timer(name, fn))
    try:
        yield
    finally:
        for (owner, attr, _), fn in zip(targets, saved, strict=True):
            setattr(owner, attr, fn)


def step_split(steps: int, warmup: int, preset: str) -> tuple[float, dict[str, float]]:
    """Milliseconds per native DSRL step, and per part of it (timers on the timed steps only)."""
    totals: dict[str, float] = defaultdict(float)
    rate = throughput("native", steps, warmup, around=lambda: timed_parts(totals), preset=preset)
    return 1000 / rate, {k: 1000 * v / steps for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="dsrl-dubins")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--cvx-steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--tight", action="store_true", help="also time cvxpylayers at 1e-10")
    parser.add_argument("--split", action="store_true", help="also time the native step's parts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    preset = args.preset
    native = throughput("native", args.steps, args.warmup, preset=preset)
    default_args = {"eps_abs": 1e-4, "eps_rel": 1e-4}  # SCS's defaults
    tight_args = dict(qp_module.CVXPYLAYERS_SOLVER_ARGS)
    # The ceiling of any speed-up: the same DDPG with no safety layer at all.
    ceiling = throughput("native", args.steps, args.warmup, method="ddpg", preset=preset)
    rows = [("otsafe solve_qp (exact)", native)]
    if preset != "dsrl-dubins":  # the HOCBF: the closed-form Jacobian products vs autograd
        slow = throughput("native", args.steps, args.warmup, preset=preset, autograd_jacobians=True)
        rows.append(("otsafe solve_qp, J_f and J_D by autograd", slow))
    qp_module.CVXPYLAYERS_SOLVER_ARGS.clear()
    qp_module.CVXPYLAYERS_SOLVER_ARGS.update(default_args)
    rows.append(
        (
            "cvxpylayers, default tolerances",
            throughput("cvxpylayers", args.cvx_steps, args.warmup, preset=preset),
        )
    )
    if args.tight:
        qp_module.CVXPYLAYERS_SOLVER_ARGS.clear()
        qp_module.CVXPYLAYERS_SOLVER_ARGS.update(tight_args)
        rows.append(
            (
                "cvxpylayers, tolerances 1e-10",
                throughput("cvxpylayers", args.cvx_steps, args.warmup, preset=preset),
            )
        )
    qp_module.CVXPYLAYERS_SOLVER_ARGS.clear()
    qp_module.CVXPYLAYERS_SOLVER_ARGS.update(tight_args)
    print(f"# DSRL training throughput, the {preset} agent, batch 128, 1 thread\n")
    print(
        f"machine: {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}\n"
    )
    print("| QP backend | env steps / s (updates included) | otsafe speed-up |")
    print("|---|---:|---:|")
    for name, value in rows:
        ratio = native / value
        shown = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.2f}"  # 1.05x, 34x
        print(f"| {name} | {value:.2f} | {shown}x |")
    cvx = next(value for name, value in rows if name.startswith("cvxpylayers"))
    print(
        f"| *for scale:* `ddpg`, no safety layer | {ceiling:.2f} | "
        f"(the most any QP could give: {ceiling / cvx:.0f}x) |"
    )
    if args.split:
        per_step, parts = step_split(args.steps, args.warmup, preset)
        print(f"\n## Where a native step's {per_step:.2f} ms go (timers on)\n")
        print("| part of the step | ms per step |")
        print("|---|---:|")
        for name, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"| {name} | {ms:.2f} |")
        rest = per_step - sum(parts.values())
        print(f"| networks, optimiser, replay, environment (the rest) | {rest:.2f} |")


if __name__ == "__main__":
    main()
