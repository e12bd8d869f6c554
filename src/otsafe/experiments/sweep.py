"""Sweeps: a grid over config keys x methods x seeds, one run directory per run.

A sweep file (YAML)::

    name: otq-beta                 # optional; default: the file's name
    description: "..."             # optional
    preset: otq-paper              # the base: a built-in preset ...
    # config: base.yaml            # ... or a config file (relative to the sweep file)
    set:                           # fixed overrides, dotted keys of config.yaml
      experiment.episodes: 300
    grid:                          # values to cross (the Cartesian product)
      agent.beta: [0, 50, 100]
    points:                        # optional explicit list of override sets, crossed with grid
      - {agent.alpha: 0.1}
      - {agent.alpha: 0.2, agent.gamma: 0.95}
    methods: [ot-q]                # optional; default: experiment.methods of the base
    seeds: 5                       # optional; a count (from experiment.seed_start) or a list
    figures: false                 # optional; per-run figures (off: reports draw their own)

expands to one *run* per (point, method, seed): the base config with the point's overrides,
``experiment.methods: [method]``, ``experiment.seeds: 1``, ``experiment.seed_start: seed`` and
``experiment.workers: 1`` (parallelism is across runs). Every run is resolved and validated
before anything runs, so an unknown key or a bad value fails the whole sweep at once.

The sweep directory holds ``sweep.yaml`` (the sweep as resolved), ``index.csv`` (one row per
run: status, attempts, point, method, seed, run directory, seconds, error, the point's
overrides, the headline numbers of its summary, and its full resolved config as JSON) and
``runs/<run>/``, each a normal run directory labelled with its point
(``summary["run"]["label"]``). Running the same sweep again skips finished runs and resumes or
re-runs the others from their checkpoints; a different sweep in the same directory is refused.

Backends (:mod:`otsafe.experiments.sweep_runner`): a local process pool (default) or Ray.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from otsafe.errors import OtsafeError, SweepError
from otsafe.experiments.config import OTQConfig, read_yaml_mapping, resolve_config
from otsafe.experiments.dsrl_config import DSRLConfig
from otsafe.experiments.rundir import atomic_write_text, is_complete_run, staging_path

__all__ = [
    "SweepRun",
    "SweepSpec",
    "expand_sweep",
    "load_sweep",
    "prepare_sweep_dir",
    "run_sweep_run",
    "write_index",
]

INDEX_COLUMNS = (
    "run",
    "status",
    "attempts",
    "label",
    "method",
    "seed",
    "dir",
    "seconds",
    "error",
    "overrides",
    "summary",
    "config",
)


class SweepSpec(BaseModel):
    """A sweep file, validated (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    description: str = ""
    preset: str | None = None
    config: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(default_factory=list)
    methods: list[str] | None = Field(None, min_length=1)
    seeds: int | list[int] | None = None
    figures: bool = False

    @field_validator("grid")
    @classmethod
    def _non_empty_grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
        return value

    @field_validator("points")
    @classmethod
    def _non_empty_points(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any(not p for p in value):
            raise ValueError("every entry of points must set at least one key")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int] | None) -> int | list[int] | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"seeds must be at least 1, got {value}")
        bad_list = isinstance(value, list) and (
            not value or any(s < 0 for s in value) or len(set(value)) != len(value)
        )
        if bad_list:
            raise ValueError(f"seeds must be distinct non-negative integers, got {value}")
        return value


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: a point of the grid, a method and a seed, with its full config."""

    run_id: str
    label: str
    overrides: dict[str, Any]
    method: str
    seed: int
    config: OTQConfig | DSRLConfig

    def directory(self, sweep_dir: Path) -> Path:
        return sweep_dir / "runs" / self.run_id


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; ``config:`` becomes a path relative to the file.

    Raises
    ------
    SweepError
        The file is missing or unreadable, has an unknown key, an empty grid, both or neither
        of ``preset`` and ``config``.
    """
    p = Path(path)
    spec = parse_sweep(read_yaml_mapping(p, SweepError, "sweep file"), where=str(p))
    updates: dict[str, Any] = {}
    if spec.name is None:
        updates["name"] = p.stem
    if spec.config is not None and not Path(spec.config).is_absolute():
        updates["config"] = str((p.parent / spec.config).resolve())
    return spec.model_copy(update=updates)


def parse_sweep(data: Mapping[str, Any], where: str = "sweep") -> SweepSpec:
    """Validate a sweep mapping (see :func:`load_sweep`)."""
    try:
        spec = SweepSpec.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            valid = ", ".join(SweepSpec.model_fields)
            raise SweepError(f"{where}: unknown sweep key {key!r} (valid: {valid})") from None
        raise SweepError(f"{where}: invalid {key!r}: {err['msg']}") from None
    if (spec.preset is None) == (spec.config is None):
        raise SweepError(f"{where}: name exactly one base, `preset:` or `config:`")
    return spec


