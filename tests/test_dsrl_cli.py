"""End-to-end tests of the DSRL presets (quick variants) through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from otsafe.cli import main


@pytest.mark.parametrize("preset", ["dsrl-dubins-quick", "dsrl-quadrotor-quick"])
def test_quick_preset_runs_end_to_end(
    preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                preset,
                "--out",
                str(out),
                "--no-progress",
                "--workers",
                "1",
                "--set",
                "experiment.train_episodes=2",
            ]
        )
        == 0
    )
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "metrics.csv", "eval.csv", "summary.json", "figures"} <= names
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["method"] for r in rows} == {"ddpg", "ddpg-cbf", "dsrl"}
    assert len(rows) == 3 * 2
    evals = list(csv.DictReader((out / "eval.csv").open()))
    # 3 directions x 2 shifts + the heavy-tailed distribution, for each method
    assert len(evals) == 3 * (3 * 2 + 1)
    # interventions: steps per episode where the filter changed the action; none without one
    steps = yaml.safe_load((out / "config.yaml").read_text())["env"]["params"]["max_steps"]
    for row in evals:
        assert 0 <= float(row["interventions"]) <= steps
        if row["method"] == "ddpg":
            assert float(row["interventions"]) == 0
    assert any(float(r["interventions"]) > 0 for r in evals if r["method"] != "ddpg")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"ddpg", "ddpg-cbf", "dsrl"}
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {
        "learning_curves.png",
        "violation_vs_shift.png",
        "trajectories.png",
        "atoms.png",
    }
    assert "violation rate" in capsys.readouterr().out


def test_same_seed_gives_identical_metrics(tmp_path: Path) -> None:
    args = [
        "--no-progress",
        "--no-figures",
        "--set",
        "experiment.train_episodes=2",
        "--set",
        "experiment.methods=[dsrl]",
        "--set",
        "experiment.eval_episodes=1",
    ]
    for name in ("a", "b"):
        assert main(["run", "dsrl-dubins-quick", "--out", str(tmp_path / name), *args]) == 0
    for file in ("metrics.csv", "eval.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "env.params.obstacles=[[[0.0, 0.0], 0.5]]"], "contains the start"),
        (["--set", "env.params.speed=3"], "unexpected keyword"),
        (["--set", "safety.radius=-1"], "safety.radius"),
        (["--set", "safety.n_atoms=0"], "safety.n_atoms"),
        (["--set", "env.id=car"], "env.id"),
        (["--set", "eval.deltas=[]"], "deltas"),
        (["--set", "experiment.methods=[ppo]"], "experiment.methods"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["run", "dsrl-dubins-quick", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("otsafe: error:")
    assert message in err[0]
    assert not out.exists()
    assert not any(p.name.startswith(".run.partial") for p in tmp_path.iterdir())


def test_cuda_requested_without_gpu_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        pytest.skip("a GPU is available")
    assert main(["run", "dsrl-dubins-quick", "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "CUDA" in capsys.readouterr().err
