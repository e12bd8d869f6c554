"""Agents: tabular Q-learning and OT-Q; DDPG, DDPG behind a CBF-QP, and DSRL.

The tabular agents import no PyTorch; the DDPG family (``otsafe.agents.ddpg``) is loaded on first
use of one of its names.
"""

from __future__ import annotations

from typing import Any

from otsafe.agents.tabular import (
    EpisodeMetrics,
    OTMethod,
    OTQLearning,
    QLearning,
    StateDistribution,
)

__all__ = [
    "DDPGAgent",
    "DDPGConfig",
    "EpisodeMetrics",
    "OTMethod",
    "OTQLearning",
    "QLearning",
    "SafetyConfig",
    "SafetyLayer",
    "StateDistribution",
]

_LAZY = {"DDPGAgent", "DDPGConfig", "SafetyConfig", "SafetyLayer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from otsafe.agents import ddpg

        return getattr(ddpg, name)
    raise AttributeError(f"module 'otsafe.agents' has no attribute {name!r}")
