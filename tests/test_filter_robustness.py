"""Tests of scripts/filter_robustness.py, the filters-alone study of docs/reproduction/dsrl.md.

The physics check: with no gust noise (p0 = N(0, 0)), a reference controller that pushes the
quadrotor into an obstacle comes to rest where the HOCBF condition holds with equality, at the
clearance (ρ·[dsrl] − δ)/(α₁α₂) of :func:`steady_clearance`. That ties the whole DSRL filter
(worst-case ascent in the Wasserstein ball, averaged HOCBF rows, QP, environment) to a closed
form: the worst case of the mean gust is exactly ρ towards the obstacle.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from _helpers import load_script
from otsafe.experiments.config import resolve_config
from otsafe.experiments.dsrl_config import DSRLConfig
from otsafe.experiments.dsrl_runner import make_agent, make_env, nominal, worst_direction_hook

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("filter_robustness")


def quiet_config(*sets: str) -> DSRLConfig:
    """The quadrotor preset without gust noise, one obstacle on the straight line to the goal."""
    cfg = resolve_config(
        "dsrl-quadrotor",
        sets=[
            "env.nominal_std=0",
            "env.params.obstacles=[[[2.0, 0.0, 1.0], 0.5]]",
            "env.params.start=[0.0, 0.0, 1.0]",
            "env.params.goal=[4.0, 0.0, 1.0]",
            *sets,
        ],
    )
    assert isinstance(cfg, DSRLConfig)
    return cfg


@pytest.mark.parametrize(("method", "ratio"), [("ddpg-cbf", 0.0), ("dsrl", 0.0), ("dsrl", 1.0)])
def test_filter_pressed_on_an_obstacle_rests_at_the_closed_form_clearance(
    script: ModuleType, method: str, ratio: float
) -> None:
    cfg = quiet_config()
    env = make_env(cfg)
    ref = script.ReferenceAgent(make_agent(cfg, env, method, seed=0), env, (1.0, 1.5))
    p0 = nominal(cfg).with_dim(3)
    hook = worst_direction_hook(ref, ratio * cfg.safety.radius, p0)
    violation, min_clearance, _, infeasible, _, success, inside = script.episode(
        env, ref, hook, seed=0
    )
    expected = script.steady_clearance(method, ratio, cfg, radius=0.5)
    final = float(env.unwrapped.clearances().min())
    assert final == pytest.approx(expected, abs=0.02)  # at rest on the barrier
    assert min_clearance == pytest.approx(expected, abs=0.03)  # and no overshoot on the way
    assert violation == float(expected < -0.02)
    assert infeasible == 0  # the hard rows stay feasible: no elastic fallback
    assert success == 0  # the obstacle is in the way, and the filter holds
    assert (inside[1] > 0) == (violation == 1)


def test_a_filter_at_rest_inside_the_obstacle_has_speed_zero_there(script: ModuleType) -> None:
    """At δ = ρ the nominal filter rests inside the obstacle (at the closed form's −0.22): h < 0
    for most of the episode and, averaged over those steps, hardly any motion (the approach
    counts too)."""
    cfg = quiet_config()
    env = make_env(cfg)
    ref = script.ReferenceAgent(make_agent(cfg, env, "ddpg-cbf", seed=0), env, (1.0, 1.5))
    hook = worst_direction_hook(ref, cfg.safety.radius, nominal(cfg).with_dim(3))
    runs = [script.episode(env, ref, hook, seed=0)]
    assert runs[0][2] > 100  # steps with h < 0
    speed = script.seed_value("speed_in_violation", runs, env.unwrapped.dt)
    assert 0 <= speed < 0.05
    # a run with no violation has no speed in violation (left out of the mean over seeds)
    calm = script.ReferenceAgent(make_agent(cfg, env, "dsrl", seed=0), env, (1.0, 1.5))
    hook = worst_direction_hook(calm, 0.0, nominal(cfg).with_dim(3))
    assert math.isnan(
        script.seed_value("speed_in_violation", [script.episode(env, calm, hook, 0)], 0.1)
    )


def test_seed_values_and_their_format(script: ModuleType) -> None:
    # two episodes: (distance inside, steps inside) = (0.3, 2) and (0.5, 6): 0.8 / (8 * 0.1)
    runs = [
        (1.0, -0.1, 2.0, 0.0, 3.0, 0.0, (0.3, 2)),
        (1.0, -0.2, 6.0, 1.0, 5.0, 1.0, (0.5, 6)),
    ]
    assert script.seed_value("speed_in_violation", runs, 0.1) == pytest.approx(1.0)
    assert script.seed_value("success_rate", runs, 0.1) == 0.5
    assert script.seed_value("return", runs, 0.1) == 4.0
    assert script.fmt([1.0, math.nan, 3.0]).endswith("(2 seeds)")
    assert script.fmt([math.nan]) == "–"
    assert script.fmt(None) == "–"  # a study saved before the metric existed


def test_steady_clearance_closed_forms(script: ModuleType) -> None:
    # c = (rho [dsrl] - delta) / (alpha_1 alpha_2) = 0.4, 0.2, -0.4
    cfg = quiet_config("safety.alpha=2.0", "safety.alpha2=0.5", "safety.radius=0.4")
    for method, ratio, c in (("dsrl", 0.0, 0.4), ("dsrl", 0.5, 0.2), ("ddpg-cbf", 1.0, -0.4)):
        assert script.steady_clearance(method, ratio, cfg, 0.5, "distance") == pytest.approx(c)
        # squared barrier: d^2 - r^2 = 2 d c, d = c + sqrt(c^2 + r^2)
        d = 0.5 + script.steady_clearance(method, ratio, cfg, 0.5)
        assert d * d - 0.25 == pytest.approx(2 * d * c)
        # first order in c / r for a large obstacle
        assert script.steady_clearance(method, ratio, cfg, 1e4) == pytest.approx(c, abs=1e-4)
    car = resolve_config("dsrl-dubins", sets=["safety.alpha=2.0", "safety.radius=0.4"])
    assert script.steady_clearance("dsrl", 0.5, car, 1.0, "distance") == pytest.approx(0.1)


def test_study_saves_per_seed_values_that_load_again(
    script: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    saved = tmp_path / "study.json"
    base = [
        "filter_robustness.py",
        "--preset",
        "dsrl-quadrotor-quick",
        "--set",
        "safety.ascent_steps=1",
    ]
    run = [*base, "--seeds", "2", "--episodes", "1", "--deltas", "0", "1", "--json", str(saved)]
    monkeypatch.setattr(sys, "argv", run)
    script.main()
    first = capsys.readouterr().out
    results = json.loads(saved.read_text())
    assert set(results) == {"ddpg-cbf", "dsrl"}
    for cells in results.values():
        assert set(cells) == {"0", "1"}
        for cell in cells.values():
            assert set(cell) == set(script.METRICS)
            assert all(len(values) == 2 for values in cell.values())
            assert all(0 <= v <= 1 for v in cell["violation_rate"])
    monkeypatch.setattr(
        sys, "argv", [*base, "--load", str(saved), "--figure", str(tmp_path / "f.png")]
    )
    script.main()
    again = capsys.readouterr().out
    assert again.strip() in first  # the same table, from the saved values
    assert (tmp_path / "f.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("preset", "message"),
    [("nope", "unknown preset"), ("otq-quick", "not a DSRL preset")],
)
def test_bad_preset_is_one_line_and_exit_2(
    script: ModuleType,
    preset: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "argv", ["filter_robustness.py", "--preset", preset])
    with pytest.raises(SystemExit) as exit_info:
        script.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert message in err.strip().splitlines()[-1]
