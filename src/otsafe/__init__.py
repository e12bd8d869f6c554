"""otsafe: safe reinforcement learning with optimal transport.

Subpackages
-----------
envs
    Gymnasium environments (the OT-Q gridworld ``otsafe/GridWorld-v0``).
transport
    Exact optimal transport (Eq. 3-4 of the OT-Q paper) and grid helpers.
markov
    State distributions of policy-induced Markov chains.
agents
    Tabular Q-learning and OT-assisted Q-learning.
experiments
    Configs, presets, the runner, metrics, statistics, figures.
"""

from __future__ import annotations

from otsafe import envs as envs  # registers the Gymnasium environments
from otsafe.errors import OtsafeError

__version__ = "0.1.0"
__all__ = ["OtsafeError", "__version__", "envs"]
