"""A report over finished runs: statistics over seeds, comparisons, curves and configs.

:func:`write_report` reads run directories, recomputes per-seed metrics from their CSV files and
writes ``report.md`` (figures in ``figures/*.png``) and ``report.html`` (one self-contained file:
inline CSS, figures embedded as ``data:`` URIs, no script, nothing fetched).

The module works in three steps: **collect** (find and read run directories), **compute**
(groups, statistics, figures) and **render** (one list of blocks, written as Markdown and HTML).

Inputs
------
Each input is a run directory or a directory holding run directories at any depth (a sweep
directory: ``sweep.yaml``, ``index.csv``, ``runs/<run-id>/``). A *complete run directory* holds
``summary.json`` and ``config.yaml``; hidden directories (``.NAME``: staging, checkpoints) are not
searched, nor is anything inside a run directory. A run directory reached twice (through two
inputs) is read once.

Groups
------
A group is (kind, environment, label, method): the environment is ``env.map`` (OT-Q) or
``env.id`` (DSRL); the label is ``summary["run"]["label"]``, the sweep point of the run
(e.g. ``agent.beta=50``), empty for a plain run. A group is shown as ``method`` or
``method [label]``; its seeds may come from several run directories, but the same seed of the
same group twice is an error.

Per-seed metrics (recomputed from the CSVs, never taken from ``summary.json``)
----------------------------------------------------------------------------
OT-Q (``metrics.csv``):

* *return*: mean ``env_return`` over the last ``experiment.final_episodes`` episodes (higher is
  better);
* *collisions*, *risky visits*: totals over the run (lower is better);
* *convergence episode*: :func:`~otsafe.experiments.metrics.convergence_episode` of the episode
  lengths with the run's ``experiment.convergence_*`` settings (lower is better); seeds that did
  not converge are counted and left out of the statistics.

DSRL (``metrics.csv`` for training, ``eval.csv`` for evaluation):

* *return*: mean training return over the last 10 episodes (higher is better);
* *train violation rate*: share of training episodes with a violation (lower is better);
* *nominal violation rate*, *success rate*: the evaluation at zero shift (the first row with
  ``distribution = shift`` and ``delta_over_rho = 0``; all directions coincide there);
* *violation rate, worst shift δ = ρ*: direction ``worst`` at ``delta_over_rho`` 1, the edge
  of the ambiguity set (left out if absent);
* *worst-case violation rate*: direction ``worst`` at the largest shift (left out if absent).

Statistics
----------
Per group and metric: mean and interquartile mean (:func:`~otsafe.experiments.stats.iqm`), each
with a 95% percentile-bootstrap interval over seeds
(:func:`~otsafe.experiments.stats.bootstrap_ci`, 9999 resamples).

Comparisons: the probability of improvement
(:func:`~otsafe.experiments.stats.probability_of_improvement`) of each method over the
baseline(s) of its environment, for the return and the safety metrics, the two groups' seeds
resampled independently. Baselines: OT-Q ``q-learning``; DSRL ``ddpg-cbf`` and ``ddpg``
(``ddpg-cbf`` is compared with ``ddpg``, not the reverse). The baseline group of a group with
label ``L`` is, in the same kind and environment: the baseline method with label ``L`` if there
is one; else the baseline method with the empty label; else the only group of the baseline
method, if there is exactly one; else there is no comparison.

Figures
-------
Per kind and environment: learning curves (per-episode return) and safety curves (collisions per
episode for OT-Q, violation per training episode for DSRL), one line per group: the mean over
seeds of a trailing moving average (20 episodes for OT-Q, 5 for DSRL, at most the run length)
with a Student-t 95% band across seeds. Seeds of different lengths are cut to the shortest.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from numpy.typing import NDArray

from otsafe.errors import ConfigError, ReportError
from otsafe.experiments.config import OTQConfig, validate_config
from otsafe.experiments.dsrl_config import DSRLConfig
from otsafe.experiments.metrics import convergence_episode, moving_average
from otsafe.experiments.stats import bootstrap_ci, probability_of_improvement

__all__ = ["GroupKey", "ReportResult", "write_report"]

CONFIDENCE = 0.95
N_RESAMPLES = 9999
#: Baseline methods per kind, strongest first: a baseline is compared only with later ones.
BASELINES: dict[str, tuple[str, ...]] = {"otq": ("q-learning",), "dsrl": ("ddpg-cbf", "ddpg")}
#: Moving-average window of the curves, per kind.
SMOOTHING: dict[str, int] = {"otq": 20, "dsrl": 5}
#: Training episodes averaged for the DSRL return (as in the DSRL runner's summary).
DSRL_FINAL_EPISODES = 10
KIND_NAMES = {"otq": "OT-Q", "dsrl": "DSRL"}
STATS_NOTE = (
    "Statistics over seeds: mean and interquartile mean (IQM) with 95% percentile-bootstrap "
    f"confidence intervals (scipy.stats.bootstrap, {N_RESAMPLES} resamples); in comparisons each "
    "method's seeds are resampled independently. Metrics are recomputed from each run's CSV files."
)


class GroupKey(NamedTuple):
    """What identifies a group of seeds: kind, environment, sweep label and method."""

    kind: str
    env: str
    label: str
    method: str

    @property
    def name(self) -> str:
        """``method`` or ``method [label]``, as shown in the tables."""
        return f"{self.method} [{self.label}]" if self.label else self.method


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote."""

    markdown: Path
    html: Path
    figures: tuple[Path, ...]
    runs: int
    groups: tuple[GroupKey, ...]


