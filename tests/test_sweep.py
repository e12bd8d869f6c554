"""Sweeps: expansion, the sweep directory and its index, skipping finished runs, retrying a
worker that dies, the Ray backend, and bad input."""

from __future__ import annotations

import csv
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _helpers import one_line_error
from otsafe.cli import main
from otsafe.errors import SweepError
from otsafe.experiments.reproduce import builtin_sweep, list_sweeps
from otsafe.experiments.sweep import expand_sweep, load_sweep, parse_sweep
from otsafe.experiments.sweep_runner import check_ray_address, run_sweep

OTSAFE = Path(sys.executable).with_name("otsafe")

SMALL = {
    "preset": "otq-quick",
    "set": {"experiment.episodes": 12},
    "grid": {"agent.beta": [0, 100]},
    "methods": ["ot-q"],
    "seeds": 2,
}


def write_sweep(path: Path, data: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def read_index(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "index.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------ expansion
def test_expansion_crosses_grid_points_methods_and_seeds() -> None:
    spec = parse_sweep(
        {
            "preset": "otq-quick",
            "set": {"experiment.episodes": 7},
            "grid": {"agent.beta": [10, 20], "agent.alpha": [0.1, 0.2, 0.3]},
            "points": [{"agent.gamma": 0.9}, {"agent.gamma": 0.95, "env.max_steps": 50}],
            "methods": ["q-learning", "ot-q"],
            "seeds": [3, 5],
        }
    )
    runs = expand_sweep(spec)
    assert len(runs) == 2 * 3 * 2 * 2 * 2
    assert len({r.run_id for r in runs}) == len(runs)
    first = runs[0]
    assert first.label == "agent.beta=10, agent.alpha=0.1, agent.gamma=0.9"
    cfg = first.config
    assert cfg.experiment.episodes == 7  # set
    assert cfg.agent.beta == 10  # grid
    assert cfg.agent.gamma == 0.9  # points
    assert cfg.experiment.methods == [first.method]
    assert cfg.experiment.seeds == 1
    assert cfg.experiment.seed_start == first.seed
    assert cfg.experiment.workers == 1
    last = runs[-1]
    assert last.config.env.max_steps == 50
    assert (last.method, last.seed) == ("ot-q", 5)


def test_seed_count_starts_at_seed_start() -> None:
    spec = parse_sweep({"preset": "otq-quick", "set": {"experiment.seed_start": 10}, "seeds": 3})
    assert sorted({r.seed for r in expand_sweep(spec)}) == [10, 11, 12]


def test_config_base_file_is_relative_to_the_sweep_file(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("experiment:\n  episodes: 9\n  methods: [q-learning]\n  seeds: 1\n")
    sweep = write_sweep(tmp_path / "s.yaml", {"config": "base.yaml"})
    runs = expand_sweep(load_sweep(sweep))
    assert [r.config.experiment.episodes for r in runs] == [9]
    assert load_sweep(sweep).name == "s"


def test_every_builtin_sweep_expands() -> None:
    names = list_sweeps()
    assert {"otq-paper", "otq-beta", "dsrl-dubins", "dsrl-quadrotor", "dsrl-rho"} <= set(names)
    for name in names:
        assert expand_sweep(builtin_sweep(name)), name


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"preset": "otq-quick", "grids": {}}, "unknown sweep key 'grids'"),
        ({"preset": "otq-quick", "grid": {"agent.beta": []}}, "no values"),
        ({"preset": "otq-quick", "grid": {"agent.betta": [1]}}, "agent.betta"),
        ({"preset": "otq-quick", "grid": {"agent.alpha": [0.1, 5]}}, "agent.alpha"),
        ({"preset": "otq-quick", "set": {"env.map": "nowhere"}}, "env.map"),
        ({"preset": "otq-quick", "methods": ["sarsa"]}, "experiment.methods"),
        ({"preset": "otq-quick", "config": "x.yaml"}, "exactly one"),
        ({"grid": {"agent.beta": [1]}}, "exactly one"),
        ({"preset": "no-such-preset"}, "unknown preset"),
        ({"preset": "otq-quick", "seeds": 0}, "seeds"),
        ({"preset": "otq-quick", "points": [{}]}, "points"),
    ],
)
def test_bad_sweep_files_exit_2_with_one_line(
    data: dict[str, object], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = write_sweep(tmp_path / "bad.yaml", data)
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--no-progress"]) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


def test_missing_sweep_file_and_unknown_builtin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in one_line_error(capsys)
    assert main(["sweep", "no-such-sweep", "--out", str(tmp_path / "o")]) == 2
    assert "otsafe sweeps" in one_line_error(capsys)


def test_a_different_sweep_in_the_same_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    spec = parse_sweep({**SMALL, "grid": {"agent.beta": [100]}, "seeds": 1})
    run_sweep(spec, out, workers=1, progress=False)
    other = write_sweep(tmp_path / "other.yaml", {**SMALL, "grid": {"agent.beta": [200]}})
    before = (out / "index.csv").read_bytes()
    assert main(["sweep", str(other), "--out", str(out), "--no-progress"]) == 2
    assert "different sweep" in one_line_error(capsys)
    assert (out / "index.csv").read_bytes() == before


def test_a_non_empty_directory_that_is_not_a_sweep_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    with pytest.raises(SweepError, match="not a sweep directory"):
        run_sweep(parse_sweep(SMALL), out, workers=1, progress=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_ray_address_is_a_named_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(SweepError, match="cannot reach"):
        check_ray_address(address, timeout=2)
    with pytest.raises(SweepError, match="host:port"):
        check_ray_address("nonsense")
    pytest.importorskip("ray")
    sweep = write_sweep(tmp_path / "s.yaml", SMALL)
    out = tmp_path / "out"
    argv = ["sweep", str(sweep), "--out", str(out), "--backend", "ray", "--address", address]
    assert main(argv) == 2
    assert "cannot reach the Ray cluster" in one_line_error(capsys)
    assert not out.exists()


def test_address_without_ray_backend_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="--backend ray"):
        run_sweep(parse_sweep(SMALL), tmp_path / "o", address="127.0.0.1:1", progress=False)


# ------------------------------------------------------------------------ running sweeps
def test_sweep_runs_everything_then_a_rerun_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = write_sweep(tmp_path / "s.yaml", SMALL)
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    rows = read_index(out)
    assert len(rows) == 4
    assert {r["status"] for r in rows} == {"done"}
    assert {r["label"] for r in rows} == {"agent.beta=0", "agent.beta=100"}
    for row in rows:
        run_dir = out / row["dir"]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["run"]["label"] == row["label"]
        assert (
            json.loads(row["summary"])["ot-q"]["collisions_total"]
            == (summary["methods"]["ot-q"]["collisions_total"]["mean"])
        )
        assert json.loads(row["config"]) == yaml.safe_load((run_dir / "config.yaml").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != "index.csv"}
    capsys.readouterr()
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    assert "ran 0, already done 4" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != "index.csv"} == stamps


