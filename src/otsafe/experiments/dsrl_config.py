"""Validated configuration of a DSRL experiment (presets ``dsrl-dubins``, ``dsrl-quadrotor``).

Same layering and errors as :mod:`otsafe.experiments.config` (preset, ``--config``, shortcuts,
``--set``); a preset whose YAML has ``kind: dsrl`` resolves to :class:`DSRLConfig`.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DSRLConfig", "DSRLMethod", "StrictModel"]

DSRLMethod = Literal["ddpg", "ddpg-cbf", "dsrl"]

#: The safety layer of each method (DESIGN §2).
SAFETY_MODE: dict[str, Literal["none", "nominal", "worst"]] = {
    "ddpg": "none",
    "ddpg-cbf": "nominal",
    "dsrl": "worst",
}


def _all_methods() -> list[DSRLMethod]:
    return ["ddpg", "ddpg-cbf", "dsrl"]


Direction = Literal["fixed", "random", "worst"]


def _all_directions() -> list[Direction]:
    return ["fixed", "random", "worst"]


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_yaml(self) -> str:
        """The model as YAML, in field order (what ``config.yaml`` holds)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class DSRLExperiment(StrictModel):
    """What to run."""

    name: str = "dsrl-dubins"
    description: str = ""
    methods: list[DSRLMethod] = Field(default_factory=_all_methods, min_length=1)
    seeds: int = Field(5, ge=1, le=1000)
    seed_start: int = Field(0, ge=0)
    train_episodes: int = Field(60, ge=1)
    eval_episodes: int = Field(10, ge=1, description="episodes per evaluation distribution")
    workers: int = Field(0, ge=0, description="parallel processes; 0 = one per CPU core")
    device: Literal["cpu", "cuda"] = "cpu"
    checkpoint_every: int = Field(
        10, ge=0, description="training episodes between checkpoints of each job; 0 = at the end"
    )
    tensorboard: bool = Field(False, description="log every training episode to TensorBoard")

    @field_validator("methods")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"methods must not repeat, got {value}")
        return value


class DSRLEnv(StrictModel):
    """The environment and its nominal uncertainty p0 (a Gaussian)."""

    id: Literal["dubins", "quadrotor"] = "dubins"
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the environment's constructor"
    )
    nominal_mean: float = 0.0
    nominal_std: float = Field(0.1, ge=0)


class DSRLAgent(StrictModel):
    """DDPG hyperparameters (:class:`otsafe.agents.ddpg.DDPGConfig`)."""

    hidden: list[int] = Field(default_factory=lambda: [128, 128], min_length=1)
    actor_lr: float = Field(1e-3, gt=0)
    critic_lr: float = Field(1e-3, gt=0)
    gamma: float = Field(0.99, ge=0, le=1)
    tau: float = Field(0.005, gt=0, le=1)
    batch_size: int = Field(128, ge=1)
    buffer_size: int = Field(100_000, ge=1)
    learning_starts: int = Field(1000, ge=0)
    exploration_noise: float = Field(0.1, ge=0)
    updates_per_step: int = Field(1, ge=1)


class DSRLSafety(StrictModel):
    """The safety layer (:class:`otsafe.agents.ddpg.SafetyConfig`); ``mode`` comes from the
    method."""

    alpha: float = Field(1.0, gt=0)
    alpha2: float | None = Field(None, gt=0)
    n_atoms: int = Field(16, ge=1)
    radius: float = Field(0.2, ge=0, description="rho, the Wasserstein radius")
    order: Literal[1, 2] = 1
    ascent_steps: int = Field(3, ge=0)
    ascent_step_size: float = Field(1.0, gt=0)
    worst_case_loss: Literal["margin", "actor"] = "margin"
    alternations: int = Field(1, ge=1)
    slack_penalty: float | None = Field(None, gt=0)
    qp_backend: Literal["native", "cvxpylayers"] = Field(
        "native", description="QP solver; cvxpylayers is the slow reference (benchmarks)"
    )
    weight: list[float] | None = Field(
        None,
        description="diagonal weight of the QP objective; the car uses [10, 1] so that the "
        "filter steers rather than brakes",
    )


class DSRLEval(StrictModel):
    """Evaluation under distribution shift (DESIGN §2)."""

    deltas: list[float] = Field(
        default_factory=lambda: [0.0, 0.5, 1.0, 2.0],
        description="mean shifts as multiples of the radius rho",
    )
    directions: list[Direction] = Field(default_factory=_all_directions, min_length=1)
    heavy_tailed_df: float | None = Field(3.0, gt=0, description="Student-t df; None skips")
    reference_radius: float | None = Field(
        None,
        gt=0,
        description="unit of the deltas; None uses safety.radius (set it to compare radii "
        "at the same absolute shifts)",
    )

    @field_validator("deltas")
    @classmethod
    def _nonneg(cls, value: list[float]) -> list[float]:
        if not value or any(d < 0 for d in value):
            raise ValueError(
                f"deltas must be a non-empty list of non-negative numbers, got {value}"
            )
        return value


class DSRLConfig(StrictModel):
    """A complete DSRL experiment."""

    kind: Literal["dsrl"] = "dsrl"
    preset: str = "dsrl-dubins"
    experiment: DSRLExperiment = Field(default_factory=DSRLExperiment)
    env: DSRLEnv = Field(default_factory=DSRLEnv)
    agent: DSRLAgent = Field(default_factory=DSRLAgent)
    safety: DSRLSafety = Field(default_factory=DSRLSafety)
    eval: DSRLEval = Field(default_factory=DSRLEval)
