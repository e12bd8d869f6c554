"""Tests of the ``otsafe`` command: runs, determinism, presets, render, bad input (DESIGN §4)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from otsafe import __version__
from otsafe.cli import main
from otsafe.experiments.config import validate_config

OTSAFE = Path(sys.executable).with_name("otsafe")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = [
    "method",
    "beta",
    "seed",
    "episode",
    "env_return",
    "shaped_return",
    "length",
    "collisions",
    "risky_visits",
    "w2",
    "bonus",
    "epsilon",
    "success",
]
FIGURES = (
    "returns",
    "lengths",
    "collisions",
    "safety_distribution",
    "policy_distribution",
    "ot_plan",
)
QUICK = ["--no-progress", "--no-figures"]
RAGGED = "S...\n..\n...G\n"


def otsafe(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the console script."""
    return subprocess.run(
        [str(OTSAFE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Call ``otsafe.cli.main`` in-process; argparse exits become return codes."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (hidden ones included) with the bytes of the files."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def leftovers(root: Path) -> list[str]:
    """Hidden staging or trash directories a run may have left next to its output."""
    return sorted(p.name for p in root.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def assert_one_line_error(err: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("otsafe: error:"), lines[0]


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


# ------------------------------------------------------------------------------ smoke run
def test_smoke_run_writes_complete_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = otsafe(
        "run", "otq-quick", "--out", out, "--seeds", "2", "--episodes", "25", "--no-progress"
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "wrote" in proc.stdout
    assert leftovers(tmp_path) == []

    config = validate_config(yaml.safe_load((out / "config.yaml").read_text()))
    assert config.preset == "otq-quick"
    assert config.experiment.seeds == 2
    assert config.experiment.episodes == 25

    header, rows = read_rows(out / "metrics.csv")
    assert header == HEADER
    assert len(rows) == 2 * 2 * 25
    runs: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        assert len(row) == len(HEADER)
        rec = dict(zip(HEADER, row, strict=True))
        runs.setdefault((rec["method"], rec["seed"]), []).append(int(rec["episode"]))
        assert rec["success"] in ("0", "1")
        assert 1 <= int(rec["length"]) <= 200  # otq-quick: max_steps 200
        if rec["method"] == "q-learning":
            assert float(rec["beta"]) == 0.0
            assert float(rec["bonus"]) == 0.0
            assert rec["env_return"] == rec["shaped_return"]
    assert set(runs) == {("q-learning", "0"), ("q-learning", "1"), ("ot-q", "0"), ("ot-q", "1")}
    assert all(episodes == list(range(1, 26)) for episodes in runs.values())

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"q-learning", "ot-q"}
    assert "ot-q vs q-learning" in summary["comparisons"]
    assert summary["methods"]["ot-q"]["seeds"] == [0, 1]

    pngs = {p.stem for p in (out / "figures").glob("*.png")}
    assert set(FIGURES) <= pngs
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC


# ---------------------------------------------------------------------------- determinism
def test_same_command_twice_gives_identical_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        code, _, err = run_main(
            ["run", "otq-quick", "--out", str(out), "--seeds", "1", "--episodes", "25", *QUICK],
            capsys,
        )
        assert code == 0, err
    first, second = ((out / "metrics.csv").read_bytes() for out in outs)
    assert first == second
    assert not (outs[0] / "figures").exists()


def test_workers_do_not_change_metrics(tmp_path: Path) -> None:
    outs = {w: tmp_path / f"w{w}" for w in (1, 2)}
    for w, out in outs.items():
        proc = otsafe(
            "run",
            "otq-quick",
            "--out",
            out,
            "--seeds",
            "2",
            "--episodes",
            "12",
            "--workers",
            str(w),
            *QUICK,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads((out / "summary.json").read_text())["run"]["workers"] == w
    assert (outs[1] / "metrics.csv").read_bytes() == (outs[2] / "metrics.csv").read_bytes()


def test_seed_start_changes_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sanity check on the determinism test: different seeds give different runs."""
    for name, seed in (("s0", 0), ("s5", 5)):
        code, _, err = run_main(
            [
                "run",
                "otq-quick",
                "--out",
                str(tmp_path / name),
                "--seeds",
                "1",
                "--episodes",
                "5",
                "--set",
                f"experiment.seed_start={seed}",
                *QUICK,
            ],
            capsys,
        )
        assert code == 0, err
    a = (tmp_path / "s0" / "metrics.csv").read_text()
    b = (tmp_path / "s5" / "metrics.csv").read_text()
    assert a != b


# ----------------------------------------------------------------- presets, render, version
def test_presets_command_lists_presets() -> None:
    proc = otsafe("presets")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    for name in ("otq-paper", "otq-quick", "otq-beta-sweep", "otq-rooms30", "otq-maze50"):
        assert name in names
    for line in proc.stdout.splitlines():
        assert len(line.split(maxsplit=1)) == 2  # every preset has a description


def test_render_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "paper.png"
    proc = otsafe("render", "paper", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_render_map_file_with_safety_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    map_file = tmp_path / "m.txt"
    map_file.write_text("S..\n.#.\n..G\n")
    values = tmp_path / "v.txt"
    values.write_text("1 1 1\n1 0 0.5\n1 1 1\n")
    out = tmp_path / "m.png"
    code, stdout, err = run_main(
        ["render", str(map_file), "--out", str(out), "--safety-values", str(values)], capsys
    )
    assert code == 0, err
    assert "wrote" in stdout
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_version() -> None:
    proc = otsafe("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"otsafe {__version__}"


# ------------------------------------------------------------------------------ bad input
@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A scratch directory holding a ragged map, a non-mapping config and a plain file."""
    (tmp_path / "ragged.txt").write_text(RAGGED)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "plain-file").write_text("not a directory\n")
    return tmp_path


def _run(*extra: str) -> Callable[[Path], list[str]]:
    """``otsafe run otq-quick --out D/run EXTRA...`` with ``{d}`` in EXTRA replaced by D."""
    return lambda d: ["run", "otq-quick", "--out", str(d / "run"), *(e.format(d=d) for e in extra)]


BAD_INPUTS: list[tuple[str, Callable[[Path], list[str]]]] = [
    ("unknown-preset", lambda d: ["run", "otq-quik", "--out", str(d / "run")]),
    ("unknown-set-key", _run("--set", "agent.alpah=0.2")),
    ("unknown-top-level-set-key", _run("--set", "agnt.alpha=0.2")),
    ("out-of-range-set", _run("--set", "agent.alpha=1.5")),
    ("negative-beta", _run("--set", "agent.beta=-1")),
    ("bad-map-file", _run("--map", "{d}/ragged.txt")),
    ("missing-map-file", _run("--map", "{d}/missing.txt")),
    ("missing-config", _run("--config", "{d}/missing.yaml")),
    ("config-not-mapping", _run("--config", "{d}/list.yaml")),
    ("seeds-0", _run("--seeds", "0")),
    ("episodes-0", _run("--episodes", "0")),
    ("workers-negative", _run("--workers", "-1")),
    ("seeds-not-int", _run("--seeds", "two")),
    ("set-without-equals", _run("--set", "agent.alpha")),
    ("unknown-subcommand", lambda d: ["frobnicate"]),
    ("no-subcommand", lambda d: []),
    ("missing-out", lambda d: ["run", "otq-quick"]),
    ("unknown-flag", _run("--bogus")),
    ("out-is-a-file", lambda d: ["run", "otq-quick", "--out", str(d / "plain-file")]),
    ("deep-out-unknown-preset", lambda d: ["run", "nope", "--out", str(d / "x" / "y" / "run")]),
    ("render-non-png", lambda d: ["render", "paper", "--out", str(d / "map.jpg")]),
    ("render-no-suffix", lambda d: ["render", "paper", "--out", str(d / "map")]),
    ("render-missing-dir", lambda d: ["render", "paper", "--out", str(d / "nodir" / "m.png")]),
    ("render-bad-map", lambda d: ["render", str(d / "ragged.txt"), "--out", str(d / "m.png")]),
    ("render-unknown-map", lambda d: ["render", "papr", "--out", str(d / "m.png")]),
    (
        "render-missing-safety-values",
        lambda d: [
            "render",
            "paper",
            "--out",
            str(d / "m.png"),
            "--safety-values",
            str(d / "nope.txt"),
        ],
    ),
]


@pytest.mark.parametrize("make_argv", [pytest.param(f, id=name) for name, f in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line(
    work: Path, capsys: pytest.CaptureFixture[str], make_argv: Callable[[Path], list[str]]
) -> None:
    before = snapshot(work)
    code, _, err = run_main(make_argv(work), capsys)
    assert code == 2
    assert_one_line_error(err)
    assert snapshot(work) == before  # no run directory, no staging directory, nothing touched
    assert leftovers(work) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(
            ["run", "otq-quik", "--out", "{d}/run"],
            "did you mean 'otq-quick'?",
            id="unknown-preset",
        ),
        pytest.param(
            ["run", "otq-quick", "--out", "{d}/run", "--set", "agent.alpha=0"],
            "agent.alpha",
            id="out-of-range-set",
        ),
        pytest.param(
            ["run", "otq-quick", "--out", "{d}/run", "--map", "{d}/ragged.txt"],
            "ragged rows",
            id="ragged-map",
        ),
        pytest.param(["bogus-command"], "invalid choice", id="unknown-subcommand"),
        pytest.param(["run", "otq-quick"], "--out", id="missing-out"),
        pytest.param(["render", "paper", "--out", "{d}/x.svg"], ".png", id="render-svg"),
    ],
)
def test_bad_input_console_script(work: Path, args: list[str], needle: str) -> None:
    before = snapshot(work)
    proc = otsafe(*(a.format(d=work) for a in args))
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr)
    assert needle in proc.stderr
    assert proc.stdout == ""
    assert snapshot(work) == before


def test_error_messages_are_helpful(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(
        ["run", "otq-quick", "--out", str(work / "run"), "--set", "experiment.seeds=0"], capsys
    )
    assert code == 2
    assert "experiment.seeds" in err
    code, _, err = run_main(
        ["run", "otq-quick", "--out", str(work / "run"), "--map", str(work / "missing.txt")],
        capsys,
    )
    assert code == 2
    assert "missing.txt" in err


def test_non_empty_out_is_refused_and_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    (out / "sub").mkdir(parents=True)
    (out / "keep.txt").write_text("precious\n")
    (out / "sub" / "metrics.csv").write_text("old,data\n")
    before = snapshot(tmp_path)
    code, _, err = run_main(
        ["run", "otq-quick", "--out", str(out), "--seeds", "1", "--episodes", "3", *QUICK], capsys
    )
    assert code == 2
    assert_one_line_error(err)
    assert "--overwrite" in err
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_existing_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    base = ["run", "otq-quick", "--out", str(out), "--seeds", "1", *QUICK]
    code, _, err = run_main([*base, "--episodes", "5"], capsys)
    assert code == 0, err
    assert len(read_rows(out / "metrics.csv")[1]) == 2 * 5
    (out / "junk.txt").write_text("stale\n")
    code, _, err = run_main([*base, "--episodes", "6", "--overwrite"], capsys)
    assert code == 0, err
    assert not (out / "junk.txt").exists()
    assert len(read_rows(out / "metrics.csv")[1]) == 2 * 6
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "metrics.csv",
        "summary.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging or trash left


def test_existing_empty_out_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    code, _, err = run_main(
        ["run", "otq-quick", "--out", str(out), "--seeds", "1", "--episodes", "3", *QUICK], capsys
    )
    assert code == 0, err
    assert (out / "summary.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_failure_during_run_leaves_existing_directory_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Safety values of the wrong shape are only detected when the jobs start: the staging
    directory must be removed and the --overwrite target left as it was."""
    values = tmp_path / "values.txt"
    values.write_text("1 1 1\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious\n")
    before = snapshot(tmp_path)
    code, _, err = run_main(
        [
            "run",
            "otq-quick",
            "--out",
            str(out),
            "--seeds",
            "1",
            "--episodes",
            "3",
            "--overwrite",
            "--set",
            f"env.safety_values={values}",
            *QUICK,
        ],
        capsys,
    )
    assert code == 2
    assert_one_line_error(err)
    assert "safety values" in err
    assert snapshot(tmp_path) == before


def test_bad_safety_values_file_one_line_with_default_progress(tmp_path: Path) -> None:
    values = tmp_path / "values.txt"
    values.write_text("1 1 1\n")
    proc = otsafe(
        "run",
        "otq-quick",
        "--out",
        tmp_path / "run",
        "--seeds",
        "1",
        "--episodes",
        "3",
        "--no-figures",
        "--set",
        f"env.safety_values={values}",
    )
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr)


def test_out_is_empty_current_directory(tmp_path: Path) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir()
    proc = otsafe(
        "run", "otq-quick", "--out", ".", "--seeds", "1", "--episodes", "2", *QUICK, cwd=cwd
    )
    assert "Traceback" not in proc.stderr
    assert proc.returncode in (0, 2)
    if proc.returncode == 0:
        assert (cwd / "summary.json").is_file()
    else:
        assert_one_line_error(proc.stderr)
