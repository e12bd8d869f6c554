"""Safety layers: the batched differentiable QP, control barrier functions, safety filters.

Importing this package imports PyTorch; the tabular OT-Q code never does.
"""

from __future__ import annotations

from otsafe.safety.ambiguity import WassersteinBall, linear_worst_case_margin, worst_case
from otsafe.safety.barriers import (
    Barrier,
    BoxObstacleBarrier,
    CircleBarrier,
    FunctionBarrier,
    HalfSpaceBarrier,
    SphereBarrier,
    box_barriers,
)
from otsafe.safety.cbf import cbf_margin, cbf_rows
from otsafe.safety.filter import FilterInfo, SafetyAwareEnv, SafetyFilter, SafetyFilterWrapper
from otsafe.safety.models import (
    ControlAffineModel,
    DoubleIntegrator,
    ModelJacobians,
    SingleIntegrator,
    check_model_jacobians,
)
from otsafe.safety.qp import QPError, QPInfo, QPStatus, solve_qp

__all__ = [
    "Barrier",
    "BoxObstacleBarrier",
    "CircleBarrier",
    "ControlAffineModel",
    "DoubleIntegrator",
    "FilterInfo",
    "FunctionBarrier",
    "HalfSpaceBarrier",
    "ModelJacobians",
    "QPError",
    "QPInfo",
    "QPStatus",
    "SafetyAwareEnv",
    "SafetyFilter",
    "SafetyFilterWrapper",
    "SingleIntegrator",
    "SphereBarrier",
    "WassersteinBall",
    "box_barriers",
    "cbf_margin",
    "cbf_rows",
    "check_model_jacobians",
    "linear_worst_case_margin",
    "solve_qp",
    "worst_case",
]