@dataclass(frozen=True)
class _Metric:
    key: str
    title: str
    higher_is_better: bool
    compare: bool  # in the probability-of-improvement table

    @property
    def heading(self) -> str:
        return f"{self.title} {'↑' if self.higher_is_better else '↓'}"


METRICS: dict[str, tuple[_Metric, ...]] = {
    "otq": (
        _Metric("return", "return", True, True),
        _Metric("collisions", "collisions", False, True),
        _Metric("risky_visits", "risky visits", False, True),
        _Metric("convergence", "convergence episode", False, False),
    ),
    "dsrl": (
        _Metric("return", "return", True, True),
        _Metric("train_violation", "train violation rate", False, True),
        _Metric("nominal_violation", "nominal violation rate", False, True),
        _Metric("worst_violation_rho", "violation rate, worst shift δ = ρ", False, True),
        _Metric("worst_violation", "worst-case violation rate", False, True),
        _Metric("success", "success rate", True, True),
    ),
}
METRIC_NOTES = {
    "otq": (
        "return: mean environment return over the last experiment.final_episodes episodes; "
        "collisions, risky visits: totals per run; convergence episode: first episode after "
        "which the moving-average episode length stays near its final level (seeds that did not "
        "converge are left out: the seeds column counts converged/all)."
    ),
    "dsrl": (
        f"return: mean training return over the last {DSRL_FINAL_EPISODES} episodes; train "
        "violation rate: share of training episodes with a violation; nominal violation rate "
        "and success rate: evaluation without shift; violation rate at δ = ρ: the mean shifted "
        "by the Wasserstein radius in the worst direction (the edge of the ambiguity set; the "
        "unit is eval.reference_radius where a run sets it, as the rho sweeps do); "
        "worst-case violation rate: shifted in the worst direction by the largest delta."
    ),
}


# =============================================================================== collect
@dataclass
class _Seed:
    """One (method, seed) of a run: its per-seed metrics and per-episode curves."""

    values: dict[str, float]
    curves: dict[str, NDArray[np.float64]]  # "return", "safety"


@dataclass
class _Run:
    path: Path
    shown: str
    kind: str
    env: str
    label: str
    config: dict[str, Any]
    config_text: str
    info: dict[str, Any]
    seeds: dict[tuple[str, int], _Seed]
    episodes: int