def _label(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def expand_sweep(spec: SweepSpec) -> list[SweepRun]:
    """Every (point, method, seed) of the sweep, each with its resolved and validated config.

    Raises
    ------
    SweepError
        A point's config is invalid (unknown key, bad value, bad map, unknown method); the
        message names the point and the key.
    """
    keys = list(spec.grid)
    grid_points = [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(spec.grid[k] for k in keys))
    ]
    extra_points = spec.points or [{}]
    points = [{**g, **e} for g in grid_points for e in extra_points]
    runs: list[SweepRun] = []
    for index, point in enumerate(points):
        label = _label(point)
        where = f"sweep point {label or '(base)'}"
        base = _resolve(spec, {**spec.set, **point}, where)
        methods = spec.methods or list(base.experiment.methods)
        if isinstance(spec.seeds, list):
            seeds = spec.seeds
        else:
            n = spec.seeds or base.experiment.seeds
            seeds = list(range(base.experiment.seed_start, base.experiment.seed_start + n))
        for method in methods:
            for seed in seeds:
                per_run = {
                    **spec.set,
                    **point,
                    "experiment.methods": [method],
                    "experiment.seeds": 1,
                    "experiment.seed_start": seed,
                    "experiment.workers": 1,
                }
                config = _resolve(spec, per_run, f"{where}, method {method}")
                run_id = f"p{index:03d}-{method}-seed{seed}"
                runs.append(SweepRun(run_id, label, dict(point), method, seed, config))
    return runs


def _resolve(spec: SweepSpec, overrides: dict[str, Any], where: str) -> OTQConfig | DSRLConfig:
    try:
        return resolve_config(preset=spec.preset, config_file=spec.config, overrides=overrides)
    except OtsafeError as exc:
        raise SweepError(f"{where}: {exc}") from None


# ----------------------------------------------------------------------------- directory
def prepare_sweep_dir(out: str | Path, spec: SweepSpec) -> Path:
    """Create the sweep directory, or check that it holds this same sweep.

    Raises
    ------
    SweepError
        ``out`` is a file, a non-empty directory that is not a sweep, or a sweep of a
        different file.
    """
    out = Path(out).resolve()
    record = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {str(out)!r} exists and is not a directory")
    marker = out / "sweep.yaml"
    if marker.is_file():
        if marker.read_text() != record:
            raise SweepError(
                f"{str(out)!r} holds a different sweep (its sweep.yaml differs); "
                "choose another --out"
            )
        return out
    if out.is_dir() and any(out.iterdir()):
        raise SweepError(f"{str(out)!r} is not empty and is not a sweep directory")
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(f"cannot create {str(out)!r}: {exc}") from None
    atomic_write_text(marker, record)
    return out


def run_status(run: SweepRun, sweep_dir: Path) -> str:
    """``done``, ``partial`` (has checkpoints to resume from) or ``pending``."""
    d = run.directory(sweep_dir)
    if is_complete_run(d):
        return "done"
    return "partial" if staging_path(d).is_dir() else "pending"


def run_sweep_run(run: SweepRun, sweep_dir: Path, figures: bool = False) -> dict[str, Any]:
    """Run (or resume) one sweep run in this process; returns its summary."""
    out = run.directory(sweep_dir)
    resume = staging_path(out).is_dir() or is_complete_run(out)
    if isinstance(run.config, DSRLConfig):
        from otsafe.experiments.dsrl_runner import run_dsrl

        return run_dsrl(
            run.config, out, resume=resume, progress=False, figures=figures, label=run.label
        )
    from otsafe.experiments.runner import run_experiment

    return run_experiment(
        run.config, out, resume=resume, progress=False, figures=figures, label=run.label
    )


# --------------------------------------------------------------------------------- index
def headline(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The headline numbers of a run's summary, for the index."""
    out: dict[str, Any] = {}
    for method, stats in summary.get("methods", {}).items():
        if "collisions_total" in stats:  # OT-Q
            out[method] = {
                "collisions_total": stats["collisions_total"]["mean"],
                "convergence_episode": stats["convergence_episode"]["mean"],
                "final_env_return": stats["final_env_return"]["mean"],
            }
        else:  # DSRL
            train = stats.get("train", {})
            nominal = stats.get("eval", {}).get("shift/fixed/0", {})
            out[method] = {
                "final_return": train.get("final_return", {}).get("mean"),
                "train_violation_rate": train.get("train_violation_rate", {}).get("mean"),
                "nominal_violation_rate": nominal.get("violation_rate", {}).get("mean"),
            }
    return out


def write_index(sweep_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite ``index.csv`` atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=INDEX_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                **row,
                "overrides": json.dumps(row.get("overrides", {})),
                "summary": json.dumps(row.get("summary", {})),
                "config": json.dumps(row.get("config", {})),
            }
        )
    atomic_write_text(sweep_dir / "index.csv", buf.getvalue())
