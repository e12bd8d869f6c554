"""The prepared GPU call (scripts/gpu_checks.sh, scripts/gpu_wheels.sh) at least parses.

Running it needs a GPU machine (docs/benchmarks.md, *GPU checks*); its CPU smoke run
(``DEVICE=cpu QUICK=1``) takes about a minute, too long for the suite.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("name", ["gpu_checks.sh", "gpu_wheels.sh"])
def test_shell_script_parses(name: str) -> None:
    result = subprocess.run(
        ["bash", "-n", str(SCRIPTS / name)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_every_pytest_file_the_gpu_call_names_exists() -> None:
    text = (SCRIPTS / "gpu_checks.sh").read_text()
    named = {word for word in text.split() if word.startswith("tests/test_")}
    assert named, "the script names no test files"
    missing = sorted(n for n in named if not (SCRIPTS.parent / n).is_file())
    assert not missing
    for bench in ("bench_qp.py", "bench_grid_ot.py", "bench_markov.py", "bench_otq_large.py"):
        assert f"benchmarks/{bench}" in text
        assert (SCRIPTS.parent / "benchmarks" / bench).is_file()
