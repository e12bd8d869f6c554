"""Import hygiene: the tabular OT-Q code never imports PyTorch."""

from __future__ import annotations

import subprocess
import sys


def test_tabular_code_does_not_import_torch() -> None:
    code = (
        "import sys, otsafe, otsafe.envs, otsafe.markov, otsafe.transport, otsafe.agents, "
        "otsafe.experiments, otsafe.cli\n"
        "from otsafe.experiments.runner import run_experiment\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_safety_package_imports_torch_lazily_from_its_own_namespace() -> None:
    code = "import sys, otsafe.safety\nassert 'torch' in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)
