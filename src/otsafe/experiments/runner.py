"""Run an OT-Q experiment: methods x seeds, in parallel, into a run directory.

Data flows one way: config -> jobs (method, beta, seed) -> agent <-> env -> metrics -> report.

The run directory is written in a hidden staging directory next to it and renamed into place
only when every file is complete, so an interrupted or failed run never leaves a directory that
looks finished. It holds:

``config.yaml``     the fully resolved configuration;
``metrics.csv``     one row per (method, seed, episode);
``summary.json``    per-method statistics over seeds, the OT-Q vs Q-learning comparison, timing;
``figures/*.png``   learning curves with confidence bands, heatmaps of P^s and P^pi, the OT plan.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import platform
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

import otsafe
from otsafe.agents.tabular import QLearning
from otsafe.envs.gridworld import GridWorld
from otsafe.errors import RunDirectoryError
from otsafe.experiments.config import OTQConfig, load_safety_values
from otsafe.experiments.metrics import METRIC_COLUMNS, convergence_episode
from otsafe.experiments.stats import mean_ci, relative_reduction
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


def run_job(job: RunJob, progress: Callable[[int], object] | None = None) -> JobResult:
    """Train one agent and collect its per-episode metrics."""
    cfg = job.config
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
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for metrics in agent.iter_episodes(cfg.experiment.episodes):
        rows.append(metrics.as_dict())
        if progress is not None:
            progress(1)
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
    return JobResult(
        job=job,
        metrics=arrays,
        final_state_distribution=agent.last_state_distribution,
        plan_arrows=arrows,
        seconds=time.perf_counter() - start,
    )


_MAX_ARROWS = 150


def _barycentric_arrows(plan: GridSinkhornPlan) -> NDArray[np.float64]:
    """Arrows from each cell to where its mass goes on average (entropic plans; large maps)."""
    bary = plan.barycentric_map().reshape(-1, 2)
    h, w = plan.shape
    cells = np.stack(np.divmod(np.arange(h * w), w), axis=1).astype(np.float64)
    mass = np.exp(_to_numpy_log_a(plan)) * plan.mass
    moving = np.isfinite(bary[:, 0]) & (np.linalg.norm(bary - cells, axis=1) >= 0.5)
    idx = np.flatnonzero(moving)
    idx = idx[np.argsort(mass[idx])[::-1][:_MAX_ARROWS]]
    return np.column_stack([cells[idx], bary[idx], mass[idx]])


def _to_numpy_log_a(plan: GridSinkhornPlan) -> NDArray[np.float64]:
    return np.asarray(plan.log_a.reshape(-1).double().cpu().numpy(), dtype=np.float64)


_PROGRESS_EVERY = 10  # episodes between progress messages from a worker process


def _job_in_subprocess(job: RunJob, ticks: Any) -> JobResult:
    """Run a job in a worker process, reporting progress on the ``ticks`` queue."""
    done = 0

    def report(n: int) -> None:
        nonlocal done
        done += n
        if done >= _PROGRESS_EVERY:
            ticks.put(done)
            done = 0

    if job.config.agent.ot_method in ("sinkhorn", "auto"):
        import torch

        # One process per core already: more threads per process only oversubscribe the CPU.
        torch.set_num_threads(1)
    result = run_job(job, report)
    if done:
        ticks.put(done)
    return result


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def execute_jobs(
    jobs: list[RunJob], workers: int, progress: Callable[[int], object] | None = None
) -> list[JobResult]:
    """Run jobs sequentially (``workers == 1``) or in a process pool; results in job order."""
    if workers <= 1 or len(jobs) <= 1:
        return [run_job(job, progress) for job in jobs]
    results: dict[int, JobResult] = {}
    with (
        multiprocessing.Manager() as manager,
        ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool,
    ):
        ticks = manager.Queue()
        pending: dict[Future[JobResult], int] = {
            pool.submit(_job_in_subprocess, job, ticks): k for k, job in enumerate(jobs)
        }
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in done:
                results[pending.pop(fut)] = fut.result()
            while not ticks.empty():
                n = ticks.get()
                if progress is not None:
                    progress(n)
    return [results[k] for k in range(len(jobs))]


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


@dataclass
class RunDirectory:
    """Where a run is staged and where it lands.

    Files are written into a hidden staging directory beside ``out``; :meth:`finalise` moves them
    into ``out`` (``summary.json`` last) and :meth:`abandon` removes everything this run created.
    """

    out: Path
    staging: Path
    created_parents: list[Path]

    def finalise(self) -> None:
        """Move the complete staging directory into place (replacing old contents)."""
        out = self.out
        if not out.exists():
            self.staging.rename(out)
            return
        # ``out`` exists (empty, or replaced with --overwrite). Move entries rather than the
        # directory itself, which may be the working directory.
        trash = self.staging.parent / f".{out.name}.old-{os.getpid()}"
        trash.mkdir()
        for entry in list(out.iterdir()):
            entry.rename(trash / entry.name)
        entries = sorted(self.staging.iterdir(), key=lambda p: p.name == "summary.json")
        for entry in entries:
            entry.rename(out / entry.name)
        self.staging.rmdir()
        shutil.rmtree(trash, ignore_errors=True)

    def abandon(self) -> None:
        """Remove the staging directory and any parent directories created for this run."""
        shutil.rmtree(self.staging, ignore_errors=True)
        for parent in self.created_parents:
            try:
                parent.rmdir()
            except OSError:
                break


def prepare_run_dir(out: str | Path, overwrite: bool) -> RunDirectory:
    """Check the output directory and create a fresh staging directory beside it."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise RunDirectoryError(
            f"run directory {str(out)!r} already exists and is not empty; "
            "choose another --out or pass --overwrite"
        )
    created: list[Path] = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirectoryError(f"cannot create {str(out.parent)!r}: {exc}") from None
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return RunDirectory(out=out, staging=staging, created_parents=created)


def run_experiment(
    config: OTQConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    figures: bool = True,
) -> dict[str, Any]:
    """Run every (method, seed) of ``config`` and write the run directory ``out``.

    Returns the summary (also written to ``summary.json``).
    """
    from tqdm.auto import tqdm

    run_dir = prepare_run_dir(out, overwrite)
    staging = run_dir.staging
    try:
        jobs = make_jobs(config)
        workers = config.experiment.workers or default_workers()
        workers = max(1, min(workers, len(jobs)))
        total = len(jobs) * config.experiment.episodes
        started = time.perf_counter()
        with tqdm(
            total=total,
            desc=config.experiment.name,
            unit="ep",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            results = execute_jobs(jobs, workers, bar.update)
        wall = time.perf_counter() - started
        (staging / "config.yaml").write_text(config.to_yaml())
        _write_metrics_csv(staging / "metrics.csv", results)
        summary = summarise(config, results)
        summary["run"] = {
            "otsafe_version": otsafe.__version__,
            "preset": config.preset,
            "map": config.env.map,
            "state_distribution": config.agent.state_distribution,
            "ot_method": config.agent.ot_method,
            "jobs": len(jobs),
            "workers": workers,
            "wall_seconds": wall,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {default_workers()} CPU cores",
        }
        if figures:
            from otsafe.experiments.plots import write_figures

            (staging / "figures").mkdir()
            write_figures(staging / "figures", config, results, make_env(config))
        # summary.json last: its presence marks a complete run.
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        run_dir.finalise()
    except BaseException:
        run_dir.abandon()
        raise
    return summary