def _is_complete(path: Path) -> bool:
    return (path / "summary.json").is_file() and (path / "config.yaml").is_file()


def _find_runs(inp: Path) -> list[tuple[Path, str]]:
    """Complete run directories under ``inp``: (resolved path, path shown in the report)."""
    if not inp.exists():
        raise ReportError(f"input {str(inp)!r} does not exist")
    if not inp.is_dir():
        raise ReportError(f"input {str(inp)!r} is not a directory")
    root = inp.resolve()
    if _is_complete(root):
        return [(root, str(inp))]
    found: list[tuple[Path, str]] = []
    for current, dirnames, _ in os.walk(root):
        here = Path(current)
        if here != root and _is_complete(here):
            found.append((here, str(inp / here.relative_to(root))))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    if not found:
        raise ReportError(
            f"no complete run directory (with summary.json and config.yaml) under {str(inp)!r}"
        )
    return found


def _read_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV file with their line numbers; checks columns and field counts."""
    if not path.is_file():
        raise ReportError(f"{path}: missing; the run directory is incomplete")
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
            if not header:
                raise ReportError(f"{path}: empty file")
            missing = [c for c in required if c not in header]
            if missing:
                raise ReportError(f"{path}: missing column(s) {', '.join(missing)}")
            rows: list[tuple[int, dict[str, str]]] = []
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise ReportError(
                        f"{path}, line {reader.line_num}: expected {len(header)} fields"
                    )
                rows.append((reader.line_num, row))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise ReportError(f"{path}: no data rows")
    return rows


def _number(path: Path, line: int, row: Mapping[str, str], column: str) -> float:
    try:
        return float(row[column])
    except ValueError:
        raise ReportError(
            f"{path}, line {line}: column {column!r}: {row[column]!r} is not a number"
        ) from None


def _integer(path: Path, line: int, row: Mapping[str, str], column: str) -> int:
    value = _number(path, line, row, column)
    if not value.is_integer():
        raise ReportError(f"{path}, line {line}: column {column!r}: {row[column]!r} is not whole")
    return int(value)


def _series(
    path: Path, rows: list[tuple[int, dict[str, str]]], columns: Sequence[str]
) -> dict[tuple[str, int], dict[str, NDArray[np.float64]]]:
    """Per (method, seed): each column as an array in episode order."""
    raw: dict[tuple[str, int], dict[int, list[float]]] = {}
    for line, row in rows:
        key = (row["method"], _integer(path, line, row, "seed"))
        episode = _integer(path, line, row, "episode")
        episodes = raw.setdefault(key, {})
        if episode in episodes:
            raise ReportError(
                f"{path}, line {line}: episode {episode} of {key[0]}, seed {key[1]} repeats"
            )
        episodes[episode] = [_number(path, line, row, c) for c in columns]
    out: dict[tuple[str, int], dict[str, NDArray[np.float64]]] = {}
    for key, episodes in raw.items():
        table = np.array([episodes[e] for e in sorted(episodes)], dtype=np.float64)
        out[key] = {c: table[:, j] for j, c in enumerate(columns)}
    return out


def _otq_seeds(path: Path, config: OTQConfig) -> dict[tuple[str, int], _Seed]:
    columns = ("env_return", "length", "collisions", "risky_visits")
    rows = _read_csv(path / "metrics.csv", ("method", "seed", "episode", *columns))
    exp = config.experiment
    out = {}
    for key, s in _series(path / "metrics.csv", rows, columns).items():
        k_final = min(exp.final_episodes, s["env_return"].size)
        values = {
            "return": float(s["env_return"][-k_final:].mean()),
            "collisions": float(s["collisions"].sum()),
            "risky_visits": float(s["risky_visits"].sum()),
            "convergence": convergence_episode(
                s["length"],
                window=exp.convergence_window,
                tail=exp.convergence_tail,
                tolerance=exp.convergence_tolerance,
            ),
        }
        out[key] = _Seed(values, {"return": s["env_return"], "safety": s["collisions"]})
    return out


def _dsrl_seeds(path: Path) -> dict[tuple[str, int], _Seed]:
    columns = ("return", "violation")
    rows = _read_csv(path / "metrics.csv", ("method", "seed", "episode", *columns))
    series = _series(path / "metrics.csv", rows, columns)
    eval_path = path / "eval.csv"
    eval_columns = ("distribution", "direction", "delta_over_rho", "violation_rate")
    eval_rows = _read_csv(eval_path, ("method", "seed", *eval_columns, "success_rate"))
    nominal: dict[tuple[str, int], tuple[float, float]] = {}
    worst: dict[tuple[str, int], tuple[float, float]] = {}  # (delta, violation rate)
    at_rho: dict[tuple[str, int], float] = {}  # worst direction, delta = rho
    for line, row in eval_rows:
        key = (row["method"], _integer(eval_path, line, row, "seed"))
        if row["distribution"] != "shift":
            continue
        delta = _number(eval_path, line, row, "delta_over_rho")
        rate = _number(eval_path, line, row, "violation_rate")
        if delta == 0 and key not in nominal:
            nominal[key] = (rate, _number(eval_path, line, row, "success_rate"))
        if row["direction"] == "worst" and (key not in worst or delta > worst[key][0]):
            worst[key] = (delta, rate)
        if row["direction"] == "worst" and delta == 1:
            at_rho[key] = rate
    out = {}
    for key, s in series.items():
        k_final = min(DSRL_FINAL_EPISODES, s["return"].size)
        nominal_rate, success = nominal.get(key, (math.nan, math.nan))
        values = {
            "return": float(s["return"][-k_final:].mean()),
            "train_violation": float(s["violation"].mean()),
            "nominal_violation": nominal_rate,
            "worst_violation_rho": at_rho.get(key, math.nan),
            "worst_violation": worst[key][1] if key in worst else math.nan,
            "success": success,
        }
        out[key] = _Seed(values, {"return": s["return"], "safety": s["violation"]})
    return out


def _load_run(path: Path, shown: str) -> _Run:
    config_path, summary_path = path / "config.yaml", path / "summary.json"
    try:
        config_text = config_path.read_text()
        data = yaml.safe_load(config_text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ReportError(f"cannot read {config_path}: {exc}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{config_path}: not a mapping of config keys")
    try:
        config = validate_config(data)
    except ConfigError as exc:
        raise ReportError(f"{config_path}: {exc}") from None
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReportError(f"cannot read {summary_path}: {exc}") from None
    info = summary.get("run") if isinstance(summary, dict) else None
    info = info if isinstance(info, dict) else {}
    label = info.get("label")
    label = "" if label is None else str(label).strip()
    if isinstance(config, DSRLConfig):
        env = str(config.env.id)
        seeds = _dsrl_seeds(path)
    else:
        env = str(config.env.map)
        seeds = _otq_seeds(path, config)
    episodes = max(s.curves["return"].size for s in seeds.values())
    return _Run(
        path=path,
        shown=shown,
        kind=config.kind,
        env=env,
        label=label,
        config=config.model_dump(mode="json"),
        config_text=config_text,
        info=info,
        seeds=seeds,
        episodes=episodes,
    )


def _collect(inputs: Sequence[Path]) -> list[_Run]:
    seen: set[Path] = set()
    runs = []
    for inp in inputs:
        for path, shown in _find_runs(Path(inp)):
            if path not in seen:
                seen.add(path)
                runs.append(_load_run(path, shown))
    return runs


# =============================================================================== compute
@dataclass
class _Group:
    key: GroupKey
    seeds: dict[int, _Seed] = field(default_factory=dict)
    runs: dict[int, str] = field(default_factory=dict)  # seed -> run directory shown

    def values(self, metric: str) -> NDArray[np.float64]:
        return np.array([self.seeds[s].values[metric] for s in sorted(self.seeds)])


@dataclass
class _Section:
    kind: str
    env: str
    groups: list[_Group]


def _make_sections(runs: Sequence[_Run]) -> list[_Section]:
    groups: dict[GroupKey, _Group] = {}
    for run in runs:
        for (method, seed), data in run.seeds.items():
            key = GroupKey(run.kind, run.env, run.label, method)
            group = groups.setdefault(key, _Group(key))
            if seed in group.seeds:
                raise ReportError(
                    f"duplicate seed {seed} of {key.name} ({KIND_NAMES[key.kind]}, {key.env}): "
                    f"in {group.runs[seed]} and in {run.shown}"
                )
            group.seeds[seed] = data
            group.runs[seed] = run.shown
    sections: dict[tuple[str, str], _Section] = {}
    for kind in ("otq", "dsrl"):
        for key, group in groups.items():
            if key.kind == kind:
                sections.setdefault((kind, key.env), _Section(kind, key.env, [])).groups.append(
                    group
                )
    return list(sections.values())


def _baseline_group(group: _Group, method: str, section: _Section) -> _Group | None:
    """The group of baseline ``method`` that ``group`` is compared with (module docstring)."""
    candidates = [g for g in section.groups if g.key.method == method]
    for label in (group.key.label, ""):
        for g in candidates:
            if g.key.label == label:
                return g
    return candidates[0] if len(candidates) == 1 else None


def _comparisons(section: _Section) -> list[tuple[_Group, _Group]]:
    baselines = BASELINES[section.kind]
    pairs = []
    for base_method in baselines:
        for group in section.groups:
            method = group.key.method
            if method == base_method:
                continue
            if method in baselines and baselines.index(method) > baselines.index(base_method):
                continue
            base = _baseline_group(group, base_method, section)
            if base is not None:
                pairs.append((group, base))
    return pairs


def _fmt(value: float) -> str:
    """A number for a table: about 3-4 significant digits, ``n/a`` for nan."""
    if not math.isfinite(value):
        return "n/a"
    a = abs(value)
    if value.is_integer() and a < 1e6:
        return str(int(value))
    if a >= 1e6 or a < 1e-3:
        return f"{value:.3g}"
    if a >= 100:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _fmt_estimate(mean: float, low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return _fmt(mean)
    return f"{_fmt(mean)} [{_fmt(low)}, {_fmt(high)}]"


def _statistics_rows(section: _Section) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for metric in METRICS[section.kind]:
        per_group = [(g, g.values(metric.key)) for g in section.groups]
        if metric.key != "convergence" and not any(np.isfinite(v).any() for _, v in per_group):
            continue  # not measured in these runs (e.g. no worst-direction evaluation)
        for group, values in per_group:
            finite = int(np.isfinite(values).sum())
            mean = bootstrap_ci(values, "mean", CONFIDENCE, N_RESAMPLES)
            iq = bootstrap_ci(values, "iqm", CONFIDENCE, N_RESAMPLES)
            seeds = f"{finite}/{values.size}" if metric.key == "convergence" else str(finite)
            rows.append(
                (
                    metric.heading,
                    group.key.name,
                    seeds,
                    _fmt_estimate(mean.mean, mean.ci_low, mean.ci_high),
                    _fmt_estimate(iq.mean, iq.ci_low, iq.ci_high),
                )
            )
    return rows


def _improvement_rows(section: _Section) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for group, base in _comparisons(section):
        for metric in METRICS[section.kind]:
            if not metric.compare:
                continue
            x, y = group.values(metric.key), base.values(metric.key)
            if not (np.isfinite(x).any() and np.isfinite(y).any()):
                continue
            est = probability_of_improvement(x, y, metric.higher_is_better, CONFIDENCE, N_RESAMPLES)
            rows.append(
                (
                    group.key.name,
                    base.key.name,
                    metric.heading,
                    _fmt_estimate(est.mean, est.ci_low, est.ci_high),
                    f"{int(np.isfinite(x).sum())} vs {int(np.isfinite(y).sum())}",
                )
            )
    return rows


# ------------------------------------------------------------------------------- figures
def _t_band(curves: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean over seeds (rows) and the half-width of the Student-t interval per episode."""
    from scipy import stats

    mean = curves.mean(axis=0)
    n = curves.shape[0]
    if n < 2:
        return mean, np.zeros_like(mean)
    sem = curves.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, np.asarray(stats.t.ppf(0.5 + CONFIDENCE / 2, df=n - 1) * sem)


