"""Agents: tabular Q-learning and OT-assisted risk-sensitive Q-learning.

The tabular agents import no PyTorch.
"""

from __future__ import annotations

from otsafe.agents.tabular import (
    EpisodeMetrics,
    OTMethod,
    OTQLearning,
    QLearning,
    StateDistribution,
)

__all__ = ["EpisodeMetrics", "OTMethod", "OTQLearning", "QLearning", "StateDistribution"]
