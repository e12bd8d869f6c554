"""Run an OT-Q experiment: methods x seeds, in parallel, into a run directory.

Data flows one way: config -> jobs (method, beta, seed) -> agent <-> env -> metrics -> report.

The run directory is written in a hidden staging directory next to it and renamed into place
only when every file is complete, so an interrupted or failed run never leaves a directory that
looks finished. It holds:

``config.yaml``     the fully resolved configuration;
``metrics.csv``     one row per (method, seed, episode);
``summary.json``    per-method statistics over seeds, the OT-Q vs Q-learning comparison, timing;
``figures/*.png``   learning curves with confidence bands, heatmaps of P^s and P^pi, the OT plan;
``checkpoints/``    the final state of every job's agent (see :mod:`otsafe.experiments.checkpoint`).

Interrupted runs keep their checkpoints and continue with ``resume=True``
(:mod:`otsafe.experiments.rundir`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from otsafe.agents.tabular import QLearning
from otsafe.envs.gridworld import GridWorld
from otsafe.experiments.checkpoint import JobContext, train_with_checkpoints
from otsafe.experiments.config import OTQConfig, load_safety_values
from otsafe.experiments.execution import execute_run, run_jobs
from otsafe.experiments.metrics import METRIC_COLUMNS, convergence_episode
from otsafe.experiments.stats import mean_ci, relative_reduction
from otsafe.experiments.tensorboard import episode_logger
from otsafe.transport.grid_sinkhorn import GridSinkhornPlan

__all__ = ["JobResult", "RunJob", "make_jobs", "run_experiment", "run_job"]

BASELINE = "q-learning"


@dataclass(frozen=True)
class RunJob:
    """One training run: a method (with its beta) and a seed."""

    method: str
    beta: float
    seed: int
    config: OTQConfig


@dataclass
class JobResult:
    """What a job returns to the runner."""

    job: RunJob
    metrics: dict[str, NDArray[Any]]
    final_state_distribution: NDArray[np.float64] | None
    plan_arrows: NDArray[np.float64] | None  # rows (r0, c0, r1, c1, mass)
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def method_label(method: str, beta: float, sweep: bool) -> str:
    if method == "ot-q" and sweep:
        return f"ot-q[beta={beta:g}]"
    return method


def make_jobs(config: OTQConfig) -> list[RunJob]:
    """Expand a config into its (method, beta, seed) jobs, in report order."""
    exp = config.experiment
    seeds = range(exp.seed_start, exp.seed_start + exp.seeds)
    jobs: list[RunJob] = []
    for method in exp.methods:
        betas = exp.beta_sweep or [config.agent.beta] if method == "ot-q" else [0.0]
        for beta in betas:
            label = method_label(method, beta, bool(exp.beta_sweep))
            jobs.extend(RunJob(label, float(beta), seed, config) for seed in seeds)
    return jobs


def make_env(config: OTQConfig) -> GridWorld:
    return GridWorld(
        config.env.map,
        max_steps=config.env.max_steps,
        safety_values=load_safety_values(config.env.safety_values),
    )


def job_key(job: RunJob) -> str:
    """The job's name in checkpoints and logs: ``<method>-seed<k>``."""
    return f"{job.method}-seed{job.seed}"


