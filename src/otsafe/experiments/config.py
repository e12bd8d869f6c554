"""Validated experiment configuration: presets, YAML files and ``key=value`` overrides.

A configuration is resolved in this order, each layer overriding the previous one:

1. the model defaults below;
2. the preset (``src/otsafe/experiments/presets/NAME.yaml``);
3. ``--config FILE.yaml``;
4. the CLI shortcuts ``--seeds``, ``--episodes``, ``--map``, ``--workers``;
5. ``--set key=value`` (dotted keys, values parsed as YAML: ``--set agent.beta=50``).

Every layer is checked against the pydantic models: an unknown key raises
:class:`~otsafe.errors.ConfigError` with the closest valid name, and an out-of-range value names
the key and the allowed range.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from numpy.typing import NDArray
from pydantic import BaseModel, Field, ValidationError, field_validator

from otsafe.agents.tabular import OTQLearning
from otsafe.envs.gridmap import load_map
from otsafe.errors import ConfigError, OtsafeError, SafetyValuesError
from otsafe.experiments.dsrl_config import DSRLConfig, StrictModel

__all__ = [
    "AgentConfig",
    "EnvConfig",
    "ExperimentConfig",
    "OTQConfig",
    "apply_overrides",
    "list_presets",
    "load_preset",
    "load_safety_values",
    "parse_set",
    "resolve_config",
]

Method = Literal["q-learning", "ot-q"]


def _default_methods() -> list[Method]:
    return ["q-learning", "ot-q"]


class ExperimentConfig(StrictModel):
    """What to run: methods, seeds, episodes, parallelism."""

    name: str = "otq-paper"
    description: str = ""
    methods: list[Method] = Field(default_factory=_default_methods, min_length=1)
    seeds: int = Field(5, ge=1, le=10_000, description="number of seeds: seed_start, +1, ...")
    seed_start: int = Field(0, ge=0)
    episodes: int = Field(500, ge=1, le=10_000_000)
    beta_sweep: list[float] = Field(
        default_factory=list,
        description="if non-empty, OT-Q runs once per beta in the list (agent.beta is ignored)",
    )
    workers: int = Field(0, ge=0, description="parallel processes; 0 = one per CPU core")
    device: Literal["cpu", "cuda"] = Field(
        "cpu",
        description="device of the grid Sinkhorn solver (agent.ot_method sinkhorn/auto); the "
        "tabular agent itself runs on the CPU",
    )
    checkpoint_every: int = Field(
        50, ge=0, description="episodes between checkpoints of each job; 0 = only at the end"
    )
    tensorboard: bool = Field(False, description="log every episode to TensorBoard")
    convergence_window: int = Field(20, ge=1)
    convergence_tail: int = Field(50, ge=1)
    convergence_tolerance: float = Field(0.1, gt=0)
    final_episodes: int = Field(50, ge=1, description="episodes averaged for 'final' metrics")
    early_episodes: int = Field(100, ge=1, description="episodes averaged for 'early' metrics")

    @field_validator("beta_sweep")
    @classmethod
    def _positive_betas(cls, value: list[float]) -> list[float]:
        for beta in value:
            if not beta > 0:
                raise ValueError(f"every beta in the sweep must be positive, got {beta}")
        return value

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"methods must not repeat, got {value}")
        return value


class EnvConfig(StrictModel):
    """The gridworld."""

    map: str = "paper"
    max_steps: int = Field(500, ge=1, le=10_000_000)
    safety_values: str | None = Field(
        None, description="path to a whitespace-separated H x W table of per-cell safety values"
    )


class AgentConfig(StrictModel):
    """Q-learning / OT-Q hyperparameters (DESIGN §1 defaults)."""

    alpha: float = Field(0.1, gt=0, le=1)
    gamma: float = Field(0.99, ge=0, le=1)
    epsilon_start: float = Field(1.0, ge=0, le=1)
    epsilon_decay: float = Field(0.99, gt=0, le=1)
    epsilon_min: float = Field(0.01, ge=0, le=1)
    beta: float = Field(
        OTQLearning.DEFAULT_BETA,
        ge=0,
        allow_inf_nan=False,
        description="OT bonus weight of ot-q; 0 makes ot-q plain Q-learning (sweeps)",
    )
    state_distribution: Literal["visits", "truncated", "empirical"] = "visits"
    ot_method: Literal["tripartite", "multiscale", "dense", "sinkhorn", "auto"] = Field(
        "tripartite",
        description="exact (tripartite; multiscale, for ~10^4 cells; dense), entropic grid "
        "solver (sinkhorn), or auto: exact up to 2500 reachable cells, sinkhorn above",
    )
    ot_epsilon: float = Field(
        0.5, gt=0, allow_inf_nan=False, description="Sinkhorn regularisation, cell^2 units"
    )
    ot_tol: float = Field(
        1e-3, gt=0, allow_inf_nan=False, description="Sinkhorn tolerance on the marginal error"
    )
    ot_dtype: Literal["float64", "float32"] = "float64"


class OTQConfig(StrictModel):
    """A complete OT-Q experiment."""

    kind: Literal["otq"] = "otq"
    preset: str = "otq-paper"
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)


# ---------------------------------------------------------------------------------- presets
def _preset_dir() -> Any:
    return resources.files("otsafe.experiments").joinpath("presets")


def list_builtin(folder: str, describe: Callable[[dict[str, Any]], Any]) -> dict[str, str]:
    """Built-in YAML files of ``otsafe/experiments/<folder>``: name -> ``describe(content)``."""
    out = {}
    directory = resources.files("otsafe.experiments").joinpath(folder)
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text()) or {}
            out[entry.name[: -len(".yaml")]] = str(describe(data))
    return out


def list_presets() -> dict[str, str]:
    """Built-in presets: name -> one-line description."""
    return list_builtin("presets", lambda d: d.get("experiment", {}).get("description", ""))


def load_preset(name: str) -> dict[str, Any]:
    """The raw override mapping of a built-in preset."""
    presets = list_presets()
    if name not in presets:
        hint = _suggest(name, presets)
        raise ConfigError(f"unknown preset {name!r}{hint}; `otsafe presets` lists them")
    data = yaml.safe_load(_preset_dir().joinpath(f"{name}.yaml").read_text()) or {}
    data["preset"] = name
    return dict(data)


# -------------------------------------------------------------------------------- overrides
def parse_set(assignment: str) -> tuple[str, Any]:
    """Parse ``key=value`` (value as YAML) into ``("key", value)``."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return key, value


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` (nested or dotted keys) into a copy of ``base``."""
    out: dict[str, Any] = _deep_copy(base)
    for key, value in overrides.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = apply_overrides(node[parts[-1]], value)
        else:
            node[parts[-1]] = _deep_copy(value) if isinstance(value, Mapping) else value
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _load_yaml_file(path: str | Path) -> dict[str, Any]:
    return read_yaml_mapping(path, ConfigError, "config file")


def read_yaml_mapping(path: str | Path, error: type[OtsafeError], what: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (``{}`` if empty); else ``error`` naming ``what``."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise error(f"cannot read {what} {str(p)!r}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{what} {str(p)!r} must hold a mapping of keys to values")
    return data


def resolve_config(
    preset: str | None = "otq-paper",
    config_file: str | Path | None = None,
    shortcuts: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> OTQConfig | DSRLConfig:
    """Resolve a configuration from its layers (see the module docstring) and validate it.

    ``overrides`` (dotted keys to values, applied last) is how sweeps set their points.

    Also checks what the models cannot: that the map exists and parses and that the safety values
    (if any) are readable and valid for it, so a run fails before it creates anything.
    """
    data: dict[str, Any] = {}
    if preset is not None:
        data = load_preset(preset)
    if config_file is not None:
        data = apply_overrides(data, _load_yaml_file(config_file))
    if shortcuts:
        data = apply_overrides(data, {k: v for k, v in shortcuts.items() if v is not None})
    data = apply_overrides(data, dict(parse_set(s) for s in sets))
    if overrides:
        data = apply_overrides(data, overrides)
    config = validate_config(data)
    if config.experiment.tensorboard:
        from otsafe.experiments.tensorboard import check_tensorboard

        check_tensorboard()
    if config.experiment.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("experiment.device: CUDA was requested but no GPU is available")
    if isinstance(config, DSRLConfig):
        from otsafe.experiments.dsrl_runner import make_env

        try:  # build the environment once, so a bad layout fails before anything runs
            make_env(config).close()
        except OtsafeError as exc:
            raise ConfigError(f"env.params: {exc}") from None
        except TypeError as exc:  # unknown keyword of the environment's constructor
            raise ConfigError(f"env.params: {exc}") from None
        return config
    if config.experiment.device == "cuda" and config.agent.ot_method not in ("sinkhorn", "auto"):
        raise ConfigError(
            "experiment.device: cuda runs the grid Sinkhorn solver only; set agent.ot_method to "
            f"sinkhorn or auto (got {config.agent.ot_method})"
        )
    try:
        grid = load_map(config.env.map)
    except OtsafeError as exc:
        raise ConfigError(f"env.map: {exc}") from None
    if config.env.safety_values is not None:
        if not Path(config.env.safety_values).is_file():
            raise ConfigError(
                f"env.safety_values: file {config.env.safety_values!r} does not exist"
            )
        try:
            grid.safety_values(load_safety_values(config.env.safety_values))
        except OtsafeError as exc:
            raise ConfigError(f"env.safety_values: {exc}") from None
    return config


def load_safety_values(path: str | Path | None) -> NDArray[np.float64] | None:
    """Read a whitespace-separated table of per-cell safety values (``None`` passes through)."""
    if path is None:
        return None
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise SafetyValuesError(f"cannot read safety values from {str(path)!r}: {exc}") from None
    return np.asarray(values)


def validate_config(data: Mapping[str, Any]) -> OTQConfig | DSRLConfig:
    """Validate a nested mapping into an :class:`OTQConfig` or (``kind: dsrl``) a
    :class:`~otsafe.experiments.dsrl_config.DSRLConfig`, with one-line errors."""
    root: type[OTQConfig] | type[DSRLConfig] = (
        DSRLConfig if data.get("kind") == "dsrl" else OTQConfig
    )
    try:
        return root.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, root)) from None


def _format_validation_error(exc: ValidationError, root: type[BaseModel]) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        parent_model = _model_at(root, loc[:-1])
        valid = list(parent_model.model_fields) if parent_model is not None else []
        prefix = "".join(f"{part}." for part in loc[:-1])
        hint = _suggest(loc[-1], valid, prefix=prefix)
        return f"unknown config key {key!r}{hint}"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid config value for {key!r}: {err['msg']} (got {err.get('input')!r}){more}"


def _model_at(root: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = root
    for part in path:
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _suggest(word: str, options: Iterable[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {prefix + match[0]!r}?)" if match else ""
