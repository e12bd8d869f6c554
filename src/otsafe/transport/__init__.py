"""Optimal transport: exact plans and Wasserstein distances (OT-Q paper, Eq. 3-4).

``ot_plan`` and ``wasserstein`` solve a single problem with POT; ``ExactOT`` re-solves problems on a
fixed cost; ``GridExactOT`` solves grid problems with the squared Euclidean cost exactly on a
tripartite network, several times faster (see :mod:`otsafe.transport.tripartite`);
``GridMultiscaleOT`` solves them exactly on sparse arc sets with a global optimality check, for
the mid range (10^4 - 10^5 cells, see :mod:`otsafe.transport.multiscale`).

At scale (10^4 - 10^6 cells), ``grid_plan`` / ``grid_wasserstein`` switch to ``GridSinkhorn``, a
log-domain Sinkhorn with separable kernels on CPU or CUDA that never forms the n x n cost or plan
(see :mod:`otsafe.transport.grid_sinkhorn`).
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
from otsafe.transport.grid import (
    AUTO_EXACT_MAX_CELLS,
    TRIPARTITE_MAX_CELLS,
    ExactGridPlan,
    GridOTPlan,
    grid_plan,
    grid_wasserstein,
)
from otsafe.transport.grid_sinkhorn import GridSinkhorn, GridSinkhornPlan, SinkhornInfo
from otsafe.transport.multiscale import GridMultiscaleOT, MultiscaleInfo
from otsafe.transport.tripartite import GridExactOT, GridPlan

__all__ = [
    "AUTO_EXACT_MAX_CELLS",
    "TRIPARTITE_MAX_CELLS",
    "ExactGridPlan",
    "ExactOT",
    "GridExactOT",
    "GridMultiscaleOT",
    "GridOTPlan",
    "GridPlan",
    "GridSinkhorn",
    "GridSinkhornPlan",
    "MultiscaleInfo",
    "OTSolution",
    "SinkhornInfo",
    "check_marginals",
    "grid_coordinates",
    "grid_plan",
    "grid_wasserstein",
    "ot_plan",
    "sqeuclidean_cost",
    "wasserstein",
]