def run_job(job: RunJob, ctx: JobContext | None = None) -> JobResult:
    """Train one agent and collect its per-episode metrics.

    With a checkpoint store in ``ctx``, resumes from the job's checkpoint and writes new ones
    (see :func:`~otsafe.experiments.checkpoint.train_with_checkpoints`).
    """
    ctx = ctx or JobContext()
    key = job_key(job)
    saved = ctx.load(key)
    if saved is not None and saved.get("result") is not None:
        ctx.tick(job.config.experiment.episodes)
        result: JobResult = saved["result"]
        return result
    cfg = job.config
    if cfg.agent.ot_method in ("sinkhorn", "auto"):
        import torch

        # The Sinkhorn solver's matrix products round differently with other thread counts:
        # one thread, wherever the job runs, keeps the same seed giving the same metrics.
        torch.set_num_threads(1)
    env = make_env(cfg)
    agent_cfg = cfg.agent
    agent = QLearning(
        env,
        alpha=agent_cfg.alpha,
        gamma=agent_cfg.gamma,
        epsilon_start=agent_cfg.epsilon_start,
        epsilon_decay=agent_cfg.epsilon_decay,
        epsilon_min=agent_cfg.epsilon_min,
        beta=job.beta,
        seed=job.seed,
        state_distribution=agent_cfg.state_distribution,
        ot_method=agent_cfg.ot_method,
        ot_epsilon=agent_cfg.ot_epsilon,
        ot_tol=agent_cfg.ot_tol,
        ot_device=cfg.experiment.device,
        ot_dtype=agent_cfg.ot_dtype,
    )

    def episode(k: int) -> dict[str, Any]:
        assert agent.episodes_done == k
        return agent.run_episode().as_dict()

    first = 0 if saved is None else len(saved["rows"])
    with episode_logger(ctx, key, cfg.experiment.tensorboard, first) as log:
        rows, seconds = train_with_checkpoints(
            key, agent, cfg.experiment.episodes, episode, ctx, saved=saved, on_episode=log
        )
    arrays = {key: np.array([r[key] for r in rows]) for key in ("episode", *METRIC_COLUMNS)}
    arrows = None
    plan = agent.last_plan
    if isinstance(plan, GridSinkhornPlan):
        arrows = _barycentric_arrows(plan)
    elif plan is not None:
        dense = plan.dense()
        cells = env.grid.coordinates[np.flatnonzero(env.grid.reachable.ravel())]
        i, j = np.nonzero(dense > 0)
        moving = i != j
        arrows = np.column_stack([cells[i[moving]], cells[j[moving]], dense[i[moving], j[moving]]])
    result = JobResult(
        job=job,
        metrics=arrays,
        final_state_distribution=agent.last_state_distribution,
        plan_arrows=arrows,
        seconds=seconds,
    )
    ctx.finished(key, result)
    return result


_MAX_ARROWS = 150


def _barycentric_arrows(plan: GridSinkhornPlan) -> NDArray[np.float64]:
    """Arrows from each cell to where its mass goes on average (entropic plans; large maps)."""
    bary = plan.barycentric_map().reshape(-1, 2)
    h, w = plan.shape
    cells = np.stack(np.divmod(np.arange(h * w), w), axis=1).astype(np.float64)
    mass = plan.source().reshape(-1)
    moving = np.isfinite(bary[:, 0]) & (np.linalg.norm(bary - cells, axis=1) >= 0.5)
    idx = np.flatnonzero(moving)
    idx = idx[np.argsort(mass[idx])[::-1][:_MAX_ARROWS]]
    return np.column_stack([cells[idx], bary[idx], mass[idx]])


def execute_jobs(
    jobs: list[RunJob], workers: int, progress: Callable[[int], object] | None = None
) -> list[JobResult]:
    """Run jobs sequentially (``workers == 1``) or in a process pool; results in job order.

    No checkpoints (benchmarks and tests); :func:`run_experiment` is the full run.
    """
    threads = 1 if jobs and jobs[0].config.agent.ot_method in ("sinkhorn", "auto") else None
    return run_jobs(run_job, jobs, workers=workers, progress=progress, torch_threads=threads)