def test_sweep_run_equals_the_same_plain_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = parse_sweep({**SMALL, "grid": {"agent.beta": [100]}, "seeds": [1]})
    outcome = run_sweep(spec, tmp_path / "sweep", workers=1, progress=False)
    run_dir = outcome.sweep_dir / outcome.rows[0]["dir"]
    argv = ["run", "otq-quick", "--out", str(tmp_path / "plain"), "--no-progress"]
    argv += ["--no-figures", "--episodes", "12", "--seeds", "1", "--set", "agent.beta=100"]
    argv += ["--set", "experiment.seed_start=1", "--set", "experiment.methods=[ot-q]"]
    assert main(argv) == 0
    assert (run_dir / "metrics.csv").read_bytes() == (
        tmp_path / "plain" / "metrics.csv"
    ).read_bytes()


def test_failed_run_is_recorded_and_rerun_on_the_next_invocation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = parse_sweep({**SMALL, "grid": {"agent.beta": [100]}, "seeds": 1})
    out = tmp_path / "out"
    outcome = run_sweep(spec, out, workers=1, progress=False)
    run_dir = outcome.sweep_dir / outcome.rows[0]["dir"]
    # Damage the finished run: it is no longer complete, and its checkpoint is unreadable.
    (run_dir / "summary.json").unlink()
    run_dir.rename(run_dir.parent / f".{run_dir.name}.partial")
    ckpt = next((run_dir.parent / f".{run_dir.name}.partial" / "checkpoints").glob("*.ckpt"))
    ckpt.write_bytes(b"garbage")
    outcome = run_sweep(spec, out, workers=1, progress=False)
    assert outcome.failed == [outcome.rows[0]["run"]]
    row = read_index(out)[0]
    assert row["status"] == "failed"
    assert "cannot read checkpoint" in row["error"]
    ckpt.unlink()  # "fix" it: the next invocation re-runs the job from scratch
    outcome = run_sweep(spec, out, workers=1, progress=False)
    assert outcome.failed == []
    assert read_index(out)[0]["status"] == "done"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.exists():
        return []
    return [int(x) for x in path.read_text().split()]


