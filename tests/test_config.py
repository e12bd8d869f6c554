"""Tests of config resolution: presets, YAML files, shortcuts, --set overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from otsafe.errors import ConfigError, OtsafeError
from otsafe.experiments.config import (
    OTQConfig,
    apply_overrides,
    list_presets,
    load_preset,
    parse_set,
    resolve_config,
    validate_config,
)
from otsafe.experiments.dsrl_config import DSRLConfig

PRESETS = (
    "otq-paper",
    "otq-quick",
    "otq-beta-sweep",
    "otq-rooms30",
    "otq-maze50",
    "otq-rooms100",
    "otq-rooms100-quick",
)


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# -------------------------------------------------------------------------------- presets
def test_list_presets_have_descriptions() -> None:
    presets = list_presets()
    for name in PRESETS:
        assert name in presets
        assert presets[name].strip(), f"preset {name} has no description"


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_resolves(name: str) -> None:
    if load_preset(name)["experiment"].get("device") == "cuda" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA was requested but no GPU is available"):
            resolve_config(name)  # otq-city1000 here: a clear error, not a silent CPU run
        config = resolve_config(name, sets=["experiment.device=cpu"])
    else:
        config = resolve_config(name)
    assert isinstance(config, DSRLConfig if name.startswith("dsrl-") else OTQConfig)
    assert config.preset == name
    assert config.experiment.name == name
    assert config.experiment.description == list_presets()[name]


def test_quick_preset_values() -> None:
    config = resolve_config("otq-quick")
    assert config.experiment.seeds == 2
    assert config.experiment.episodes == 30
    assert config.env.map == "paper"
    assert config.env.max_steps == 200
    # DESIGN §1 defaults where the preset says nothing
    assert config.agent.alpha == 0.1
    assert config.agent.gamma == 0.99
    assert config.agent.epsilon_start == 1.0
    assert config.agent.epsilon_decay == 0.99
    assert config.agent.epsilon_min == 0.01
    assert config.experiment.methods == ["q-learning", "ot-q"]


def test_beta_sweep_preset() -> None:
    config = resolve_config("otq-beta-sweep")
    assert len(config.experiment.beta_sweep) >= 2
    assert all(b > 0 for b in config.experiment.beta_sweep)


def test_no_preset_gives_model_defaults() -> None:
    config = resolve_config(None)
    assert config == OTQConfig()


def test_unknown_preset_suggests_closest() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown preset 'otq-quik' \(did you mean 'otq-quick'\?\)"
    ):
        resolve_config("otq-quik")
    with pytest.raises(ConfigError, match="unknown preset 'zzz'"):
        load_preset("zzz")


# -------------------------------------------------------------------------------- layering
def test_layering_preset_file_shortcuts_set(tmp_path: Path) -> None:
    cfg_file = write_yaml(
        tmp_path / "over.yaml",
        {
            "experiment": {"seeds": 3, "episodes": 40},
            "env": {"max_steps": 100},
            "agent": {"alpha": 0.2, "gamma": 0.9},
        },
    )
    config = resolve_config(
        "otq-quick",
        config_file=cfg_file,
        shortcuts={"experiment.seeds": 4, "experiment.episodes": None, "experiment.workers": 1},
        sets=["experiment.seeds=5", "agent.alpha=0.3"],
    )
    assert config.preset == "otq-quick"
    assert config.experiment.name == "otq-quick"  # preset, untouched by later layers
    assert config.env.map == "paper"  # preset
    assert config.experiment.episodes == 40  # file beats preset (a None shortcut is ignored)
    assert config.env.max_steps == 100  # file beats preset
    assert config.agent.gamma == 0.9  # file beats defaults
    assert config.experiment.workers == 1  # shortcut
    assert config.experiment.seeds == 5  # --set beats shortcut beats file beats preset
    assert config.agent.alpha == 0.3  # --set beats file


def test_shortcut_beats_file(tmp_path: Path) -> None:
    cfg_file = write_yaml(
        tmp_path / "c.yaml", {"experiment": {"seeds": 3}, "env": {"map": "rooms30"}}
    )
    config = resolve_config(
        "otq-quick", config_file=cfg_file, shortcuts={"experiment.seeds": 4, "env.map": "maze50"}
    )
    assert config.experiment.seeds == 4
    assert config.env.map == "maze50"


def test_later_set_wins_and_nested_mapping_set() -> None:
    config = resolve_config(
        "otq-quick", sets=["agent.beta=5", "agent.beta=7.5", "agent={gamma: 0.5}"]
    )
    assert config.agent.beta == 7.5
    assert config.agent.gamma == 0.5
    assert config.agent.alpha == 0.1  # a nested mapping merges, it does not replace


def test_empty_config_file_is_allowed(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert resolve_config("otq-quick", config_file=empty) == resolve_config("otq-quick")


def test_apply_overrides_does_not_mutate_base() -> None:
    base = {"agent": {"alpha": 0.1}, "experiment": {"seeds": 2}}
    out = apply_overrides(base, {"agent.alpha": 0.5, "env": {"map": "maze50"}})
    assert base == {"agent": {"alpha": 0.1}, "experiment": {"seeds": 2}}
    assert out == {"agent": {"alpha": 0.5}, "experiment": {"seeds": 2}, "env": {"map": "maze50"}}


# ------------------------------------------------------------------------------- parse_set
@pytest.mark.parametrize(
    ("assignment", "key", "value"),
    [
        ("agent.beta=50", "agent.beta", 50),
        ("agent.alpha=0.25", "agent.alpha", 0.25),
        ("agent.alpha=1.0e-3", "agent.alpha", 0.001),
        ("experiment.beta_sweep=[1, 10, 100.5]", "experiment.beta_sweep", [1, 10, 100.5]),
        ("experiment.methods=[ot-q]", "experiment.methods", ["ot-q"]),
        ("env.map=rooms30", "env.map", "rooms30"),
        (" env.map = maze50 ", "env.map", "maze50"),
        ("experiment.description=a=b", "experiment.description", "a=b"),
        ("env.safety_values=", "env.safety_values", None),
        ("experiment.name='123'", "experiment.name", "123"),
    ],
)
def test_parse_set(assignment: str, key: str, value: object) -> None:
    got_key, got_value = parse_set(assignment)
    assert got_key == key
    assert got_value == value
    assert type(got_value) is type(value)


@pytest.mark.parametrize("assignment", ["agent.alpha", "=3", "  =3", ""])
def test_parse_set_needs_key_and_equals(assignment: str) -> None:
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_set(assignment)


def test_parse_set_unparseable_yaml() -> None:
    with pytest.raises(ConfigError, match="cannot parse value"):
        parse_set("experiment.beta_sweep=[1, 2")


def test_set_values_are_typed_in_the_config() -> None:
    config = resolve_config(
        "otq-quick",
        sets=["experiment.beta_sweep=[1, 10.5, 300]", "agent.beta=50", "experiment.episodes=12"],
    )
    assert config.experiment.beta_sweep == [1.0, 10.5, 300.0]
    assert config.agent.beta == 50.0
    assert config.experiment.episodes == 12
    assert isinstance(config.experiment.episodes, int)


# ---------------------------------------------------------------------------- round trip
def test_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = resolve_config(
        "otq-beta-sweep",
        shortcuts={"experiment.seeds": 3, "experiment.workers": 2},
        sets=["agent.alpha=0.2", "env.max_steps=321", "agent.state_distribution=truncated"],
    )
    text = config.to_yaml()
    again = validate_config(yaml.safe_load(text))
    assert again == config
    assert again.to_yaml() == text
    # and as a --config file on top of no preset
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert resolve_config(None, config_file=path) == config


# ------------------------------------------------------------------------ unknown keys
@pytest.mark.parametrize(
    ("sets", "unknown", "suggestion"),
    [
        (["agnt.alpha=0.2"], "agnt", "agent"),
        (["experimnt.seeds=3"], "experimnt", "experiment"),
        (["presett=otq-quick"], "presett", "preset"),
    ],
)
def test_unknown_top_level_key_suggests_closest(
    sets: list[str], unknown: str, suggestion: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config("otq-quick", sets=sets)
    msg = str(info.value)
    assert f"unknown config key {unknown!r}" in msg
    assert f"did you mean {suggestion!r}?" in msg


@pytest.mark.parametrize(
    ("assignment", "unknown", "field"),
    [
        ("agent.alpah=0.2", "agent.alpah", "alpha"),
        ("experiment.seed=3", "experiment.seed", "seeds"),
        ("env.max_step=10", "env.max_step", "max_steps"),
        ("agent.epsilon_decy=0.9", "agent.epsilon_decy", "epsilon_decay"),
    ],
)
def test_unknown_nested_key_via_set_names_key_and_suggests_field(
    assignment: str, unknown: str, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config("otq-quick", sets=[assignment])
    msg = str(info.value)
    assert f"unknown config key {unknown!r}" in msg
    assert "did you mean" in msg
    assert field in msg


@pytest.mark.parametrize(
    ("assignment", "suggestion"),
    [
        ("agent.alpah=0.2", "agent.alpha"),
        ("experiment.seed=3", "experiment.seeds"),
    ],
)
def test_unknown_nested_key_suggests_full_dotted_key(assignment: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=rf"did you mean '{suggestion}'\?"):
        resolve_config("otq-quick", sets=[assignment])


def test_unknown_key_in_yaml_file(tmp_path: Path) -> None:
    nested = write_yaml(tmp_path / "nested.yaml", {"agent": {"alpah": 0.2}})
    with pytest.raises(ConfigError, match=r"unknown config key 'agent\.alpah'.*did you mean"):
        resolve_config("otq-quick", config_file=nested)
    top = write_yaml(tmp_path / "top.yaml", {"experiments": {"seeds": 3}})
    with pytest.raises(
        ConfigError, match=r"unknown config key 'experiments' \(did you mean 'experiment'\?\)"
    ):
        resolve_config("otq-quick", config_file=top)


def test_unknown_key_via_validate_config() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'agent\.alpah'"):
        validate_config({"agent": {"alpah": 0.1}})


# ------------------------------------------------------------------------ out of range
@pytest.mark.parametrize(
    ("assignment", "key"),
    [
        ("agent.alpha=0", "agent.alpha"),
        ("agent.alpha=1.5", "agent.alpha"),
        ("agent.alpha=-0.1", "agent.alpha"),
        ("agent.gamma=-0.1", "agent.gamma"),
        ("agent.gamma=1.01", "agent.gamma"),
        ("agent.epsilon_decay=0", "agent.epsilon_decay"),
        ("agent.epsilon_start=2", "agent.epsilon_start"),
        ("agent.beta=-1", "agent.beta"),
        ("agent.beta=.nan", "agent.beta"),
        ("agent.beta=.inf", "agent.beta"),
        ("agent.alpha=abc", "agent.alpha"),
        ("experiment.seeds=0", "experiment.seeds"),
        ("experiment.episodes=0", "experiment.episodes"),
        ("experiment.workers=-1", "experiment.workers"),
        ("env.max_steps=0", "env.max_steps"),
        ("experiment.beta_sweep=[1, -2]", "experiment.beta_sweep"),
        ("experiment.beta_sweep=[0]", "experiment.beta_sweep"),
        ("experiment.methods=[sarsa]", "experiment.methods"),
        ("experiment.methods=[ot-q, ot-q]", "experiment.methods"),
        ("experiment.methods=[]", "experiment.methods"),
        ("agent.state_distribution=stationary", "agent.state_distribution"),
        ("agent.ot_method=emd", "agent.ot_method"),
    ],
)
def test_out_of_range_values_name_the_key(assignment: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config("otq-quick", sets=[assignment])
    msg = str(info.value)
    # the key, possibly with a list index appended ('experiment.methods.0')
    assert f"invalid config value for '{key}" in msg
    assert "\n" not in msg


def test_out_of_range_in_config_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", {"agent": {"gamma": 2}})
    with pytest.raises(ConfigError, match=r"'agent\.gamma'"):
        resolve_config("otq-quick", config_file=path)


def test_out_of_range_shortcut() -> None:
    with pytest.raises(ConfigError, match=r"'experiment\.seeds'"):
        resolve_config("otq-quick", shortcuts={"experiment.seeds": 0})


# ------------------------------------------------------------------------ files and maps
def test_missing_map_file(tmp_path: Path) -> None:
    missing = tmp_path / "nomap.txt"
    with pytest.raises(ConfigError, match=r"env\.map: unknown map .*nomap\.txt"):
        resolve_config("otq-quick", shortcuts={"env.map": str(missing)})


def test_bad_map_file_is_config_error(tmp_path: Path) -> None:
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("S...\n..\n...G\n")
    with pytest.raises(ConfigError, match=r"env\.map: .*ragged rows"):
        resolve_config("otq-quick", sets=[f"env.map={ragged}"])


def test_good_map_file_is_accepted(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("S..\n.#.\n..G\n")
    config = resolve_config("otq-quick", shortcuts={"env.map": str(good)})
    assert config.env.map == str(good)


def test_missing_safety_values_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"env\.safety_values"):
        resolve_config("otq-quick", sets=[f"env.safety_values={tmp_path / 'nope.txt'}"])


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml.* does not exist"):
        resolve_config("otq-quick", config_file=tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_config_file_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="must hold a mapping"):
        resolve_config("otq-quick", config_file=path)


def test_config_file_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("agent: {alpha: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve_config("otq-quick", config_file=path)


def test_set_without_equals() -> None:
    with pytest.raises(ConfigError, match=r"--set expects key=value, got 'agent\.alpha'"):
        resolve_config("otq-quick", sets=["agent.alpha"])


def test_config_error_is_otsafe_value_error() -> None:
    assert issubclass(ConfigError, OtsafeError)
    assert issubclass(ConfigError, ValueError)
