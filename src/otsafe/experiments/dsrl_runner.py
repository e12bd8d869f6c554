"""Run a DSRL experiment: train ddpg / ddpg-cbf / dsrl, then evaluate under distribution shift.

Data flow: config -> jobs (method, seed) -> agent <-> env (+ safety layer) -> metrics -> report.

Each job trains one agent under the nominal uncertainty :math:`p_0`. It then evaluates the
trained deterministic policy, behind its own filter, under:

* the nominal distribution;
* mean shifts by :math:`\\delta \\in` ``eval.deltas`` :math:`\\times\\,\\rho`, in three kinds of
  direction:
  - ``fixed``: from the start towards the first obstacle;
  - ``random``: one direction per job, drawn from its seed;
  - ``worst``: recomputed at every step as the direction that most decreases the binding barrier
    margin, :math:`-\\nabla_\\omega m / \\|\\nabla_\\omega m\\|` at the executed action;
* a heavy-tailed Student-t with the nominal scale.

The run directory (staged, then moved into place as for OT-Q) holds:

* ``config.yaml``;
* ``metrics.csv``: training, one row per (method, seed, episode);
* ``eval.csv``: one row per (method, seed, distribution, direction, delta), with the means over
  the evaluation episodes of: ``violation_rate`` (share of episodes with h < 0),
  ``violation_steps``, ``return``, ``success_rate``, ``slack_activations`` and
  ``interventions`` (steps where the filter changed the action); ``min_barrier`` is the
  smallest clearance over all of them;
* ``summary.json``;
* ``figures/``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from otsafe.experiments.checkpoint import JobContext, train_with_checkpoints
from otsafe.experiments.dsrl_config import SAFETY_MODE, DSRLConfig
from otsafe.experiments.execution import execute_run
from otsafe.experiments.stats import mean_ci
from otsafe.experiments.tensorboard import episode_logger

__all__ = ["DSRLJob", "DSRLResult", "run_dsrl", "run_dsrl_job"]

ENV_IDS = {"dubins": "otsafe/DubinsCar-v0", "quadrotor": "otsafe/Quadrotor-v0"}
RELATIVE_DEGREE = {"dubins": 1, "quadrotor": 2}
TRAIN_COLUMNS = (
    "return",
    "length",
    "violation",
    "violation_steps",
    "min_barrier",
    "interventions",
    "slack_activations",
    "success",
)
EVAL_COLUMNS = (
    "violation_rate",
    "violation_steps",
    "min_barrier",
    "return",
    "success_rate",
    "slack_activations",
    "interventions",
    "episodes",
)


@dataclass(frozen=True)
class DSRLJob:
    method: str
    seed: int
    config: DSRLConfig


@dataclass
class DSRLResult:
    job: DSRLJob
    train: dict[str, list[float]]
    evaluation: list[dict[str, Any]]
    trajectories: dict[str, list[list[float]]] = field(default_factory=dict)
    atoms: dict[str, list[list[float]]] = field(default_factory=dict)
    seconds: float = 0.0
    env_steps: int = 0


# ------------------------------------------------------------------------------- building
def make_env(config: DSRLConfig) -> Any:
    """The Gymnasium environment of the config, with the nominal uncertainty p0."""
    import gymnasium as gym

    import otsafe.envs  # noqa: F401  (registers the environments)
    from otsafe.envs.uncertainty import Gaussian

    env = gym.make(ENV_IDS[config.env.id], **config.env.params)
    base: Any = env.unwrapped
    base.set_disturbance(Gaussian(config.env.nominal_mean, config.env.nominal_std))
    return env


def nominal(config: DSRLConfig) -> Any:
    from otsafe.envs.uncertainty import Gaussian

    return Gaussian(config.env.nominal_mean, config.env.nominal_std)


def make_agent(config: DSRLConfig, env: Any, method: str, seed: int) -> Any:
    """DDPG with the safety layer of ``method`` (ddpg: none, ddpg-cbf: nominal, dsrl: worst)."""
    import torch

    from otsafe.agents.ddpg import DDPGAgent, DDPGConfig, SafetyConfig, SafetyLayer

    base = env.unwrapped
    model = base.control_affine_model
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 3]).generate_state(1)[0]))
    dist = nominal(config).with_dim(model.disturbance_dim)
    atoms = dist.atoms(config.safety.n_atoms, generator=gen, dtype=torch.float64).to(
        torch.device(config.experiment.device)
    )
    s = config.safety
    safety_cfg = SafetyConfig(
        mode=SAFETY_MODE[method],
        alpha=s.alpha,
        alpha2=s.alpha2,
        relative_degree=RELATIVE_DEGREE[config.env.id],
        n_atoms=s.n_atoms,
        radius=s.radius,
        order=s.order,
        ascent_steps=s.ascent_steps,
        ascent_step_size=s.ascent_step_size,
        worst_case_loss=s.worst_case_loss,
        alternations=s.alternations,
        slack_penalty=s.slack_penalty,
        weight=None if s.weight is None else tuple(s.weight),
        backend=s.qp_backend,
    )
    low = np.asarray(env.action_space.low, dtype=np.float64)
    high = np.asarray(env.action_space.high, dtype=np.float64)
    layer = SafetyLayer(model, base.barriers(), low, high, safety_cfg, atoms)
    a = config.agent
    ddpg_cfg = DDPGConfig(
        hidden=tuple(a.hidden),
        actor_lr=a.actor_lr,
        critic_lr=a.critic_lr,
        gamma=a.gamma,
        tau=a.tau,
        batch_size=a.batch_size,
        buffer_size=a.buffer_size,
        learning_starts=a.learning_starts,
        exploration_noise=a.exploration_noise,
        updates_per_step=a.updates_per_step,
    )
    obs_dim = int(np.prod(env.observation_space.shape))
    return DDPGAgent(obs_dim, low, high, layer, ddpg_cfg, seed=seed)


# ------------------------------------------------------------------------------- episodes
def run_episode(
    env: Any,
    agent: Any,
    seed: int,
    train: bool,
    disturbance_hook: Callable[[Any, np.ndarray[Any, Any], np.ndarray[Any, Any]], None]
    | None = None,
    record: bool = False,
) -> dict[str, Any]:
    """One episode; returns its metrics (and the positions if ``record``)."""
    obs, _ = env.reset(seed=seed)
    base = env.unwrapped
    total = 0.0
    violation_steps = interventions = slack_activations = length = 0
    min_barrier = math.inf
    success = False
    path = []
    done = False
    while not done:
        state = np.asarray(base.safety_state(), dtype=np.float64)
        if record:
            path.append(state.tolist())
        action, out = agent.act(obs, state, explore=train)
        if disturbance_hook is not None:
            disturbance_hook(base, state, action)
        next_obs, reward, terminated, truncated, info = env.step(action.astype(np.float32))
        next_state = np.asarray(base.safety_state(), dtype=np.float64)
        total += float(reward)
        length += 1
        violation_steps += int(bool(info["violation"]))
        min_barrier = min(min_barrier, float(info["min_barrier"]))
        interventions += int(bool(out.changed[0].item()))
        slack_activations += int(float(out.slack[0].item()) > 1e-9)
        success = success or bool(info["goal_reached"])
        if train:
            agent.observe(
                obs=obs,
                state=state,
                action=action,
                reward=float(reward),
                next_obs=next_obs,
                next_state=next_state,
                done=float(terminated),
            )
            for _ in range(agent.config.updates_per_step):
                agent.update()
        obs = next_obs
        done = bool(terminated or truncated)
    if record:
        path.append(np.asarray(base.safety_state()).tolist())
    return {
        "return": total,
        "length": length,
        "violation": float(violation_steps > 0),
        "violation_steps": violation_steps,
        "min_barrier": min_barrier,
        "interventions": interventions,
        "slack_activations": slack_activations,
        "success": float(success),
        "path": path,
    }


def eval_episode_seed(seed: int, k: int) -> int:
    """The reset seed of evaluation episode ``k`` of the agent trained with ``seed`` (the same
    for every evaluation distribution, so they differ only in the disturbance)."""
    return int(np.random.SeedSequence([seed, 300, k]).generate_state(1)[0])


def worst_direction_hook(agent: Any, delta: float, base_dist: Any) -> Callable[..., None]:
    """Per step, shift the disturbance by ``delta`` along the most harmful direction."""
    import torch

    from otsafe.envs.uncertainty import MeanShift
    from otsafe.safety.cbf import cbf_margin

    layer = agent.safety
    rates = dict(layer.rates)
    previous: list[np.ndarray[Any, Any]] = []

    def hook(base: Any, state: np.ndarray[Any, Any], action: np.ndarray[Any, Any]) -> None:
        dev = layer.device
        x = torch.as_tensor(state, dtype=torch.float64, device=dev)[None]
        u = torch.as_tensor(action, dtype=torch.float64, device=dev)[None]
        w = torch.as_tensor(base_dist.mean, dtype=torch.float64, device=dev)[None, None]
        w.requires_grad_(True)
        m = cbf_margin(layer.model, layer.barriers, x, u, w, **rates)  # (1, 1, J)
        (grad,) = torch.autograd.grad(m[0, 0].min(), w)
        g = grad[0, 0].cpu().numpy()
        norm = float(np.linalg.norm(g))
        if norm > 0:
            previous[:] = [-g / norm]
        direction = previous[0] if previous else np.eye(len(g))[0]
        base.set_disturbance(MeanShift(base_dist, delta, "worst", vector=direction))

    return hook


# ------------------------------------------------------------------------------------ job
def job_key(job: DSRLJob) -> str:
    """The job's name in checkpoints and logs: ``<method>-seed<k>``."""
    return f"{job.method}-seed{job.seed}"


