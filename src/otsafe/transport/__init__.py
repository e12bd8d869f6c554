"""Optimal transport: exact plans and Wasserstein distances (OT-Q paper, Eq. 3-4).

``ot_plan`` and ``wasserstein`` solve a single problem with POT; ``ExactOT`` re-solves problems on a
fixed cost; ``GridExactOT`` solves grid problems with the squared Euclidean cost exactly on a
tripartite network, several times faster (see :mod:`otsafe.transport.tripartite`).
"""

from __future__ import annotations

from otsafe.transport.costs import grid_coordinates, sqeuclidean_cost
from otsafe.transport.exact import (
    ExactOT,
    OTSolution,
    check_marginals,
    ot_plan,
    wasserstein,
)
from otsafe.transport.tripartite import GridExactOT, GridPlan

__all__ = [
    "ExactOT",
    "GridExactOT",
    "GridPlan",
    "OTSolution",
    "check_marginals",
    "grid_coordinates",
    "ot_plan",
    "sqeuclidean_cost",
    "wasserstein",
]
