"""Experiments: configuration, presets, the runner, metrics, statistics and figures."""

from __future__ import annotations

from otsafe.experiments.config import OTQConfig, list_presets, resolve_config
from otsafe.experiments.metrics import convergence_episode
from otsafe.experiments.runner import run_experiment

__all__ = ["OTQConfig", "convergence_episode", "list_presets", "resolve_config", "run_experiment"]
