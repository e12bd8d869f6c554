"""Environments: the OT-Q gridworld and its maps; the DSRL Dubins car and quadrotor.

Importing this package registers ``otsafe/GridWorld-v0``, ``otsafe/DubinsCar-v0`` and
``otsafe/Quadrotor-v0`` with Gymnasium. The continuous environments (and PyTorch, which their
models use) are imported only when one of them is made.
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
if "otsafe/DubinsCar-v0" not in gym.registry:
    gym.register(id="otsafe/DubinsCar-v0", entry_point="otsafe.envs.dubins:DubinsCar")
if "otsafe/Quadrotor-v0" not in gym.registry:
    gym.register(id="otsafe/Quadrotor-v0", entry_point="otsafe.envs.quadrotor:Quadrotor")