# ------------------------------------------------------------------------------ summary
def summarise(config: OTQConfig, results: list[JobResult]) -> dict[str, Any]:
    """Per-method statistics over seeds and the comparison with Q-learning.

    ``early_*`` average the first ``experiment.early_episodes`` episodes, ``final_*`` the last
    ``experiment.final_episodes``; ``*_total`` sum over the run. Intervals are Student-t 95% over
    seeds.
    """
    exp = config.experiment
    by_method: dict[str, list[JobResult]] = {}
    for res in results:
        by_method.setdefault(res.job.method, []).append(res)
    methods: dict[str, Any] = {}
    collisions: dict[str, NDArray[np.float64]] = {}
    convergence: dict[str, NDArray[np.float64]] = {}
    k_final = min(exp.final_episodes, exp.episodes)
    k_early = min(exp.early_episodes, exp.episodes)
    for name, runs in by_method.items():
        conv = np.array(
            [
                convergence_episode(
                    r.metrics["length"],
                    window=exp.convergence_window,
                    tail=exp.convergence_tail,
                    tolerance=exp.convergence_tolerance,
                )
                for r in runs
            ]
        )
        coll = np.array([r.metrics["collisions"].sum() for r in runs], dtype=np.float64)
        risky = np.array([r.metrics["risky_visits"].sum() for r in runs], dtype=np.float64)
        convergence[name], collisions[name] = conv, coll

        def final(key: str, runs: list[JobResult] = runs) -> NDArray[np.float64]:
            return np.array([r.metrics[key][-k_final:].mean() for r in runs], dtype=np.float64)

        def early(key: str, runs: list[JobResult] = runs) -> NDArray[np.float64]:
            return np.array([r.metrics[key][:k_early].mean() for r in runs], dtype=np.float64)

        methods[name] = {
            "beta": runs[0].job.beta,
            "seeds": [r.job.seed for r in runs],
            "convergence_episode": {
                **mean_ci(conv).as_dict(),
                "per_seed": [None if math.isnan(c) else c for c in conv.tolist()],
                "converged_seeds": int(np.isfinite(conv).sum()),
            },
            "collisions_total": {**mean_ci(coll).as_dict(), "per_seed": coll.tolist()},
            "risky_visits_total": {**mean_ci(risky).as_dict(), "per_seed": risky.tolist()},
            "early_length": mean_ci(early("length")).as_dict(),
            "early_collisions": mean_ci(early("collisions")).as_dict(),
            "final_env_return": mean_ci(final("env_return")).as_dict(),
            "final_shaped_return": mean_ci(final("shaped_return")).as_dict(),
            "final_length": mean_ci(final("length")).as_dict(),
            "final_w2": mean_ci(final("w2")).as_dict(),
            "final_success_rate": mean_ci(final("success")).as_dict(),
            "mean_env_return": mean_ci([r.metrics["env_return"].mean() for r in runs]).as_dict(),
            "train_seconds_per_seed": mean_ci([r.seconds for r in runs]).as_dict(),
        }
    comparisons: dict[str, Any] = {}
    if BASELINE in by_method:
        for name in by_method:
            if name == BASELINE:
                continue
            diff = convergence[BASELINE] - convergence[name]
            comparisons[f"{name} vs {BASELINE}"] = {
                "collision_reduction": relative_reduction(
                    collisions[BASELINE], collisions[name]
                ).as_dict(),
                "convergence_episodes_earlier": mean_ci(diff).as_dict(),
                "note": (
                    "collision_reduction = 1 - mean collisions(method) / mean collisions"
                    "(q-learning), percentile-bootstrap 95% CI over seeds; "
                    "convergence_episodes_earlier = convergence(q-learning) - "
                    "convergence(method) per seed, Student-t 95% CI"
                ),
            }
    return {"methods": methods, "comparisons": comparisons}


# ----------------------------------------------------------------------------- writing
def _write_metrics_csv(path: Path, results: list[JobResult]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "beta", "seed", "episode", *METRIC_COLUMNS])
        for res in results:
            m = res.metrics
            cols = [m[key] for key in METRIC_COLUMNS]
            for k, ep in enumerate(m["episode"]):
                row: list[Any] = [res.job.method, f"{res.job.beta:g}", res.job.seed, int(ep)]
                for key, col in zip(METRIC_COLUMNS, cols, strict=False):
                    v = col[k]
                    if key in ("length", "collisions", "risky_visits", "success"):
                        row.append(int(v))
                    else:
                        row.append(repr(float(v)))
                writer.writerow(row)


def run_experiment(
    config: OTQConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    label: str | None = None,
) -> dict[str, Any]:
    """Run every (method, seed) of ``config`` and write the run directory ``out``.

    Jobs checkpoint every ``experiment.checkpoint_every`` episodes; ``resume=True`` continues an
    interrupted run of ``out`` (see :mod:`otsafe.experiments.rundir`). ``label`` names the run's
    sweep point in ``summary["run"]["label"]`` (reports group by it). Returns the summary (also
    written to ``summary.json``).
    """

    def write_outputs(
        staging: Path, results: list[JobResult], run_info: dict[str, Any]
    ) -> dict[str, Any]:
        _write_metrics_csv(staging / "metrics.csv", results)
        summary = summarise(config, results)
        summary["run"] = {
            "label": label or "",
            "preset": config.preset,
            "map": config.env.map,
            "state_distribution": config.agent.state_distribution,
            "ot_method": config.agent.ot_method,
        }
        if figures:
            from otsafe.experiments.plots import write_figures

            (staging / "figures").mkdir()
            write_figures(staging / "figures", config, results, make_env(config))
        return summary

    return execute_run(
        name=config.experiment.name,
        config=config.model_dump(mode="json"),
        out=out,
        jobs=make_jobs(config),
        job_fn=run_job,
        episodes_per_job=config.experiment.episodes,
        workers=config.experiment.workers,
        checkpoint_every=config.experiment.checkpoint_every,
        write_outputs=write_outputs,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
        # Sinkhorn runs on torch: one thread per worker process (one process per core already).
        # The exact solvers never import torch.
        torch_threads=1 if config.agent.ot_method in ("sinkhorn", "auto") else None,
    )
