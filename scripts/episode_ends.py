"""How the trained DSRL policies end their nominal episodes, and whether the filter is the cause.

For every method and seed of a DSRL run directory, the trained agent is rebuilt from its final
checkpoint and its first nominal evaluation episode is replayed (the same episode seed and
disturbance as the run's ``eval.csv`` row at δ = 0 in the fixed direction, so the path is the
recorded one to the bit: checked, and tested). Each step records the distance to the goal, the
policy's own action ``u_ref`` (no exploration noise) and the action the safety filter executed.
The table gives, per episode, whether it reached the goal, how close it came and when, and over
the last ``--tail`` steps: the policy's effort per action component (mean of ``|u_ref|`` over
the largest magnitude the action bounds allow: 1 is full throttle, near 0 the policy has stopped
commanding that component), the share of steps where the filter changed the action (if the
filter held the agent back, the executed action would differ from ``u_ref`` there), and the
distance travelled (the disturbance moves even a stopped vehicle).

Run (docs/reproduction/dsrl.md, *Goal success*)::

    python scripts/episode_ends.py runs/dsrl-dubins --methods ddpg ddpg-cbf dsrl
"""

from __future__ import annotations

import argparse
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from otsafe.errors import OtsafeError
from otsafe.experiments.dsrl_config import DSRLConfig
from otsafe.experiments.dsrl_runner import eval_episode_seed, make_agent, make_env


@dataclass
class EpisodeEnd:
    """One replayed episode, summarised."""

    method: str
    seed: int
    steps: int
    goal: bool
    final_distance: float
    min_distance: float
    min_distance_step: int
    tail_effort: list[float]  # mean |u_ref| / largest allowed |u| over the tail, per component
    tail_changed: float  # share of tail steps where the filter changed the action
    tail_moved: float  # distance travelled over the tail
    matches_record: bool | None  # the path equals the run's recorded one (None: none recorded)


def load_config(run: Path) -> DSRLConfig:
    """The run's resolved configuration (``config.yaml``)."""
    path = run / "config.yaml"
    if not path.is_file():
        raise OtsafeError(f"{str(run)!r} is not a run directory (no config.yaml)")
    return DSRLConfig.model_validate(yaml.safe_load(path.read_text()))


def replay(cfg: DSRLConfig, run: Path, method: str, seed: int, tail: int) -> EpisodeEnd:
    """The first nominal evaluation episode of ``method``/``seed``, replayed step by step."""
    ckpt = run / "checkpoints" / f"{method}-seed{seed}.ckpt"
    if not ckpt.is_file():
        raise OtsafeError(f"no checkpoint {str(ckpt)!r}")
    with ckpt.open("rb") as fh:  # written by our own run: see otsafe.experiments.checkpoint
        state = pickle.load(fh)
    env = make_env(cfg)
    agent = make_agent(cfg, env, method, seed)
    agent.load_state_dict(state["agent"])
    base = env.unwrapped
    scale = np.maximum(np.abs(base.action_low), np.abs(base.action_high))
    obs, _ = env.reset(seed=eval_episode_seed(seed, 0))
    dist, u_refs, changed, path = [], [], [], []
    info: dict[str, Any] = {}
    done = False
    while not done:
        x = np.asarray(base.safety_state(), dtype=np.float64)
        path.append(x.tolist())
        with torch.no_grad():
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=agent.device)[None]
            u_ref = agent.actor(obs_t)[0].cpu().numpy().astype(np.float64)
        action, out = agent.act(obs, x, explore=False)
        obs, _, terminated, truncated, info = env.step(action.astype(np.float32))
        dist.append(base.goal_distance())
        u_refs.append(np.clip(u_ref, base.action_low, base.action_high))
        changed.append(bool(out.changed[0].item()))
        done = bool(terminated or truncated)
    path.append(np.asarray(base.safety_state()).tolist())
    k = min(tail, len(dist))
    u_tail = np.asarray(u_refs[-k:])
    positions = np.asarray(path)[-k - 1 :, : len(base.goal)]
    moved = float(np.linalg.norm(np.diff(positions, axis=0), axis=1).sum())
    result = state.get("result")
    recorded = getattr(result, "trajectories", {}).get("fixed:0")
    return EpisodeEnd(
        method=method,
        seed=seed,
        steps=len(dist),
        goal=bool(info["goal_reached"]),
        final_distance=float(dist[-1]),
        min_distance=float(min(dist)),
        min_distance_step=int(np.argmin(dist)) + 1,
        tail_effort=(np.abs(u_tail) / scale).mean(0).tolist(),
        tail_changed=float(np.mean(changed[-k:])),
        tail_moved=moved,
        matches_record=None if recorded is None else recorded == path,
    )


def seeds_of(run: Path, method: str) -> list[int]:
    """The seeds of ``method`` with a checkpoint in the run."""
    found = (run / "checkpoints").glob(f"{method}-seed*.ckpt")
    return sorted(int(p.stem.rsplit("seed", 1)[1]) for p in found)


def table(ends: list[EpisodeEnd], tail: int) -> str:
    """Markdown table of the replayed episodes."""
    lines = [
        f"| method | seed | goal | steps | closest to goal (step) | final distance | policy "
        f"effort, last {tail} steps | filter changed the action | moved, last {tail} steps |",
        "|---|---:|---|---:|---|---:|---|---:|---:|",
    ]
    for e in ends:
        u = ", ".join(f"{v:.2f}" for v in e.tail_effort)
        lines.append(
            f"| {e.method} | {e.seed} | {'yes' if e.goal else 'no'} | {e.steps} | "
            f"{e.min_distance:.2f} ({e.min_distance_step}) | {e.final_distance:.2f} | ({u}) | "
            f"{e.tail_changed:.0%} | {e.tail_moved:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a DSRL run directory (with checkpoints/)")
    parser.add_argument("--methods", nargs="+", default=["ddpg", "ddpg-cbf", "dsrl"])
    parser.add_argument("--tail", type=int, default=30, help="steps at the end to summarise")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.tail < 1:
            raise OtsafeError(f"--tail must be at least 1, got {args.tail}")
        cfg = load_config(args.run)
        ends = []
        for method in args.methods:
            seeds = seeds_of(args.run, method)
            if not seeds:
                raise OtsafeError(f"no checkpoint of method {method!r} in {str(args.run)!r}")
            ends += [replay(cfg, args.run, method, s, args.tail) for s in seeds]
    except OtsafeError as exc:
        print(f"episode_ends: error: {exc}", file=sys.stderr)
        return 2
    print(table(ends, args.tail))
    off = [f"{e.method} seed {e.seed}" for e in ends if e.matches_record is False]
    if off:
        print(f"\nwarning: the replay differs from the recorded path for {', '.join(off)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