def run_dsrl_job(job: DSRLJob, ctx: JobContext | None = None) -> DSRLResult:
    """Train one agent under p0, then evaluate it under every distribution of the config.

    With a checkpoint store in ``ctx``, training resumes from the job's checkpoint and writes
    new ones; evaluation (deterministic given the trained agent) reruns whole if interrupted.
    """
    import torch

    from otsafe.envs.uncertainty import Gaussian, MeanShift, StudentT

    ctx = ctx or JobContext()
    key = job_key(job)
    cfg = job.config
    saved = ctx.load(key)
    if saved is not None and saved.get("result") is not None:
        ctx.tick(cfg.experiment.train_episodes)
        done: DSRLResult = saved["result"]
        return done
    torch.set_num_threads(1)
    env = make_env(cfg)
    agent = make_agent(cfg, env, job.method, job.seed)

    def episode(k: int) -> dict[str, Any]:
        ep_seed = int(np.random.SeedSequence([job.seed, 100, k]).generate_state(1)[0])
        m = run_episode(env, agent, ep_seed, train=True)
        return {"episode": k + 1, **{c: float(m[c]) for c in TRAIN_COLUMNS}}

    first = 0 if saved is None else len(saved["rows"])
    with episode_logger(ctx, key, cfg.experiment.tensorboard, first) as log:
        rows, train_seconds = train_with_checkpoints(
            key, agent, cfg.experiment.train_episodes, episode, ctx, saved=saved, on_episode=log
        )
    train = {c: [row[c] for row in rows] for c in TRAIN_COLUMNS}
    steps = int(sum(train["length"]))
    ctx.check_stop("evaluation")

    base = env.unwrapped
    p0 = Gaussian(cfg.env.nominal_mean, cfg.env.nominal_std).with_dim(
        base.control_affine_model.disturbance_dim
    )
    rho = cfg.eval.reference_radius or cfg.safety.radius
    obstacle_dir = _fixed_direction(base, p0.dim)
    dists: list[tuple[str, str, float, Any]] = []
    for direction in cfg.eval.directions:
        for mult in cfg.eval.deltas:
            delta = mult * rho
            if direction == "fixed":
                dists.append(("shift", "fixed", mult, MeanShift(p0, delta, obstacle_dir)))
            elif direction == "random":
                seed = int(np.random.SeedSequence([job.seed, 200]).generate_state(1)[0])
                dists.append(("shift", "random", mult, MeanShift(p0, delta, "random", seed=seed)))
            else:
                dists.append(("shift", "worst", mult, delta))
    if cfg.eval.heavy_tailed_df is not None:
        dists.append(
            (
                "student-t",
                "none",
                0.0,
                StudentT(
                    cfg.eval.heavy_tailed_df, scale=cfg.env.nominal_std, mean=cfg.env.nominal_mean
                ).with_dim(p0.dim),
            )
        )
    evaluation = []
    trajectories: dict[str, list[list[float]]] = {}
    for name, kind, mult, dist in dists:
        ctx.check_stop("evaluation")
        hook = None
        if kind == "worst":
            hook = worst_direction_hook(agent, float(dist), p0)
        else:
            base.set_disturbance(dist)
        episodes = []
        for k in range(cfg.experiment.eval_episodes):
            ep_seed = eval_episode_seed(job.seed, k)
            record = k == 0 and mult in (0.0, max(cfg.eval.deltas))
            m = run_episode(env, agent, ep_seed, train=False, disturbance_hook=hook, record=record)
            if record:
                trajectories[f"{kind}:{mult:g}"] = m["path"]
            episodes.append(m)
        evaluation.append(
            {
                "distribution": name,
                "direction": kind,
                "delta": mult,
                "violation_rate": float(np.mean([e["violation"] for e in episodes])),
                "violation_steps": float(np.mean([e["violation_steps"] for e in episodes])),
                "min_barrier": float(np.min([e["min_barrier"] for e in episodes])),
                "return": float(np.mean([e["return"] for e in episodes])),
                "success_rate": float(np.mean([e["success"] for e in episodes])),
                "slack_activations": float(np.mean([e["slack_activations"] for e in episodes])),
                "interventions": float(np.mean([e["interventions"] for e in episodes])),
                "episodes": len(episodes),
            }
        )
        base.set_disturbance(p0)
    atoms = _atoms_example(agent, env)
    result = DSRLResult(
        job=job,
        train=train,
        evaluation=evaluation,
        trajectories=trajectories,
        atoms=atoms,
        seconds=train_seconds,
        env_steps=steps,
    )
    ctx.finished(key, result)
    return result


