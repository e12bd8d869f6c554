"""Figures of a DSRL run (matplotlib object API): learning curves, the violation rate against the
shift (the headline), trajectories over the obstacle map, and nominal vs worst-case atoms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from otsafe.experiments.metrics import moving_average
from otsafe.experiments.plots import _band

if TYPE_CHECKING:
    from otsafe.experiments.dsrl_config import DSRLConfig
    from otsafe.experiments.dsrl_runner import DSRLResult

__all__ = ["write_dsrl_figures"]

COLOURS = {"ddpg": "#7f7f7f", "ddpg-cbf": "#1f77b4", "dsrl": "#d62728"}


def _by_method(results: Sequence[DSRLResult]) -> dict[str, list[DSRLResult]]:
    out: dict[str, list[DSRLResult]] = {}
    for r in results:
        out.setdefault(r.job.method, []).append(r)
    return out


def _learning_curves(results: Sequence[DSRLResult], path: Path) -> None:
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, label in (
        (axes[0], "return", "episode return"),
        (axes[1], "violation", "episodes with a violation"),
    ):
        for method, runs in _by_method(results).items():
            n = len(runs[0].train[key])
            window = max(1, min(5, n))
            curves = np.stack([moving_average(np.asarray(r.train[key]), window) for r in runs])
            mean, half = _band(curves)
            x = np.arange(window, window + curves.shape[1])
            colour = COLOURS.get(method)
            ax.plot(x, mean, color=colour, label=f"{method} (n={len(runs)})")
            ax.fill_between(x, mean - half, mean + half, color=colour, alpha=0.2, lw=0)
        ax.set_xlabel("training episode")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("training under p0 (5-episode moving average, 95% CI over seeds)", fontsize=10)
    fig.savefig(path, dpi=120)


def _violation_vs_shift(config: DSRLConfig, results: Sequence[DSRLResult], path: Path) -> None:
    directions = list(config.eval.directions)
    fig = Figure(figsize=(4 * len(directions) + 1, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(directions), sharey=True))
    for ax, direction in zip(axes, directions, strict=True):
        for method, runs in _by_method(results).items():
            rows = [i for i, row in enumerate(runs[0].evaluation) if row["direction"] == direction]
            deltas = [runs[0].evaluation[i]["delta"] for i in rows]
            rates = np.array([[r.evaluation[i]["violation_rate"] for i in rows] for r in runs])
            mean, half = _band(rates)
            # Student-t interval, clipped to the range of a rate
            low, high = np.clip(mean - half, 0.0, 1.0), np.clip(mean + half, 0.0, 1.0)
            ax.errorbar(
                deltas,
                mean,
                yerr=[mean - low, high - mean],
                fmt="o-",
                capsize=3,
                color=COLOURS.get(method),
                label=method,
            )
        ax.set_title(f"mean shift, {direction} direction", fontsize=10)
        ax.set_xlabel("shift delta / rho")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of episodes with a violation")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{config.experiment.name}: violation rate under distribution shift "
        f"(mean and 95% CI over {config.experiment.seeds} seeds)",
        fontsize=10,
    )
    fig.savefig(path, dpi=120)


def _obstacle_patches(base: Any) -> list[Circle]:
    """Top-view patches of the obstacles: the car's discs; for spheres (3-D positions), each
    sphere's section at the start's altitude, filled, and the outline of its projection, so that
    a hole between spheres above and below the start stays visible."""
    centers = np.asarray(getattr(base, "obstacle_centers", np.zeros((0, 2))), dtype=float)
    radii = np.asarray(getattr(base, "obstacle_radii", np.zeros(0)), dtype=float)
    patches = []
    for c, r in zip(centers, radii, strict=True):
        xy = (float(c[0]), float(c[1]))
        if c.size < 3:
            patches.append(Circle(xy, float(r), color="#444444", alpha=0.5))
            continue
        patches.append(Circle(xy, float(r), fill=False, ec="#444444", lw=0.8, ls="--"))
        dz = float(c[2] - base.start_state[2])
        if abs(dz) < r:
            patches.append(Circle(xy, float(np.sqrt(r * r - dz * dz)), color="#444444", alpha=0.5))
    return patches


def _trajectories(results: Sequence[DSRLResult], env: Any, path: Path) -> None:
    base = env.unwrapped
    methods = _by_method(results)
    fig = Figure(figsize=(6.0, 2.6 * len(methods)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(methods), 1, sharex=True))
    for ax, (method, runs) in zip(axes, methods.items(), strict=True):
        for patch in _obstacle_patches(base):
            ax.add_patch(patch)
        for label, traj in sorted(runs[0].trajectories.items()):
            arr = np.asarray(traj)
            if arr.size:
                ax.plot(arr[:, 0], arr[:, 1], lw=1.2, label=label)
        goal = getattr(base, "goal", None)
        if goal is not None:
            ax.plot(float(goal[0]), float(goal[1]), "*", color="#ff7f0e", ms=12)
        ax.set_aspect("equal")
        ax.set_title(f"{method}, seed {runs[0].job.seed}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, title="direction:shift", title_fontsize=6)
    title = "evaluation trajectories (first episode) over the obstacles"
    if getattr(base, "pos_dim", 2) == 3:
        title += "\n(top view; spheres: section at the start's altitude, dashed: projection)"
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)


def _atoms(results: Sequence[DSRLResult], path: Path) -> None:
    dsrl = [r for r in results if r.job.method == "dsrl"] or list(results)
    atoms = dsrl[0].atoms
    fig = Figure(figsize=(4.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for key, marker, colour in (("nominal", "o", "#1f77b4"), ("worst", "x", "#d62728")):
        arr = np.asarray(atoms.get(key, []))
        if arr.size:
            ys = arr[:, 1] if arr.shape[1] > 1 else np.zeros(len(arr))
            ax.scatter(arr[:, 0], ys, marker=marker, color=colour, label=f"{key} atoms")
    ax.set_xlabel("omega_1")
    ax.set_ylabel("omega_2")
    ax.set_title("nominal vs worst-case atoms at the start state", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def write_dsrl_figures(
    directory: Path, config: DSRLConfig, results: Sequence[DSRLResult], env: Any
) -> list[Path]:
    """Write the DSRL figures into ``directory``; returns the paths."""
    paths = [
        directory / name
        for name in (
            "learning_curves.png",
            "violation_vs_shift.png",
            "trajectories.png",
            "atoms.png",
        )
    ]
    _learning_curves(results, paths[0])
    _violation_vs_shift(config, results, paths[1])
    _trajectories(results, env, paths[2])
    _atoms(results, paths[3])
    return paths