def _curve_figure(section: _Section, curve: str, ylabel: str, path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    n_groups = len(section.groups)
    palette = colormaps["tab10" if n_groups <= 10 else "tab20"]
    window = SMOOTHING[section.kind]
    windows = set()
    for k, group in enumerate(section.groups):
        series = [group.seeds[s].curves[curve] for s in sorted(group.seeds)]
        length = min(s.size for s in series)
        w = min(window, max(1, length // 4))  # short runs: keep most of the curve
        windows.add(w)
        curves = np.stack([moving_average(s[:length], w) for s in series])
        x = np.arange(w, length + 1)
        mean, half = _t_band(curves)
        colour = palette(k % palette.N)
        label = f"{group.key.name} (n={len(series)})"
        style = "--" if group.key.method in BASELINES[section.kind] else "-"
        if x.size == 1:  # a single point: an error bar instead of a band
            ax.errorbar(x, mean, yerr=half, fmt="o", color=colour, capsize=3, label=label)
            continue
        ax.plot(x, mean, color=colour, lw=1.5, ls=style, label=label)
        ax.fill_between(x, mean - half, mean + half, color=colour, alpha=0.18, lw=0)
    smoothing = f"{min(windows)}" if len(windows) == 1 else f"{min(windows)}-{max(windows)}"
    ax.set_xlabel("episode" if section.kind == "otq" else "training episode")
    ax.set_ylabel(ylabel)
    ax.set_title(
        f"{KIND_NAMES[section.kind]}, {section.env}: {ylabel} "
        f"({smoothing}-episode moving average, 95% t-band over seeds)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    if n_groups > 6:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)


_CURVES = {
    "otq": (("return", "return", "return"), ("safety", "collisions per episode", "collisions")),
    "dsrl": (("return", "return", "return"), ("safety", "violation per episode", "violations")),
}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "env"


# ================================================================================ render
@dataclass(frozen=True)
class _Heading:
    level: int
    text: str


@dataclass(frozen=True)
class _Para:
    text: str


@dataclass(frozen=True)
class _Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class _Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class _Image:
    path: Path
    caption: str


@dataclass(frozen=True)
class _Code:
    summary: str
    text: str
    language: str = "text"


_Block = _Heading | _Para | _Bullets | _Table | _Image | _Code


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _config_diff(first: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """``key: old → new`` for each dotted key whose value differs (``(absent)`` if missing)."""
    a, b = _flatten(first), _flatten(other)

    def show(values: dict[str, Any], key: str) -> str:
        return json.dumps(values[key]) if key in values else "(absent)"

    keys = list(a) + [k for k in b if k not in a]
    return [
        f"{k}: {show(a, k)} → {show(b, k)}"
        for k in keys
        if (k in a) != (k in b) or a.get(k) != b.get(k)
    ]


def _compact_seeds(seeds: Iterable[int]) -> str:
    values = sorted(set(seeds))
    parts: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}–{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


def _runs_table(runs: Sequence[_Run]) -> _Table:
    rows = []
    for run in runs:
        methods = list(dict.fromkeys(m for m, _ in run.seeds))
        wall = run.info.get("wall_seconds")
        rows.append(
            (
                run.shown,
                KIND_NAMES[run.kind],
                run.env,
                run.label or "–",
                ", ".join(methods),
                _compact_seeds(s for _, s in run.seeds),
                str(run.episodes),
                _fmt(float(wall)) if isinstance(wall, (int, float)) else "n/a",
            )
        )
    header = ("run directory", "kind", "environment", "label", "methods", "seeds", "episodes")
    return _Table((*header, "wall seconds"), tuple(rows))


def _config_blocks(runs: Sequence[_Run]) -> list[_Block]:
    blocks: list[_Block] = []
    first: dict[str, _Run] = {}
    for run in runs:
        if run.kind not in first:
            first[run.kind] = run
            blocks.append(_Code(f"{run.shown}: full config", run.config_text, "yaml"))
            continue
        ref = first[run.kind]
        diff = _config_diff(ref.config, run.config)
        text = "\n".join(diff) if diff else "(identical)"
        blocks.append(_Code(f"{run.shown}: differences from {ref.shown}", text))
    return blocks


def _build(
    runs: Sequence[_Run],
    sections: Sequence[_Section],
    inputs: Sequence[Path],
    title: str,
    figures_dir: Path,
) -> tuple[list[_Block], list[Path]]:
    import otsafe

    n_groups = sum(len(s.groups) for s in sections)
    blocks: list[_Block] = [
        _Heading(1, title),
        _Bullets(
            (
                f"Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
                f"otsafe version: {otsafe.__version__}",
                f"Inputs: {', '.join(str(p) for p in inputs)}",
                f"Runs: {len(runs)} run directories, {n_groups} groups",
            )
        ),
        _Para(STATS_NOTE),
    ]
    figures: list[Path] = []
    used: set[str] = set()
    for section in sections:
        name = f"{KIND_NAMES[section.kind]}: {section.env}"
        blocks += [_Heading(2, name), _Para(METRIC_NOTES[section.kind])]
        blocks += [
            _Heading(3, "Statistics over seeds"),
            _Table(
                ("metric", "method", "seeds", "mean [95% CI]", "IQM [95% CI]"),
                tuple(_statistics_rows(section)),
            ),
        ]
        improvement = _improvement_rows(section)
        if improvement:
            blocks += [
                _Heading(3, "Probability of improvement over the baselines"),
                _Para(
                    "P(X > Y) + ½ P(X = Y) over all pairs (seed of the method, seed of the "
                    "baseline), where better means a higher return and a lower collision count "
                    "or violation rate; 0.5 means no tendency either way. 95% percentile-"
                    "bootstrap CI, both groups' seeds resampled independently."
                ),
                _Table(
                    ("method", "baseline", "metric", "P(improvement) [95% CI]", "seeds"),
                    tuple(improvement),
                ),
            ]
        stem = f"{section.kind}-{_slug(section.env)}"
        while stem in used:
            stem += "-x"
        used.add(stem)
        blocks.append(_Heading(3, "Curves"))
        for curve, ylabel, suffix in _CURVES[section.kind]:
            path = figures_dir / f"{stem}-{suffix}.png"
            _curve_figure(section, curve, ylabel, path)
            figures.append(path)
            blocks.append(_Image(path, f"{name}: {ylabel}, mean over seeds with 95% band"))
    blocks += [_Heading(2, "Runs"), _runs_table(runs)]
    blocks += [_Heading(2, "Configurations"), *_config_blocks(runs)]
    return blocks, figures


def _md_text(text: str) -> str:
    """Plain text for Markdown: no raw HTML (``<`` and ``&`` as entities)."""
    return text.replace("&", "&amp;").replace("<", "&lt;")


def _md_cell(text: str) -> str:
    return _md_text(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _to_markdown(blocks: Sequence[_Block], out: Path) -> str:
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            parts.append(f"{'#' * block.level} {_md_text(block.text)}")
        elif isinstance(block, _Para):
            parts.append(_md_text(block.text))
        elif isinstance(block, _Bullets):
            parts.append("\n".join(f"- {_md_text(item)}" for item in block.items))
        elif isinstance(block, _Table):
            lines = [
                "| " + " | ".join(_md_cell(c) for c in block.header) + " |",
                "|" + "---|" * len(block.header),
                *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows),
            ]
            parts.append("\n".join(lines))
        elif isinstance(block, _Image):
            rel = block.path.relative_to(out).as_posix()
            parts.append(f"![{_md_cell(block.caption)}]({rel})")
        else:
            longest = max((len(m) for m in re.findall(r"`+", block.text)), default=0)
            fence = "`" * max(3, longest + 1)
            parts.append(
                f"**{_md_cell(block.summary)}**\n\n"
                f"{fence}{block.language}\n{block.text.rstrip()}\n{fence}"
            )
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1d1d1f; background: #fff; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.7rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
h3 { margin-top: 1.5rem; font-size: 1.05rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.88rem; }
th, td { border: 1px solid #d6d6d6; padding: 0.25rem 0.55rem; text-align: left;
         font-variant-numeric: tabular-nums; }
th { background: #f3f3f5; } tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1rem 0; } img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85rem; color: #555; }
details { margin: 0.4rem 0; } summary { cursor: pointer; font-family: monospace; }
pre { background: #f6f8fa; padding: 0.7rem; overflow-x: auto; font-size: 0.82rem; }
"""


def _to_html(blocks: Sequence[_Block], title: str) -> str:
    esc = html.escape
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, _Para):
            parts.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, _Bullets):
            items = "".join(f"<li>{esc(item)}</li>" for item in block.items)
            parts.append(f"<ul>{items}</ul>")
        elif isinstance(block, _Table):
            head = "".join(f"<th>{esc(c)}</th>" for c in block.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, _Image):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block.caption)}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>"
            )
        else:
            parts.append(
                f"<details><summary>{esc(block.summary)}</summary>"
                f"<pre>{esc(block.text.rstrip())}</pre></details>"
            )
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


# ================================================================================= entry
def write_report(inputs: Sequence[Path], out: Path, *, title: str | None = None) -> ReportResult:
    """Write a report over the runs found under ``inputs`` into the directory ``out``.

    Parameters
    ----------
    inputs
        Run directories, or directories holding run directories at any depth (sweeps). The
        report shows each run directory as its input, as given, joined with its path inside it.
    out
        Directory to write ``report.md``, ``report.html`` and ``figures/*.png`` into (created if
        needed; files of the same names are replaced, nothing else is touched).
    title
        Title of the report; default ``"otsafe report"``.

    Returns
    -------
    ReportResult
        The files written, the number of run directories read and the groups found.

    Raises
    ------
    ReportError
        No inputs; an input that does not exist or holds no complete run directory; a run
        directory whose config, summary or CSV files are missing or malformed; the same seed
        of the same group in two run directories; ``out`` is not a usable directory.
    """
    if not inputs:
        raise ReportError("no inputs given: name at least one run or sweep directory")
    inputs = [Path(p) for p in inputs]
    out = Path(out)
    runs = _collect(inputs)
    sections = _make_sections(runs)
    title = title or "otsafe report"
    figures_dir = out / "figures"
    try:
        figures_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create the report directory {str(out)!r}: {exc}") from None
    blocks, figures = _build(runs, sections, inputs, title, figures_dir)
    markdown, page = out / "report.md", out / "report.html"
    markdown.write_text(_to_markdown(blocks, out), encoding="utf-8")
    page.write_text(_to_html(blocks, title), encoding="utf-8")
    return ReportResult(
        markdown=markdown,
        html=page,
        figures=tuple(figures),
        runs=len(runs),
        groups=tuple(g.key for s in sections for g in s.groups),
    )
