"""Figures of an OT-Q run (matplotlib, object API, no display needed).

Learning curves show, per method, the mean over seeds of a 10-episode trailing moving average
and a Student-t 95% band over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from numpy.typing import NDArray
from scipy import stats

from otsafe.envs.gridmap import GridMap
from otsafe.envs.gridworld import GridWorld
from otsafe.experiments.metrics import convergence_episode, moving_average

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from otsafe.experiments.config import OTQConfig
    from otsafe.experiments.runner import JobResult

__all__ = ["draw_map", "render_map_figure", "write_figures"]

SMOOTH = 10
_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _band(curves: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    mean = curves.mean(axis=0)
    n = curves.shape[0]
    if n < 2:
        return mean, np.zeros_like(mean)
    half = stats.t.ppf(0.975, df=n - 1) * curves.std(axis=0, ddof=1) / np.sqrt(n)
    return mean, np.asarray(half)


def _grouped(results: Sequence[JobResult]) -> dict[str, list[JobResult]]:
    out: dict[str, list[JobResult]] = {}
    for r in results:
        out.setdefault(r.job.method, []).append(r)
    return out


def _curve_figure(
    results: Sequence[JobResult], key: str, ylabel: str, title: str, path: Path
) -> None:
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for k, (name, runs) in enumerate(_grouped(results).items()):
        window = min(SMOOTH, len(runs[0].metrics[key]))
        curves = np.stack([moving_average(r.metrics[key].astype(float), window) for r in runs])
        x = np.arange(window, window + curves.shape[1])
        mean, half = _band(curves)
        colour = _COLOURS[k % len(_COLOURS)]
        ax.plot(x, mean, color=colour, lw=1.6, label=f"{name} (n={len(runs)})")
        ax.fill_between(x, mean - half, mean + half, color=colour, alpha=0.2, lw=0)
    ax.set_xlabel("episode")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} ({SMOOTH}-episode moving average, 95% CI over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def draw_map(
    ax: Axes,
    grid: GridMap,
    values: NDArray[np.float64] | None = None,
    *,
    cmap: str = "viridis",
    label: str = "",
    annotate: bool = False,
) -> None:
    """Draw a grid map on ``ax``: a heatmap of ``values`` (H x W) with obstacles, start, goal."""
    h, w = grid.shape
    if values is not None:
        masked = np.ma.masked_where(grid.obstacles, values)
        im = ax.imshow(masked, cmap=cmap, origin="upper", interpolation="nearest")
        ax.figure.colorbar(im, ax=ax, shrink=0.8, label=label)
    ax.imshow(
        np.ma.masked_where(~grid.obstacles, grid.obstacles),
        cmap=ListedColormap(["#333340"]),
        origin="upper",
        interpolation="nearest",
    )
    for (r, c), text, colour in ((grid.start, "S", "#2ca02c"), (grid.goal, "G", "#ff7f0e")):
        ax.text(c, r, text, ha="center", va="center", fontsize=9, weight="bold", color=colour)
    if annotate and values is not None:
        for r in range(h):
            for c in range(w):
                if not grid.obstacles[r, c] and (r, c) not in (grid.start, grid.goal):
                    ax.text(
                        c,
                        r,
                        f"{values[r, c]:.1f}",
                        ha="center",
                        va="center",
                        fontsize=5,
                        color="white",
                    )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def render_map_figure(env: GridWorld, path: Path, title: str | None = None) -> None:
    """Save a figure of a map with its per-cell safety values (``otsafe render``)."""
    grid = env.grid
    h, w = grid.shape
    size = min(max(w / 3.0, 4.0), 12.0)
    fig = Figure(figsize=(size + 1.5, size * h / w), layout="constrained")
    ax = fig.add_subplot()
    draw_map(ax, grid, env.safety, label="safety value v(s)", annotate=max(h, w) <= 20)
    ax.set_title(title or f"{grid.name}: {h}x{w}, safety values", fontsize=10)
    fig.savefig(path, dpi=130)


def _plan_figure(env: GridWorld, arrows: NDArray[np.float64], title: str, path: Path) -> None:
    fig = Figure(figsize=(6.5, 6), layout="constrained")
    ax = fig.add_subplot()
    draw_map(
        ax,
        env.grid,
        env.risk_distribution.reshape(env.grid.shape),
        cmap="Greens",
        label="P^s (target)",
    )
    if arrows.size:
        mass = arrows[:, 4]
        keep = mass >= 0.02 * mass.max()
        top = arrows[keep]
        widths = 0.5 + 3.0 * top[:, 4] / top[:, 4].max()
        for (r0, c0, r1, c1, _), lw in zip(top, widths, strict=False):
            ax.annotate(
                "",
                xy=(c1, r1),
                xytext=(c0, r0),
                arrowprops={"arrowstyle": "->", "color": "#c0392b", "lw": float(lw), "alpha": 0.7},
            )
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120)


def _beta_sweep_figure(config: OTQConfig, results: Sequence[JobResult], path: Path) -> None:
    from otsafe.experiments.stats import mean_ci

    exp = config.experiment
    groups = _grouped(results)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, what in zip(axes, ("convergence", "collisions"), strict=False):

        def value(r: JobResult, what: str = what) -> float:
            if what == "collisions":
                return float(r.metrics["collisions"].sum())
            return convergence_episode(
                r.metrics["length"],
                exp.convergence_window,
                exp.convergence_tail,
                exp.convergence_tolerance,
            )

        betas, means, lows, highs = [], [], [], []
        for runs in groups.values():
            est = mean_ci([value(r) for r in runs])
            if runs[0].job.beta == 0:
                ax.axhline(est.mean, color="k", lw=1, label="Q-learning (beta=0)")
                if np.isfinite(est.ci_low):
                    ax.axhspan(est.ci_low, est.ci_high, color="k", alpha=0.1, lw=0)
                continue
            betas.append(runs[0].job.beta)
            means.append(est.mean)
            lows.append(est.mean - est.ci_low if np.isfinite(est.ci_low) else 0.0)
            highs.append(est.ci_high - est.mean if np.isfinite(est.ci_high) else 0.0)
        ax.errorbar(
            betas, means, yerr=[lows, highs], fmt="o-", color="#d62728", capsize=3, label="OT-Q"
        )
        ax.set_xscale("log")
        ax.set_xlabel("beta")
        ax.set_ylabel("convergence episode" if what == "convergence" else "collisions per run")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{exp.name}: mean and 95% CI over {exp.seeds} seeds", fontsize=10)
    fig.savefig(path, dpi=120)


def write_figures(
    directory: Path, config: OTQConfig, results: Sequence[JobResult], env: GridWorld
) -> list[Path]:
    """Write every figure of a run into ``directory``; returns the paths."""
    paths = []
    for key, ylabel, name in (
        ("env_return", "return (environment reward)", "returns"),
        ("shaped_return", "shaped return (with OT bonus)", "shaped_returns"),
        ("length", "episode length", "lengths"),
        ("collisions", "obstacle collisions", "collisions"),
        ("risky_visits", "visits to risky cells", "risky_visits"),
        ("w2", "W2(P^pi, P^s)", "w2"),
    ):
        path = directory / f"{name}.png"
        _curve_figure(results, key, ylabel, name.replace("_", " "), path)
        paths.append(path)

    grid = env.grid
    path = directory / "safety_distribution.png"
    fig = Figure(figsize=(6, 5), layout="constrained")
    draw_map(fig.add_subplot(), grid, env.risk_distribution.reshape(grid.shape), label="P^s")
    fig.axes[0].set_title("expert safety distribution P^s", fontsize=10)
    fig.savefig(path, dpi=120)
    paths.append(path)

    groups = _grouped(results)
    otq_name = next((n for n in groups if n.startswith("ot-q")), None)
    shown = groups[otq_name] if otq_name else next(iter(groups.values()))
    finals = [r.final_state_distribution for r in shown if r.final_state_distribution is not None]
    if finals:
        path = directory / "policy_distribution.png"
        fig = Figure(figsize=(6, 5), layout="constrained")
        mean_final: Any = np.mean(finals, axis=0).reshape(grid.shape)
        draw_map(fig.add_subplot(), grid, mean_final, cmap="magma", label="P^pi")
        fig.axes[0].set_title(
            f"final P^pi of {shown[0].job.method} (mean over {len(finals)} seeds)", fontsize=10
        )
        fig.savefig(path, dpi=120)
        paths.append(path)
    first = shown[0]
    if first.plan_arrows is not None:
        path = directory / "ot_plan.png"
        _plan_figure(
            env,
            first.plan_arrows,
            f"final OT plan T* of {first.job.method}, seed {first.job.seed}: "
            "mass moved from P^pi to P^s\n(arrows carrying at least 2% of the largest)",
            path,
        )
        paths.append(path)
    if config.experiment.beta_sweep:
        path = directory / "beta_sweep.png"
        _beta_sweep_figure(config, results, path)
        paths.append(path)
    return paths
