"""Environments: the OT-Q gridworld and its maps.

Importing this package registers ``otsafe/GridWorld-v0`` with Gymnasium.
"""

from __future__ import annotations

import gymnasium as gym

from otsafe.envs.gridmap import (
    ACTIONS,
    BUILTIN_MAPS,
    GridMap,
    TransitionTable,
    builtin_map_names,
    load_map,
    parse_map,
)
from otsafe.envs.gridworld import GridWorld

__all__ = [
    "ACTIONS",
    "BUILTIN_MAPS",
    "GridMap",
    "GridWorld",
    "TransitionTable",
    "builtin_map_names",
    "load_map",
    "parse_map",
]

if "otsafe/GridWorld-v0" not in gym.registry:
    gym.register(id="otsafe/GridWorld-v0", entry_point="otsafe.envs.gridworld:GridWorld")
