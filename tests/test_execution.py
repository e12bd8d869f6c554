"""Tests of otsafe.experiments.execution: the worker start method for GPU runs.

CUDA cannot be used in a child forked after the parent touched it (the config validation calls
``torch.cuda.is_available()``), so GPU runs start their workers with ``spawn``. No GPU is
needed here: the spawn path itself runs on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from otsafe.experiments import execution
from otsafe.experiments.checkpoint import JobContext


def square(job: int, ctx: JobContext) -> int:
    """A job for the worker processes (module level, so that spawned workers can import it)."""
    ctx.tick()
    return job * job


@pytest.mark.parametrize(
    ("devices", "expected"),
    [([], None), (["cpu"], None), (["cuda"], "spawn"), (["cpu", "cuda:1"], "spawn")],
)
def test_start_method(devices: list[str], expected: str | None) -> None:
    assert execution.start_method(devices) == expected


def test_spawned_workers_run_the_jobs_in_order() -> None:
    ticks: list[int] = []
    out = execution.run_jobs(square, [3, 1, 2, 5], workers=2, progress=ticks.append, method="spawn")
    assert out == [9, 1, 4, 25]


@pytest.mark.parametrize(("device", "expected"), [("cuda", "spawn"), ("cpu", None)])
def test_a_gpu_run_starts_its_workers_with_spawn(
    device: str, expected: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[str | None] = []
    real = execution.run_jobs

    def recording(*args: Any, method: str | None = None, **kwargs: Any) -> Any:
        used.append(method)
        return real(*args, method="spawn" if method == "spawn" else None, **kwargs)

    monkeypatch.setattr(execution, "run_jobs", recording)

    def write_outputs(staging: Path, results: list[int], info: dict[str, Any]) -> dict[str, Any]:
        summary = {"results": results, "run": info}
        (staging / "summary.json").write_text(json.dumps(summary))
        return summary

    summary = execution.execute_run(
        name="t",
        config={"experiment": {"name": "t", "device": device}},
        out=tmp_path / "run",
        jobs=[1, 2, 3],
        job_fn=square,
        episodes_per_job=1,
        workers=2,
        checkpoint_every=0,
        write_outputs=write_outputs,
        progress=False,
    )
    assert used == [expected]
    assert summary["results"] == [1, 4, 9]
