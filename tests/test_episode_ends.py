"""Tests of scripts/episode_ends.py (docs/reproduction/dsrl.md, *Goal success*)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from _helpers import load_script, one_line_error
from otsafe.cli import main


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("episode_ends")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ends") / "run"
    sets = ["experiment.methods=[ddpg-cbf, dsrl]", "experiment.train_episodes=3"]
    sets += ["experiment.eval_episodes=1", "experiment.seeds=2"]
    args = [a for s in sets for a in ("--set", s)]
    quiet = ["--workers", "1", "--no-progress", "--no-figures"]
    assert main(["run", "dsrl-dubins-quick", "--out", str(out), *args, *quiet]) == 0
    return out


def test_replays_are_the_recorded_episodes(script: ModuleType, run: Path) -> None:
    """The replay rebuilds each agent from its checkpoint and drives the recorded path exactly."""
    cfg = script.load_config(run)
    for method in ("ddpg-cbf", "dsrl"):
        assert script.seeds_of(run, method) == [0, 1]
        for seed in (0, 1):
            end = script.replay(cfg, run, method, seed, tail=10)
            assert end.matches_record is True
            assert 0 < end.steps <= 150
            assert 0 < end.min_distance <= end.final_distance
            assert all(0.0 <= e <= 1.0 for e in end.tail_effort)
            assert 0.0 <= end.tail_changed <= 1.0


def test_table_and_cli(script: ModuleType, run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert script.main([str(run), "--methods", "dsrl", "--tail", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| method | seed | goal |")
    assert len(out) == 2 + 2  # header, rule, two seeds
    assert all(line.startswith("| dsrl |") for line in out[2:])
    assert "warning" not in "\n".join(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "ddpg"], "no checkpoint of method 'ddpg'"),
        (["--tail", "0"], "--tail must be at least 1"),
    ],
)
def test_bad_input_is_one_line(
    script: ModuleType,
    run: Path,
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert script.main([str(run), *args]) == 2
    assert message in one_line_error(capsys, "episode_ends: error:")


def test_not_a_run_directory(
    script: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert script.main([str(tmp_path)]) == 2
    assert "is not a run directory" in one_line_error(capsys, "episode_ends: error:")
