"""The safety filters alone under a worst-direction shift, behind a fixed reference controller.

Separates the filter from the policy. In the DSRL presets a difference between ``ddpg-cbf`` and
``dsrl`` can come from the filter (the worst-case atoms) or from the policies that trained behind
it. Here both filters rectify the *same* hand-written reference controller, which drives straight
at the goal through the obstacles, so the filter is pressed against a barrier for much of every
episode: the hardest case for robustness. Each episode runs under the preset's nominal gust or
drift, shifted by δ along the per-step worst direction (the presets' ``worst`` evaluation,
:func:`otsafe.experiments.dsrl_runner.worst_direction_hook`).

Reference controllers (saturated at the action bounds by the environment):

- quadrotor: PD on the position, ``a = kp (goal - p) - kd v``;
- Dubins car: full speed, turn rate proportional to the heading error to the goal.

It prints, per filter and δ/ρ, the share of episodes with a violation, the mean over episodes of
the minimum clearance, the mean numbers of steps with h < 0 and of steps where the QP was
infeasible (the solver's elastic fallback, the slack), the return, the share of episodes that
reach the goal, and the mean speed over the steps that end with h < 0 (distance travelled per
unit time; a filter that stalls inside an obstacle shows a low one; seeds that never violate
are left out of it), each with a Student-t 95% CI over the agents' seeds (each seed draws its
own nominal atoms and its episodes' gusts), next to the clearance at which a filter pressed
against a barrier comes to rest in theory (:func:`steady_clearance`, for each obstacle).
``--json`` keeps the per-seed values, ``--figure`` plots them, ``--load`` prints and plots a
saved study again (pass the preset and ``--set`` it was run with).

Run (docs/reproduction/dsrl.md, *The filters alone*)::

    python scripts/filter_robustness.py --preset dsrl-quadrotor --seeds 10 --episodes 5 \\
        --figure docs/figures/dsrl_quadrotor_filters_alone.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otsafe.errors import OtsafeError
from otsafe.experiments.config import resolve_config
from otsafe.experiments.dsrl_config import DSRLConfig
from otsafe.experiments.dsrl_runner import (
    make_agent,
    make_env,
    nominal,
    run_episode,
    worst_direction_hook,
)
from otsafe.experiments.stats import mean_ci


class ReferenceAgent:
    """A fixed controller behind the safety layer of a DSRL agent (``act`` as the agents')."""

    def __init__(self, agent: Any, env: Any, gains: tuple[float, float]) -> None:
        self.safety = agent.safety
        self.base = env.unwrapped
        self.gains = gains
        self.low = np.asarray(env.action_space.low, dtype=np.float64)
        self.high = np.asarray(env.action_space.high, dtype=np.float64)

    def reference(self, state: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        goal = np.asarray(self.base.goal, dtype=np.float64)
        k1, k2 = self.gains
        if state.shape[0] == 3:  # Dubins car (x, y, theta): full speed, turn to the goal
            dx, dy = goal[:2] - state[:2]
            error = math.atan2(dy, dx) - state[2]
            error = math.atan2(math.sin(error), math.cos(error))
            u = np.array([self.high[0], k1 * error])
        else:  # double integrator (p, v): PD towards the goal
            d = len(state) // 2
            u = k1 * (goal[:d] - state[:d]) - k2 * state[d:]
        return np.asarray(np.clip(u, self.low, self.high), dtype=np.float64)

    def act(
        self, obs: Any, state: np.ndarray[Any, Any], explore: bool = False
    ) -> tuple[np.ndarray[Any, Any], Any]:
        dt = self.safety.dtype
        x = torch.as_tensor(state, dtype=dt, device=self.safety.device)[None]
        u = torch.as_tensor(self.reference(state), dtype=dt, device=self.safety.device)[None]
        out = self.safety(x, u)
        return out.action[0].detach().cpu().numpy(), out


METRICS = (
    "violation_rate",
    "min_clearance",
    "violation_steps",
    "slack_steps",
    "return",
    "success_rate",
    "speed_in_violation",
)
FLOORS = {"violation_rate": 0.0, "violation_steps": 0.0, "slack_steps": 0.0, "success_rate": 0.0}


def episode(
    env: Any, agent: ReferenceAgent, hook: Any, seed: int
) -> tuple[float, float, float, float, float, float, tuple[float, int]]:
    """One episode's :data:`METRICS` (:func:`~otsafe.experiments.dsrl_runner.run_episode`):
    violation (0/1), minimum clearance, steps with h < 0, steps where the QP was infeasible (the
    elastic fallback's slack), the return, goal reached (0/1), and the distance travelled in
    the steps that end with h < 0 with their number (for the speed there)."""
    m = run_episode(env, agent, seed, train=False, disturbance_hook=hook, record=True)
    base = env.unwrapped
    path = np.asarray(m["path"], dtype=np.float64)
    positions = path[:, : len(base.goal)]  # both environments put the position first
    inside = np.array([base.clearances(x).min() < 0 for x in path[1:]])
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    return (
        float(m["violation"]),
        float(m["min_barrier"]),
        float(m["violation_steps"]),
        float(m["slack_activations"]),
        float(m["return"]),
        float(m["success"]),
        (float(steps[inside].sum()), int(inside.sum())),
    )


def seed_value(metric: str, runs: Sequence[tuple[Any, ...]], dt: float) -> float:
    """A seed's value of ``metric``: the mean over its episodes, or for the speed in violation
    the distance over the time of all its steps that end with h < 0 (NaN if there are none)."""
    k = METRICS.index(metric)
    if metric != "speed_in_violation":
        return float(np.mean([r[k] for r in runs]))
    distance, count = (sum(r[k][i] for r in runs) for i in (0, 1))
    return distance / (count * dt) if count else math.nan


def fmt(values: Sequence[float] | None, floor: float = -math.inf) -> str:
    """Mean [95% CI] of the finite values, the CI cut at ``floor`` (0 for counts and rates);
    with seeds left out (NaN) their number is given, and "–" when there is no value at all
    (none finite, or a study saved before the metric existed)."""
    finite = [v for v in values or () if math.isfinite(v)]
    if not finite:
        return "–"
    if values is not None and len(finite) < len(values):
        return f"{fmt(finite, floor)} ({len(finite)} seeds)"
    est = mean_ci(finite)
    if not est.ci_high > est.ci_low:  # one seed, or no spread
        return f"{est.mean:.2f}"
    return f"{est.mean:.2f} [{max(est.ci_low, floor):.2f}, {est.ci_high:.2f}]"


def steady_clearance(
    method: str, ratio: float, cfg: DSRLConfig, radius: float, form: str = "squared"
) -> float:
    r"""Clearance at which a filter pressed against one barrier comes to rest.

    At rest on the barrier of an obstacle of (inflated) radius :math:`r`, at distance :math:`d`
    from its centre, the actual mean gust :math:`-\delta n` (the worst direction, :math:`n` the
    outward normal) must be cancelled by the control, :math:`n^\top u = \delta`, while the
    filter's condition sees the mean gust of its atoms, :math:`-\rho n` for ``dsrl`` (the worst
    case in the order-1 ball moves the atoms' mean by :math:`\rho` along :math:`-\nabla h`) and
    0 for ``ddpg-cbf``. With all velocity terms zero the (HO)CBF condition holds with equality:

    .. math:: \nabla h^\top n\,(\delta - \rho) + \alpha h = 0,

    :math:`\alpha = \alpha_1\alpha_2` for the HOCBF. With :math:`c = (\rho - \delta)/\alpha`:
    for :math:`h = d - r` the clearance is :math:`c`; for :math:`h = d^2 - r^2`
    (:math:`\nabla h^\top n = 2d`) it is :math:`d - r = c + \sqrt{c^2 + r^2} - r`, which is
    :math:`c` to first order in :math:`c/r`. For the car, :math:`d` is the look-ahead point's
    distance, whose clearance is a lower bound on the car's own.
    """
    rho = cfg.safety.radius
    rate = cfg.safety.alpha
    if cfg.env.id == "quadrotor":  # relative degree 2: alpha_1 alpha_2
        rate *= cfg.safety.alpha2 if cfg.safety.alpha2 is not None else cfg.safety.alpha
    c = ((rho if method == "dsrl" else 0.0) - ratio * rho) / rate
    if form == "distance":
        return c
    return c + math.sqrt(c * c + radius * radius) - radius


def rest_clearances(
    method: str, ratio: float, cfg: DSRLConfig, barriers: Sequence[Any]
) -> list[float]:
    """:func:`steady_clearance` for each of ``barriers`` (the environment's, made once)."""
    return [steady_clearance(method, ratio, cfg, float(b.radius), b.form) for b in barriers]


def study(
    cfg: DSRLConfig, seeds: int, episodes: int, deltas: Sequence[float], gains: tuple[float, float]
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """method -> δ/ρ -> metric -> one value per seed (the mean over its episodes)."""
    rho = cfg.safety.radius
    env = make_env(cfg)  # the hook sets its disturbance at every step; reset seeds each episode
    p0 = nominal(cfg).with_dim(env.unwrapped.control_affine_model.disturbance_dim)
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for method in ("ddpg-cbf", "dsrl"):
        out[method] = {}
        for ratio in deltas:
            cell: dict[str, list[float]] = {m: [] for m in METRICS}
            for seed in range(seeds):
                ref = ReferenceAgent(make_agent(cfg, env, method, seed), env, gains)
                hook = worst_direction_hook(ref, ratio * rho, p0)
                runs = [episode(env, ref, hook, 1000 * seed + k) for k in range(episodes)]
                for metric in METRICS:
                    cell[metric].append(seed_value(metric, runs, env.unwrapped.dt))
            out[method][f"{ratio:g}"] = cell
            print(f"{method}, δ/ρ = {ratio:g}: done", file=sys.stderr, flush=True)
    return out


def table(
    results: dict[str, dict[str, dict[str, list[float]]]], cfg: DSRLConfig, barriers: Sequence[Any]
) -> str:
    """The Markdown table of :func:`study`'s results."""
    lines = [
        "| filter | δ/ρ | violation rate | min clearance | steps with h < 0 | infeasible QP steps "
        "| return | goal reached | speed in violation | at rest (theory) |",
        "|---|---:|---|---|---|---|---|---|---|---:|",
    ]
    for method, cells in results.items():
        for ratio, cell in cells.items():
            values = " | ".join(fmt(cell.get(m), FLOORS.get(m, -math.inf)) for m in METRICS)
            rest = rest_clearances(method, float(ratio), cfg, barriers)
            theory = f"{min(rest):.2f}" + (
                f" to {max(rest):.2f}" if max(rest) - min(rest) >= 0.005 else ""
            )
            lines.append(f"| {method} | {ratio} | {values} | {theory} |")
    return "\n".join(lines)


def figure(
    results: dict[str, dict[str, dict[str, list[float]]]],
    cfg: DSRLConfig,
    barriers: Sequence[Any],
    title: str,
    path: str,
) -> None:
    """Minimum clearance and violation rate against δ/ρ, with CIs and the steady-state line."""
    from matplotlib.figure import Figure

    from otsafe.experiments.dsrl_plots import COLOURS

    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for method, cells in results.items():
        ratios = [float(r) for r in cells]
        for ax, metric in zip(axes, ("min_clearance", "violation_rate"), strict=True):
            est = [mean_ci(cells[r][metric]) for r in cells]
            mean = [e.mean for e in est]
            floor = FLOORS.get(metric, -math.inf)
            low = [max(e.ci_low, floor) if math.isfinite(e.ci_low) else e.mean for e in est]
            high = [e.ci_high if math.isfinite(e.ci_high) else e.mean for e in est]
            colour = COLOURS.get(method)
            ax.plot(ratios, mean, "o-", color=colour, label=f"{method} filter")
            ax.fill_between(ratios, low, high, color=colour, alpha=0.2)
        # the largest radius
        theory = [min(rest_clearances(method, r, cfg, barriers)) for r in ratios]
        axes[0].plot(
            ratios,
            theory,
            "--",
            color=COLOURS.get(method),
            alpha=0.7,
            label=f"{method}: at rest on the largest obstacle (theory)",
        )
    axes[0].axhline(0.0, color="black", lw=0.8)
    axes[0].set(xlabel="worst-direction shift δ/ρ", ylabel="minimum clearance (mean over episodes)")
    axes[1].set(
        xlabel="worst-direction shift δ/ρ",
        ylabel="share of episodes with h < 0",
        ylim=(-0.03, 1.03),
    )
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dsrl-quadrotor")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=5, help="episodes per seed and shift")
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0])
    parser.add_argument("--gains", type=float, nargs=2, default=None, help="(kp, kd), or (k, _)")
    parser.add_argument("--set", action="append", default=[], help="config override, as otsafe")
    parser.add_argument("--json", help="write the per-seed values here")
    parser.add_argument("--load", help="print (and plot) a study saved with --json instead")
    parser.add_argument("--figure", help="plot clearance and violation rate against δ/ρ here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        cfg = resolve_config(args.preset, sets=args.set)
    except OtsafeError as exc:  # unknown preset, bad override: one line, exit 2
        parser.error(str(exc))
    if not isinstance(cfg, DSRLConfig):
        parser.error(f"{args.preset} is not a DSRL preset (dsrl-dubins, dsrl-quadrotor, ...)")
    default = (2.0, 0.0) if cfg.env.id == "dubins" else (1.0, 1.5)
    gains = (args.gains[0], args.gains[1]) if args.gains else default
    if args.load:  # the table and figure of a saved study
        results = json.loads(Path(args.load).read_text())
    else:
        start = time.perf_counter()
        results = study(cfg, args.seeds, args.episodes, args.deltas, gains)
        print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
        print(
            f"# The filters alone: {args.preset}, reference gains {gains}, ρ = {cfg.safety.radius}"
        )
        print(f"\n{args.seeds} seeds x {args.episodes} episodes per cell; overrides: {args.set}\n")
    barriers = make_env(cfg).unwrapped.barriers()
    print(table(results, cfg, barriers))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.figure:
        title = f"{args.preset}: the filters alone, reference controller, ρ = {cfg.safety.radius}"
        figure(results, cfg, barriers, title, args.figure)


if __name__ == "__main__":
    main()