def _fixed_direction(base: Any, dim: int) -> np.ndarray[Any, Any]:
    """Unit vector from the start towards the first obstacle (the planar/spatial part)."""
    state = np.asarray(base.safety_state(), dtype=np.float64)
    obstacles = getattr(base, "obstacles", None)
    if obstacles:
        center = np.asarray(obstacles[0][0], dtype=np.float64)[:dim]
        v = center - state[:dim]
        if np.linalg.norm(v) > 0:
            return np.asarray(v / np.linalg.norm(v))
    fallback: np.ndarray[Any, Any] = np.eye(dim)[0]
    return fallback


def _atoms_example(agent: Any, env: Any) -> dict[str, list[list[float]]]:
    """Nominal vs worst-case atoms at the start state with the policy's action (for a figure)."""
    import torch

    from otsafe.agents.ddpg import SafetyConfig, SafetyLayer

    layer = agent.safety
    obs, _ = env.reset(seed=0)
    dev = layer.device
    state = torch.as_tensor(env.unwrapped.safety_state(), dtype=torch.float64, device=dev)[None]
    with torch.no_grad():
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=dev)[None]
        u_ref = agent.actor(obs_t).to(torch.float64)
    worst_cfg = SafetyConfig(**{**layer.config.__dict__, "mode": "worst"})
    probe = SafetyLayer(
        layer.model, layer.barriers, agent.low, agent.high, worst_cfg, layer.nominal_atoms
    )
    out = probe(state, u_ref)
    worst = out.atoms[0] if out.atoms is not None else layer.nominal_atoms
    return {"nominal": layer.nominal_atoms.cpu().tolist(), "worst": worst.cpu().tolist()}