def test_sigint_stops_a_sweep_and_the_next_invocation_finishes_it(tmp_path: Path) -> None:
    data = {
        "preset": "otq-paper",
        "set": {"experiment.episodes": 150},
        "methods": ["ot-q"],
        "seeds": 4,
    }
    sweep = write_sweep(tmp_path / "s.yaml", data)
    out = tmp_path / "out"
    argv = [str(OTSAFE), "sweep", str(sweep), "--out", str(out), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "runs").is_dir() or not any((out / "runs").iterdir()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    statuses = [r["status"] for r in read_index(out)]
    assert "interrupted" in statuses
    assert "running" not in statuses
    done_before = statuses.count("done")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert f"already done {done_before}" in result.stdout
    assert {r["status"] for r in read_index(out)} == {"done"}


def test_ray_backend_gives_the_same_runs_as_the_local_pool(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    spec = parse_sweep(SMALL)
    local = run_sweep(spec, tmp_path / "local", workers=2, progress=False)
    ray_run = run_sweep(spec, tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert ray_run.failed == []
    assert ray_run.ran == 4
    for a, b in zip(local.rows, ray_run.rows, strict=True):
        assert a["run"] == b["run"]
        assert (local.sweep_dir / a["dir"] / "metrics.csv").read_bytes() == (
            ray_run.sweep_dir / b["dir"] / "metrics.csv"
        ).read_bytes()
    again = run_sweep(spec, tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert (again.ran, again.skipped) == (0, 4)


@pytest.mark.parametrize(("flag", "value"), [("--workers", "-1"), ("--retries", "-2")])
def test_negative_workers_or_retries_exit_2(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = write_sweep(tmp_path / "s.yaml", SMALL)
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), flag, value, "--no-progress"]) == 2
    assert flag in one_line_error(capsys)
    assert not out.exists()


def _ray_task_pids(_: int) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray::_ray_task"], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_worker_killed_mid_run_is_reported_and_its_run_retried(
    backend: str, tmp_path: Path
) -> None:
    """SIGKILL the process running a sweep's run (a local worker process, or the Ray worker
    executing the task) after its first checkpoint: the sweep reports it, retries the run from
    its checkpoints, and the run ends byte-identical to an uninterrupted one."""
    if backend == "ray":
        pytest.importorskip("ray")
    find_workers = _ray_task_pids if backend == "ray" else _children
    data = {
        "preset": "otq-paper",
        "set": {"experiment.episodes": 300, "experiment.checkpoint_every": 10},
        "methods": ["ot-q"],
        "seeds": 1,
    }
    sweep = write_sweep(tmp_path / "s.yaml", data)
    out = tmp_path / "out"
    argv = [str(OTSAFE), "sweep", str(sweep), "--out", str(out), "--backend", backend]
    proc = subprocess.Popen(
        [*argv, "--workers", "1", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    staging = out / "runs" / ".p000-ot-q-seed0.partial" / "checkpoints"
    deadline = time.monotonic() + 180
    while not (staging.is_dir() and any(staging.glob("*.ckpt"))):
        assert time.monotonic() < deadline, "no checkpoint appeared"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    workers = find_workers(proc.pid)
    assert workers, "no worker process is running the run"
    for pid in workers:
        subprocess.run(["kill", "-9", str(pid)], check=False)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "worker died" in stderr
    assert "retrying" in stderr
    row = read_index(out)[0]
    assert row["status"] == "done"
    assert row["attempts"] == "2"
    reference = tmp_path / "ref"
    argv = ["run", "otq-paper", "--out", str(reference), "--no-progress", "--no-figures"]
    argv += ["--seeds", "1", "--episodes", "300", "--set", "experiment.methods=[ot-q]"]
    assert main(argv) == 0
    assert (out / row["dir"] / "metrics.csv").read_bytes() == (
        reference / "metrics.csv"
    ).read_bytes()
