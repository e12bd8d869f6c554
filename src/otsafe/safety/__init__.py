"""Safety layers: the batched differentiable QP, control barrier functions, safety filters.

Importing this package imports PyTorch; the tabular OT-Q code never does.
"""

from __future__ import annotations

from otsafe.safety.qp import QPError, QPInfo, QPStatus, solve_qp

__all__ = ["QPError", "QPInfo", "QPStatus", "solve_qp"]
