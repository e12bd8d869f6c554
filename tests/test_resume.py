"""Checkpoints and resume: a run killed with SIGKILL (or stopped with SIGINT) and resumed ends
with metrics identical to an uninterrupted run; bad resume requests are one-line errors."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from _helpers import one_line_error
from otsafe.cli import main
from otsafe.experiments.checkpoint import CheckpointStore, JobContext, train_with_checkpoints
from otsafe.experiments.rundir import staging_path

OTSAFE = Path(sys.executable).with_name("otsafe")
QUICK = ["--no-progress", "--no-figures"]

# OT-Q on the paper map, one job, long enough to be killed mid-way.
OTQ = [
    "run",
    "otq-paper",
    "--seeds",
    "1",
    "--episodes",
    "300",
    "--workers",
    "1",
    "--set",
    "experiment.methods=[ot-q]",
    "--set",
    "experiment.checkpoint_every=10",
    *QUICK,
]
# DSRL with the worst-case safety layer: networks, optimisers, replay buffer and RNGs.
DSRL = [
    "run",
    "dsrl-dubins-quick",
    "--workers",
    "1",
    "--set",
    "experiment.methods=[dsrl]",
    "--set",
    "experiment.train_episodes=8",
    "--set",
    "experiment.checkpoint_every=2",
    *QUICK,
]


def start(argv: list[str], out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(OTSAFE), *argv, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(out: Path, proc: subprocess.Popen[str], timeout: float = 120) -> Path:
    """The first checkpoint file of the run staged for ``out``, as soon as it appears."""
    directory = staging_path(out.resolve()) / "checkpoints"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(directory.glob("*.ckpt")) if directory.is_dir() else []
        if found:
            return found[0]
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.stderr}"
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def episodes_in(path: Path) -> int:
    with path.open("rb") as fh:
        return int(pickle.load(fh)["episodes"])


def reference(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "total", "files"),
    [(OTQ, 300, ["metrics.csv"]), (DSRL, 8, ["metrics.csv", "eval.csv"])],
    ids=["otq", "dsrl"],
)
def test_sigkill_then_resume_gives_identical_metrics(
    argv: list[str],
    total: int,
    files: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "killed"
    proc = start(argv, out)
    ckpt = wait_for_checkpoint(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = episodes_in(ckpt)
    assert 0 < done < total, "the kill must land mid-way for the test to mean anything"
    assert not out.exists()  # nothing that looks like a finished run

    # A plain re-run refuses and points at --resume; nothing is lost.
    assert main([*argv, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--out", str(out), "--resume"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["resumed"] is True

    reference(argv, tmp_path / "uninterrupted", capsys)
    for name in files:
        assert (out / name).read_bytes() == (tmp_path / "uninterrupted" / name).read_bytes()


def test_sigint_stops_cleanly_with_a_checkpoint_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two workers: SIGINT to the main process; every job checkpoints and the run says how to
    continue; the resumed run equals an uninterrupted one."""
    argv = [
        "run",
        "otq-paper",
        "--seeds",
        "1",
        "--episodes",
        "300",
        "--workers",
        "2",
        "--set",
        "experiment.checkpoint_every=40",
        *QUICK,
    ]
    out = tmp_path / "stopped"
    proc = start(argv, out)
    staging = staging_path(out.resolve())
    deadline = time.monotonic() + 120
    while len(list(staging.glob("checkpoints/*.ckpt"))) < 2:  # both jobs are under way
        assert time.monotonic() < deadline, "the jobs did not checkpoint"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "--resume" in err
    status = json.loads((staging / "status.json").read_text())
    assert status["state"] == "interrupted"
    ckpts = sorted((staging / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == 2  # both jobs checkpointed on the way out
    assert all(0 < episodes_in(p) < 300 for p in ckpts)

    assert main([*argv, "--out", str(out), "--resume"]) == 0, capsys.readouterr().err
    reference(argv, tmp_path / "uninterrupted", capsys)
    a = (out / "metrics.csv").read_bytes()
    assert a == (tmp_path / "uninterrupted" / "metrics.csv").read_bytes()


def test_checkpoint_interval_does_not_change_the_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["run", "otq-quick", "--seeds", "1", "--episodes", "12", "--workers", "1", *QUICK]
    for every in (0, 1):
        out = tmp_path / f"every{every}"
        code = main([*base, "--out", str(out), "--set", f"experiment.checkpoint_every={every}"])
        assert code == 0, capsys.readouterr().err
    assert (tmp_path / "every0" / "metrics.csv").read_bytes() == (
        tmp_path / "every1" / "metrics.csv"
    ).read_bytes()


# ------------------------------------------------------------------------------ bad input
BASE = ["run", "otq-quick", "--seeds", "1", "--episodes", "4", "--workers", "1", *QUICK]


def test_resume_with_nothing_to_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in one_line_error(capsys)
    assert not (tmp_path / "none").exists()


def test_resume_a_directory_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    assert main([*BASE, "--out", str(other), "--resume"]) == 2
    assert "not an otsafe run directory" in one_line_error(capsys)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_resume_with_a_different_config_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    staging = staging_path(out.resolve())
    staging.mkdir(parents=True)
    (staging / "checkpoints").mkdir()
    assert main([*BASE, "--out", str(out)]) == 2  # refuses to clobber the staged run
    one_line_error(capsys)
    # Stage a real interrupted run, then resume it with another beta.
    staging.joinpath("checkpoints").rmdir()
    staging.rmdir()
    assert main([*BASE, "--out", str(out)]) == 0
    capsys.readouterr()
    os.rename(out, staging)  # looks like a run interrupted just before finishing
    assert main([*BASE, "--out", str(out), "--resume", "--set", "agent.beta=7"]) == 2
    message = one_line_error(capsys)
    assert "different config" in message
    assert "agent.beta" in message
    # workers may differ on resume: it does not change the results
    assert main([*BASE, "--out", str(out), "--resume", "--workers", "2"]) == 0


def test_resume_a_finished_run_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([*BASE, "--out", str(out)]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main([*BASE, "--out", str(out), "--resume"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_resume_and_overwrite_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*BASE, "--out", str(tmp_path / "r"), "--resume", "--overwrite"]) == 2
    assert "exclude" in one_line_error(capsys)


def test_damaged_checkpoint_is_a_named_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([*BASE, "--out", str(out)]) == 0
    capsys.readouterr()
    os.rename(out, staging_path(out.resolve()))
    (staging_path(out.resolve()) / "summary.json").unlink()
    ckpt = next((staging_path(out.resolve()) / "checkpoints").glob("*.ckpt"))
    ckpt.write_bytes(b"not a checkpoint")
    assert main([*BASE, "--out", str(out), "--resume"]) == 2
    assert "cannot read checkpoint" in one_line_error(capsys)


class _Counter:
    """A stand-in agent whose state is the number of episodes it played."""

    def __init__(self) -> None:
        self.n = 0

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n = int(state["n"])


def _play(agent: _Counter) -> Callable[[int], dict[str, Any]]:
    def episode(k: int) -> dict[str, Any]:
        agent.n += 1
        return {"episode": k + 1}

    return episode


def test_finished_job_result_is_added_to_its_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    ctx = JobContext(store=store, every=2)
    agent = _Counter()
    rows, _ = train_with_checkpoints("job", agent, 5, _play(agent), ctx)
    assert len(rows) == 5
    # The job's own process adds the result to what it wrote, without reading it back.
    monkeypatch.setattr(store, "load", lambda key: pytest.fail("checkpoint read back"))
    ctx.finished("job", {"done": True})
    monkeypatch.undo()
    saved = store.load("job")
    assert saved is not None
    assert saved["result"] == {"done": True}
    assert saved["episodes"] == 5
    assert saved["agent"] == {"n": 5}
    assert [r["episode"] for r in saved["rows"]] == [1, 2, 3, 4, 5]


def test_finished_after_a_resume_reads_the_earlier_checkpoint(tmp_path: Path) -> None:
    """Training ended in an earlier session (e.g. a stop during evaluation): the new session
    trains nothing, and finished() adds the result to the checkpoint on disk."""
    store = CheckpointStore(tmp_path)
    first = _Counter()
    train_with_checkpoints("job", first, 3, _play(first), JobContext(store=store))
    ctx = JobContext(store=store)
    again = _Counter()
    rows, _ = train_with_checkpoints("job", again, 3, _play(again), ctx, saved=ctx.load("job"))
    assert again.n == 3
    assert len(rows) == 3
    ctx.finished("job", "result")
    saved = store.load("job")
    assert saved is not None
    assert saved["result"] == "result"
    assert saved["agent"] == {"n": 3}
