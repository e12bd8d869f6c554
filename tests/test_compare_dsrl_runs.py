"""Tests of benchmarks/compare_dsrl_runs.py, the seed-pooled comparison behind the 15-seed DSRL
tables of docs/reproduction/dsrl.md."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_dsrl_runs

HEADER = (
    "method,seed,distribution,direction,delta_over_rho,violation_rate,violation_steps,"
    "min_barrier,return,success_rate,slack_activations,episodes\n"
)


def write_run(path: Path, rows: list[tuple[str, int, float]]) -> Path:
    """An eval.csv with one worst-direction δ = ρ row per (method, seed, violation rate)."""
    path.mkdir()
    lines = [f"{m},{s},shift,worst,1,{v},0,0.1,5.0,0,0,10\n" for m, s, v in rows]
    (path / "eval.csv").write_text(HEADER + "".join(lines))
    return path


def test_runs_pool_by_seed_and_compare_paired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_run(tmp_path / "a", [("ddpg-cbf", 0, 0.6), ("dsrl", 0, 0.0), ("ddpg", 0, 1.0)])
    b = write_run(
        tmp_path / "b",
        [("ddpg-cbf", 1, 0.4), ("dsrl", 1, 0.1), ("ddpg-cbf", 2, 0.8), ("dsrl", 2, 0.0)],
    )
    table = compare_dsrl_runs.pooled([a, b], "violation_rate")
    assert table[("shift/worst", "1")]["ddpg-cbf"] == {0: 0.6, 1: 0.4, 2: 0.8}
    assert table[("shift/worst", "1")]["dsrl"] == {0: 0.0, 1: 0.1, 2: 0.0}
    figure = tmp_path / "fig.png"
    argv = ["compare_dsrl_runs.py", str(a), str(b), "--figure", str(figure)]
    monkeypatch.setattr(sys, "argv", argv)
    compare_dsrl_runs.main()
    out = capsys.readouterr().out
    # paired differences -0.6, -0.3, -0.8: mean -0.57; every dsrl seed beats every ddpg-cbf seed
    row = next(line for line in out.splitlines() if line.startswith("| shift/worst | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "3"
    assert cells[5].startswith("-0.57 [")
    assert cells[6] == "1.00"
    assert figure.stat().st_size > 0


def test_a_seed_in_two_runs_is_refused(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", [("dsrl", 0, 0.0)])
    b = write_run(tmp_path / "b", [("dsrl", 0, 0.1)])
    with pytest.raises(SystemExit, match="seed 0 of dsrl is in two runs"):
        compare_dsrl_runs.pooled([a, b], "violation_rate")