# ---------------------------------------------------------------------------------- summary
def summarise(config: DSRLConfig, results: list[DSRLResult]) -> dict[str, Any]:
    """Per method: training statistics and the evaluation table with CIs over seeds."""
    out: dict[str, Any] = {"methods": {}, "comparisons": {}}
    by_method: dict[str, list[DSRLResult]] = {}
    for r in results:
        by_method.setdefault(r.job.method, []).append(r)
    for method, runs in by_method.items():
        train = {
            "final_return": mean_ci([np.mean(r.train["return"][-10:]) for r in runs]).as_dict(),
            "train_violation_rate": mean_ci(
                [np.mean(r.train["violation"]) for r in runs]
            ).as_dict(),
            "train_seconds": mean_ci([r.seconds for r in runs]).as_dict(),
            "env_steps_per_second": mean_ci(
                [r.env_steps / max(r.seconds, 1e-9) for r in runs]
            ).as_dict(),
        }
        evaluation: dict[str, Any] = {}
        keys = [(row["distribution"], row["direction"], row["delta"]) for row in runs[0].evaluation]
        for k, key in enumerate(keys):
            label = f"{key[0]}/{key[1]}/{key[2]:g}"
            evaluation[label] = {
                col: mean_ci([r.evaluation[k].get(col, math.nan) for r in runs]).as_dict()
                for col in (
                    "violation_rate",
                    "min_barrier",
                    "return",
                    "success_rate",
                    "slack_activations",
                    "interventions",
                )
            }
        out["methods"][method] = {
            "seeds": [r.job.seed for r in runs],
            "train": train,
            "eval": evaluation,
        }
    for treat, ref in (("dsrl", "ddpg-cbf"), ("dsrl", "ddpg"), ("ddpg-cbf", "ddpg")):
        if treat in by_method and ref in by_method:
            comp = {}
            for k, row in enumerate(by_method[treat][0].evaluation):
                label = f"{row['distribution']}/{row['direction']}/{row['delta']:g}"
                diff = [
                    a.evaluation[k]["violation_rate"] - b.evaluation[k]["violation_rate"]
                    for a, b in zip(by_method[treat], by_method[ref], strict=False)
                ]
                comp[label] = mean_ci(diff).as_dict()
            out["comparisons"][f"{treat} - {ref} (violation rate)"] = comp
    return out


