"""``otsafe reproduce``: the papers' experiments and sensitivity sweeps, then their reports.

Each paper is a list of built-in sweeps (``src/otsafe/experiments/sweeps/*.yaml``, listed by
``otsafe sweeps``; copy one to start your own):

========  =====================================================  ===========================
paper     sweeps                                                 ``--quick``
========  =====================================================  ===========================
``otq``   ``otq-paper`` (OT-Q vs Q-learning), ``otq-beta``       ``*-quick``: 2 seeds x 30
          (beta sensitivity)                                     episodes, 2 betas
``dsrl``  ``dsrl-dubins``, ``dsrl-quadrotor`` (DSRL vs DDPG-CBF  ``*-quick``: 2 seeds x 3
          vs DDPG), ``dsrl-rho`` (rho sensitivity)               training episodes, 2 radii
========  =====================================================  ===========================

Everything lands under ``--out``: ``sweeps/<sweep>/`` (sweep directories, so an interrupted
reproduction continues where it stopped when run again) and ``report-<paper>/`` (``report.md``,
``report.html``, ``figures/``) from :func:`otsafe.experiments.report.write_report`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from otsafe.errors import SweepError
from otsafe.experiments.config import list_builtin
from otsafe.experiments.sweep import SweepSpec, load_sweep, parse_sweep

__all__ = ["PAPERS", "ReproduceResult", "list_sweeps", "reproduce", "resolve_sweep"]

PAPERS: dict[str, tuple[str, ...]] = {
    "otq": ("otq-paper", "otq-beta"),
    "dsrl": ("dsrl-dubins", "dsrl-quadrotor", "dsrl-rho"),
}
TITLES = {
    "otq": "OT-Q: optimal-transport-assisted risk-sensitive Q-learning",
    "dsrl": "DSRL: distributionally safe reinforcement learning",
}


def _sweep_dir() -> Any:
    return resources.files("otsafe.experiments").joinpath("sweeps")


def list_sweeps() -> dict[str, str]:
    """Built-in sweeps: name -> description."""
    return list_builtin("sweeps", lambda d: d.get("description", ""))


def builtin_sweep(name: str) -> SweepSpec:
    """The built-in sweep ``name``."""
    if name not in list_sweeps():
        raise SweepError(
            f"unknown sweep {name!r}: not a file and not a built-in sweep "
            "(`otsafe sweeps` lists them)"
        )
    data = yaml.safe_load(_sweep_dir().joinpath(f"{name}.yaml").read_text()) or {}
    spec = parse_sweep(data, where=f"built-in sweep {name}")
    return spec.model_copy(update={"name": spec.name or name})


def resolve_sweep(file_or_name: str) -> SweepSpec:
    """A sweep file path, or the name of a built-in sweep."""
    path = Path(file_or_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_sweep(path)
    return builtin_sweep(file_or_name)


@dataclass
class ReproduceResult:
    sweeps: list[Any] = field(default_factory=list)  # SweepOutcome
    reports: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(o.failed for o in self.sweeps)


def reproduce(
    paper: str,
    out: str | Path,
    *,
    seeds: int | None = None,
    quick: bool = False,
    backend: str = "local",
    workers: int = 0,
    address: str | None = None,
    retries: int = 1,
    progress: bool = True,
) -> ReproduceResult:
    """Run the sweeps of ``paper`` (``otq``, ``dsrl`` or ``all``) and write their reports.

    All sweeps are expanded and validated before the first one runs. A paper's report is
    written only if all its sweeps finished without failed runs.
    """
    from otsafe.experiments.sweep import expand_sweep

    if paper not in (*PAPERS, "all"):
        raise SweepError(f"unknown paper {paper!r}; choose otq, dsrl or all")
    if seeds is not None and seeds < 1:
        raise SweepError(f"--seeds must be at least 1, got {seeds}")
    papers = list(PAPERS) if paper == "all" else [paper]
    out = Path(out)
    plan: dict[str, list[SweepSpec]] = {}
    for name in papers:
        specs = []
        for sweep in PAPERS[name]:
            spec = builtin_sweep(f"{sweep}-quick" if quick else sweep)
            if seeds is not None:
                spec = spec.model_copy(update={"seeds": seeds})
            expand_sweep(spec)  # fail on bad input before anything runs
            specs.append(spec)
        plan[name] = specs
    with contextlib.ExitStack() as stack:
        if backend == "ray":  # one Ray session for all the sweeps
            from otsafe.experiments.sweep_runner import ray_session

            stack.enter_context(ray_session(workers, address))
        return _run_plan(plan, out, quick, backend, workers, address, retries, progress)


def _run_plan(
    plan: dict[str, list[SweepSpec]],
    out: Path,
    quick: bool,
    backend: str,
    workers: int,
    address: str | None,
    retries: int,
    progress: bool,
) -> ReproduceResult:
    from otsafe.experiments.report import write_report
    from otsafe.experiments.sweep_runner import run_sweep

    result = ReproduceResult()
    for name, specs in plan.items():
        dirs = []
        for spec in specs:
            outcome = run_sweep(
                spec,
                out / "sweeps" / str(spec.name),
                backend=backend,  # type: ignore[arg-type]
                workers=workers,
                address=address,
                retries=retries,
                progress=progress,
            )
            result.sweeps.append(outcome)
            dirs.append(outcome.sweep_dir)
        if not any(o.failed for o in result.sweeps[-len(specs) :]):
            title = TITLES[name] + (" (quick)" if quick else "")
            report = write_report(dirs, out / f"report-{name}", title=title)
            result.reports.extend([report.markdown, report.html])
    return result
