"""``otsafe reproduce`` (quick, local and Ray), ``otsafe report`` from the CLI, TensorBoard."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from _helpers import one_line_error
from otsafe.cli import main
from otsafe.errors import ConfigError
from otsafe.experiments.config import resolve_config


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_reproduce_otq_quick_writes_sweeps_and_a_report(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if backend == "ray":
        pytest.importorskip("ray")
    out = tmp_path / "repro"
    argv = ["reproduce", "otq", "--quick", "--out", str(out), "--no-progress"]
    argv += ["--backend", backend, "--workers", "2"]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "failed 0" in printed
    assert sorted(p.name for p in (out / "sweeps").iterdir()) == [
        "otq-beta-quick",
        "otq-paper-quick",
    ]
    report = (out / "report-otq" / "report.md").read_text()
    assert "Probability of improvement" in report
    assert "ot-q [agent.beta=100]" in report  # the beta sweep is in it
    html = (out / "report-otq" / "report.html").read_text()
    assert "data:image/png;base64," in html
    # Running it again finds everything done.
    assert main(argv) == 0
    assert "ran 0" in capsys.readouterr().out


def test_reproduce_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert main(["reproduce", "otq", "--quick", "--seeds", "0", "--out", str(out)]) == 2
    assert "--seeds" in one_line_error(capsys)
    assert not out.exists()
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "everything", "--out", str(out)])
    assert info.value.code == 2


def test_report_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "rep")]) == 2
    one_line_error(capsys)
    assert not (tmp_path / "rep").exists()


def test_tensorboard_logs_every_episode_of_every_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard is not installed")
    out = tmp_path / "run"
    argv = ["run", "otq-quick", "--out", str(out), "--seeds", "1", "--episodes", "5"]
    argv += ["--workers", "1", "--no-progress", "--no-figures"]
    assert main([*argv, "--set", "experiment.tensorboard=true"]) == 0, capsys.readouterr().err
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    jobs = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert jobs == ["ot-q-seed0", "q-learning-seed0"]
    acc = EventAccumulator(str(out / "tensorboard" / "ot-q-seed0"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("collisions")]
    assert steps == [1, 2, 3, 4, 5]


def test_tensorboard_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def no_tensorboard(name: str, *args: object) -> object:
        return None if name == "tensorboard" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", no_tensorboard)
    with pytest.raises(ConfigError, match="pip install"):
        resolve_config("otq-quick", sets=["experiment.tensorboard=true"])