def _write_csvs(directory: Path, results: list[DSRLResult]) -> None:
    with (directory / "metrics.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "seed", "episode", *TRAIN_COLUMNS])
        for r in results:
            for e in range(len(r.train["return"])):
                w.writerow(
                    [r.job.method, r.job.seed, e + 1, *(repr(r.train[c][e]) for c in TRAIN_COLUMNS)]
                )
    with (directory / "eval.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "seed", "distribution", "direction", "delta_over_rho", *EVAL_COLUMNS])
        for r in results:
            for row in r.evaluation:
                w.writerow(
                    [
                        r.job.method,
                        r.job.seed,
                        row["distribution"],
                        row["direction"],
                        f"{row['delta']:g}",
                        # .get: results saved by a version without a column (resumed runs)
                        *(repr(row.get(c, math.nan)) for c in EVAL_COLUMNS),
                    ]
                )


# ------------------------------------------------------------------------------------- run
def make_jobs(config: DSRLConfig) -> list[DSRLJob]:
    exp = config.experiment
    seeds = range(exp.seed_start, exp.seed_start + exp.seeds)
    return [DSRLJob(method, seed, config) for method in exp.methods for seed in seeds]


def run_dsrl(
    config: DSRLConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    label: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate every (method, seed) of ``config`` into the run directory ``out``.

    Checkpoints, resume and ``label`` as for :func:`otsafe.experiments.runner.run_experiment`.
    """

    def write_outputs(
        staging: Path, results: list[DSRLResult], run_info: dict[str, Any]
    ) -> dict[str, Any]:
        _write_csvs(staging, results)
        summary = summarise(config, results)
        summary["run"] = {
            "label": label or "",
            "preset": config.preset,
            "env": config.env.id,
            "device": config.experiment.device,
        }
        if figures:
            from otsafe.experiments.dsrl_plots import write_dsrl_figures

            (staging / "figures").mkdir()
            write_dsrl_figures(staging / "figures", config, results, make_env(config))
        return summary

    return execute_run(
        name=config.experiment.name,
        config=config.model_dump(mode="json"),
        out=out,
        jobs=make_jobs(config),
        job_fn=run_dsrl_job,
        episodes_per_job=config.experiment.train_episodes,
        workers=config.experiment.workers,
        checkpoint_every=config.experiment.checkpoint_every,
        write_outputs=write_outputs,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
    )
