"""Import POT without its PyTorch backend.

POT imports PyTorch at import time whenever it is installed, only to register a backend that
otsafe's NumPy code never uses. That costs about 0.9 s per process, in every worker of a sweep,
and puts torch in the import path of the tabular OT-Q code. If POT is not imported yet, otsafe
imports it with ``POT_BACKEND_DISABLE_PYTORCH`` set and then restores the environment, so child
processes and later code see it unchanged.

If you need POT's torch backend in the same process, ``import ot`` before importing otsafe.
"""

from __future__ import annotations

import os
import sys

_KEY = "POT_BACKEND_DISABLE_PYTORCH"

if "ot" not in sys.modules and _KEY not in os.environ:
    os.environ[_KEY] = "1"
    try:
        import ot
    finally:
        del os.environ[_KEY]
else:
    import ot

__all__ = ["ot"]
