"""Tests of ``write_report``: finding runs, grouping, statistics tables, figures, HTML, errors."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import otsafe
from otsafe.cli import main
from otsafe.errors import ReportError
from otsafe.experiments.report import GroupKey, ReportResult, write_report
from otsafe.experiments.stats import bootstrap_ci, iqm, probability_of_improvement

QUICK = ["--workers", "1", "--no-progress", "--no-figures"]
TITLE = "Safety <b>&</b> report"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def otq_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("otq") / "run"
    args = ["--episodes", "25", "--seeds", "2"]
    assert main(["run", "otq-quick", "--out", str(out), *args, *QUICK]) == 0
    return out


@pytest.fixture(scope="session")
def otq_more_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeds 2 and 3 of the same experiment as ``otq_run``."""
    out = tmp_path_factory.mktemp("otq-more") / "run"
    args = ["--episodes", "25", "--seeds", "2", "--set", "experiment.seed_start=2"]
    assert main(["run", "otq-quick", "--out", str(out), *args, *QUICK]) == 0
    return out


@pytest.fixture(scope="session")
def dsrl_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dsrl") / "run"
    sets = ["--set", "experiment.methods=[ddpg-cbf,dsrl]", "--set", "experiment.eval_episodes=1"]
    assert main(["run", "dsrl-dubins-quick", "--out", str(out), *sets, *QUICK]) == 0
    return out


@pytest.fixture(scope="session")
def both_report(
    tmp_path_factory: pytest.TempPathFactory, otq_run: Path, otq_more_run: Path, dsrl_run: Path
) -> ReportResult:
    out = tmp_path_factory.mktemp("report") / "out"
    return write_report([otq_run, otq_more_run, dsrl_run], out, title=TITLE)


# ------------------------------------------------------------------------------- helpers
def copy_run(
    src: Path, dst: Path, *, label: str | None = None, methods: set[str] | None = None
) -> Path:
    """Copy a run directory, optionally keeping only some methods and setting run.label."""
    shutil.copytree(src, dst)
    if methods is not None:
        path = dst / "metrics.csv"
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        kept = [rows[0]] + [r for r in rows[1:] if r[0] in methods]
        with path.open("w", newline="") as fh:
            csv.writer(fh).writerows(kept)
    if label is not None:
        summary = json.loads((dst / "summary.json").read_text())
        summary["run"]["label"] = label
        (dst / "summary.json").write_text(json.dumps(summary))
    return dst


def table_row(markdown: str, *first_cells: str) -> list[str]:
    """The cells of the first Markdown table row that starts with ``first_cells``."""
    for line in markdown.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if cells[: len(first_cells)] == list(first_cells):
                return cells
    raise AssertionError(f"no table row starting with {first_cells}")


def parse_estimate(cell: str) -> tuple[float, float, float]:
    match = re.fullmatch(r"(\S+)(?: \[(\S+), (\S+)\])?", cell)
    assert match is not None, cell
    point, low, high = match.groups()
    return float(point), float(low or "nan"), float(high or "nan")


def close(shown: float, value: float) -> bool:
    """Whether a number shown with 3-4 significant digits is ``value``."""
    return bool(np.isclose(shown, value, rtol=5e-3, atol=5e-4))


def otq_per_seed(*runs: Path) -> dict[str, dict[int, dict[str, float]]]:
    """Per method and seed: final return and total collisions, straight from metrics.csv."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for run in runs:
        final = yaml.safe_load((run / "config.yaml").read_text())["experiment"]["final_episodes"]
        series: dict[tuple[str, int], list[tuple[int, float, float]]] = {}
        with (run / "metrics.csv").open(newline="") as fh:
            for row in csv.DictReader(fh):
                key = (row["method"], int(row["seed"]))
                series.setdefault(key, []).append(
                    (int(row["episode"]), float(row["env_return"]), float(row["collisions"]))
                )
        for (method, seed), rows in series.items():
            rows.sort()
            returns = [r[1] for r in rows][-final:]
            out.setdefault(method, {})[seed] = {
                "return": float(np.mean(returns)),
                "collisions": float(sum(r[2] for r in rows)),
            }
    return out


# ------------------------------------------------------------------------------- reports
def test_report_from_one_run(otq_run: Path, tmp_path: Path) -> None:
    result = write_report([otq_run], tmp_path / "rep")
    assert result.runs == 1
    assert result.groups == (
        GroupKey("otq", "paper", "", "q-learning"),
        GroupKey("otq", "paper", "", "ot-q"),
    )
    assert result.markdown == tmp_path / "rep" / "report.md"
    assert result.html == tmp_path / "rep" / "report.html"
    md = result.markdown.read_text()
    assert md.startswith("# otsafe report\n")
    assert f"otsafe version: {otsafe.__version__}" in md
    assert "percentile-bootstrap" in md
    assert "## OT-Q: paper" in md
    assert len(result.figures) == 2
    for figure in result.figures:
        assert figure.parent == tmp_path / "rep" / "figures"
        assert figure.read_bytes().startswith(b"\x89PNG")
        assert f"](figures/{figure.name})" in md
    assert table_row(md, "return ↑", "ot-q")[2] == "2"
    assert table_row(md, "convergence episode ↓", "ot-q")[2].endswith("/2")
    assert table_row(md, "ot-q", "q-learning", "collisions ↓")
    assert "**" + str(otq_run) + ": full config**" in md
    assert "kind: otq" in md


def test_report_over_several_inputs_of_both_kinds(
    both_report: ReportResult, otq_run: Path, otq_more_run: Path, dsrl_run: Path
) -> None:
    assert both_report.runs == 3
    assert both_report.groups == (
        GroupKey("otq", "paper", "", "q-learning"),
        GroupKey("otq", "paper", "", "ot-q"),
        GroupKey("dsrl", "dubins", "", "ddpg-cbf"),
        GroupKey("dsrl", "dubins", "", "dsrl"),
    )
    md = both_report.markdown.read_text()
    assert md.index("## OT-Q: paper") < md.index("## DSRL: dubins")
    # the two OT-Q run directories hold seeds 0-1 and 2-3 of the same groups
    assert table_row(md, "return ↑", "q-learning")[2] == "4"
    for metric in ("return ↑", "train violation rate ↓", "nominal violation rate ↓"):
        assert table_row(md, metric, "dsrl")[2] == "1"
    assert table_row(md, "worst-case violation rate ↓", "ddpg-cbf")
    assert table_row(md, "dsrl", "ddpg-cbf", "worst-case violation rate ↓")
    assert table_row(md, "dsrl", "ddpg-cbf", "success rate ↑")  # compared since success is right
    # runs table and configs: the second OT-Q run differs from the first in its seeds only
    assert table_row(md, str(otq_more_run), "OT-Q", "paper", "–", "q-learning, ot-q", "2–3")
    assert table_row(md, str(dsrl_run), "DSRL", "dubins")
    assert f"**{otq_more_run}: differences from {otq_run}**" in md
    assert "experiment.seed_start: 0 → 2" in md
    assert "kind: dsrl" in md
    assert len(both_report.figures) == 4
    assert {f.name for f in both_report.figures} == {
        "otq-paper-return.png",
        "otq-paper-collisions.png",
        "dsrl-dubins-return.png",
        "dsrl-dubins-violations.png",
    }


def test_html_is_self_contained_and_escaped(both_report: ReportResult) -> None:
    page = both_report.html.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("data:image/png;base64,") == len(both_report.figures)
    for figure in both_report.figures:
        payload = base64.b64encode(figure.read_bytes()).decode("ascii")
        assert f'src="data:image/png;base64,{payload}"' in page
    assert 'src="http' not in page
    assert "<script" not in page
    assert "<link" not in page
    assert "url(" not in page
    assert "<b>" not in page
    assert "<title>Safety &lt;b&gt;&amp;&lt;/b&gt; report</title>" in page
    assert page.count("<details>") == both_report.runs
    assert "<table>" in page
    assert "↑" in page
    md = both_report.markdown.read_text()
    assert md.startswith("# Safety &lt;b>&amp;&lt;/b> report\n")


def test_table_numbers_are_the_statistics_of_the_csv_values(
    both_report: ReportResult, otq_run: Path, otq_more_run: Path
) -> None:
    md = both_report.markdown.read_text()
    per_seed = otq_per_seed(otq_run, otq_more_run)
    for metric, key in (("return ↑", "return"), ("collisions ↓", "collisions")):
        for method in ("q-learning", "ot-q"):
            values = np.array([per_seed[method][s][key] for s in sorted(per_seed[method])])
            assert values.size == 4
            cells = table_row(md, metric, method)
            mean_cell, iqm_cell = parse_estimate(cells[3]), parse_estimate(cells[4])
            expected_mean = bootstrap_ci(values, "mean")
            expected_iqm = bootstrap_ci(values, "iqm")
            assert close(mean_cell[0], values.mean())
            assert close(mean_cell[1], expected_mean.ci_low)
            assert close(mean_cell[2], expected_mean.ci_high)
            assert close(iqm_cell[0], iqm(values))
            assert close(iqm_cell[0], np.sort(values)[1:3].mean())  # middle two of four
            assert close(iqm_cell[1], expected_iqm.ci_low)
            assert close(iqm_cell[2], expected_iqm.ci_high)
    x = [per_seed["ot-q"][s]["collisions"] for s in sorted(per_seed["ot-q"])]
    y = [per_seed["q-learning"][s]["collisions"] for s in sorted(per_seed["q-learning"])]
    expected = probability_of_improvement(x, y, higher_is_better=False)
    cell = parse_estimate(table_row(md, "ot-q", "q-learning", "collisions ↓")[3])
    assert close(cell[0], expected.mean)
    if not np.isnan(expected.ci_low):
        assert close(cell[1], expected.ci_low)
        assert close(cell[2], expected.ci_high)


def test_dsrl_numbers_come_from_metrics_and_eval_csv(
    both_report: ReportResult, dsrl_run: Path
) -> None:
    md = both_report.markdown.read_text()
    with (dsrl_run / "metrics.csv").open(newline="") as fh:
        train = [r for r in csv.DictReader(fh) if r["method"] == "dsrl"]
    returns = [float(r["return"]) for r in sorted(train, key=lambda r: int(r["episode"]))]
    shown = parse_estimate(table_row(md, "return ↑", "dsrl")[3])
    assert close(shown[0], float(np.mean(returns[-10:])))
    with (dsrl_run / "eval.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["method"] == "dsrl"]
    worst = [r for r in rows if r["direction"] == "worst"]
    largest = max(worst, key=lambda r: float(r["delta_over_rho"]))
    shown = parse_estimate(table_row(md, "worst-case violation rate ↓", "dsrl")[3])
    assert close(shown[0], float(largest["violation_rate"]))


def test_same_directory_twice_is_read_once(otq_run: Path, tmp_path: Path) -> None:
    result = write_report([otq_run, otq_run.parent], tmp_path / "rep")
    assert result.runs == 1


# -------------------------------------------------------------------------------- sweeps
def make_sweep(root: Path, otq_run: Path, points: list[tuple[str, set[str], str | None]]) -> Path:
    """A fake sweep directory: ``runs/<id>/`` per (id, methods, label), plus noise around it."""
    sweep = root / "sweep"
    (sweep / "runs").mkdir(parents=True)
    (sweep / "sweep.yaml").write_text("preset: otq-quick\ngrid:\n  agent.beta: [50, 100]\n")
    (sweep / "index.csv").write_text("run,label\n")
    for run_id, methods, label in points:
        copy_run(otq_run, sweep / "runs" / run_id, label=label, methods=methods)
    # a hidden staging directory that looks complete must be skipped (else: duplicate seeds)
    copy_run(otq_run, sweep / "runs" / ".0099.partial")
    return sweep


def test_sweep_layout_groups_by_label_and_matches_baselines(otq_run: Path, tmp_path: Path) -> None:
    sweep = make_sweep(
        tmp_path,
        otq_run,
        [
            ("0000", {"ot-q"}, "agent.beta=50"),
            ("0001", {"ot-q"}, "agent.beta=100"),
            ("0002", {"q-learning"}, "agent.beta=100"),
            ("0003", {"q-learning"}, None),  # a plain run: no label
        ],
    )
    result = write_report([sweep], tmp_path / "rep")
    assert result.runs == 4
    assert set(result.groups) == {
        GroupKey("otq", "paper", "agent.beta=50", "ot-q"),
        GroupKey("otq", "paper", "agent.beta=100", "ot-q"),
        GroupKey("otq", "paper", "agent.beta=100", "q-learning"),
        GroupKey("otq", "paper", "", "q-learning"),
    }
    md = result.markdown.read_text()
    assert table_row(md, "return ↑", "ot-q [agent.beta=50]")[2] == "2"
    assert table_row(md, "return ↑", "q-learning [agent.beta=100]")
    # same label if there is one, else the unlabelled baseline
    assert table_row(md, "ot-q [agent.beta=100]", "q-learning [agent.beta=100]", "return ↑")
    assert table_row(md, "ot-q [agent.beta=50]", "q-learning", "return ↑")
    with pytest.raises(AssertionError):
        table_row(md, "q-learning [agent.beta=100]", "q-learning")
    assert table_row(md, str(sweep / "runs" / "0000"), "OT-Q", "paper", "agent.beta=50", "ot-q")
    assert ".0099.partial" not in md


def test_only_baseline_of_another_label_is_used(otq_run: Path, tmp_path: Path) -> None:
    sweep = make_sweep(
        tmp_path, otq_run, [("a", {"ot-q"}, "agent.beta=50"), ("b", {"q-learning"}, "other")]
    )
    md = write_report([sweep], tmp_path / "rep").markdown.read_text()
    assert table_row(md, "ot-q [agent.beta=50]", "q-learning [other]", "collisions ↓")


def test_no_comparison_when_the_baseline_is_ambiguous(otq_run: Path, tmp_path: Path) -> None:
    sweep = make_sweep(
        tmp_path,
        otq_run,
        [("a", {"ot-q"}, "x"), ("b", {"q-learning"}, "y"), ("c", {"q-learning"}, "z")],
    )
    md = write_report([sweep], tmp_path / "rep").markdown.read_text()
    assert "Probability of improvement" not in md
    assert table_row(md, "return ↑", "ot-q [x]")


# -------------------------------------------------------------------------------- errors
def test_no_inputs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no inputs"):
        write_report([], tmp_path / "rep")


def test_missing_input_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"nowhere.*does not exist"):
        write_report([tmp_path / "nowhere"], tmp_path / "rep")
    assert not (tmp_path / "rep").exists()


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"no complete run directory.*empty"):
        write_report([tmp_path / "empty"], tmp_path / "rep")


def test_directory_with_only_incomplete_runs_is_an_error(otq_run: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    incomplete = copy_run(otq_run, root / "interrupted")
    (incomplete / "summary.json").unlink()
    copy_run(otq_run, root / ".staged.partial")  # complete, but hidden
    with pytest.raises(ReportError, match="no complete run directory"):
        write_report([root], tmp_path / "rep")


def test_good_and_bad_inputs_together_name_the_bad_one(otq_run: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="empty"):
        write_report([otq_run, tmp_path / "empty"], tmp_path / "rep")


def test_missing_metrics_csv_is_an_error(otq_run: Path, tmp_path: Path) -> None:
    run = copy_run(otq_run, tmp_path / "run")
    (run / "metrics.csv").unlink()
    with pytest.raises(ReportError, match=r"metrics\.csv"):
        write_report([run], tmp_path / "rep")


def test_missing_eval_csv_is_an_error(dsrl_run: Path, tmp_path: Path) -> None:
    run = copy_run(dsrl_run, tmp_path / "run")
    (run / "eval.csv").unlink()
    with pytest.raises(ReportError, match=r"eval\.csv"):
        write_report([run], tmp_path / "rep")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda rows: rows.__setitem__(3, rows[3].replace(",200,", ",abc,", 1)), r"line 4"),
        (lambda rows: rows.__setitem__(5, "ot-q,1000,0"), r"line 6: expected 13 fields"),
        (lambda rows: rows.__setitem__(0, rows[0].replace("collisions", "crashes")), "collisions"),
        (lambda rows: rows.__setitem__(3, rows[2]), "repeats"),
        (lambda rows: rows.__delitem__(slice(1, None)), "no data rows"),
    ],
)
def test_malformed_metrics_csv_is_an_error(
    otq_run: Path, tmp_path: Path, corrupt: object, message: str
) -> None:
    run = copy_run(otq_run, tmp_path / "run")
    path = run / "metrics.csv"
    rows = path.read_text().splitlines()
    corrupt(rows)  # type: ignore[operator]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(ReportError, match=rf"metrics\.csv.*{message}"):
        write_report([run], tmp_path / "rep")


def test_malformed_config_or_summary_is_an_error(otq_run: Path, tmp_path: Path) -> None:
    run = copy_run(otq_run, tmp_path / "run")
    (run / "config.yaml").write_text("kind: otq\nagent:\n  betta: 3\n")
    with pytest.raises(ReportError, match=r"config\.yaml.*agent\.betta"):
        write_report([run], tmp_path / "rep")
    run = copy_run(otq_run, tmp_path / "run2")
    (run / "summary.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"summary\.json"):
        write_report([run], tmp_path / "rep")


def test_duplicate_group_and_seed_is_an_error(otq_run: Path, tmp_path: Path) -> None:
    copy_run(otq_run, tmp_path / "runs" / "a")
    copy_run(otq_run, tmp_path / "runs" / "b")
    with pytest.raises(ReportError, match=r"duplicate seed 0 of q-learning .*runs/a.*runs/b"):
        write_report([tmp_path / "runs"], tmp_path / "rep")
    # different labels make different groups: no duplicate
    copy_run(otq_run, tmp_path / "labelled" / "a", label="agent.beta=1")
    copy_run(otq_run, tmp_path / "labelled" / "b", label="agent.beta=2")
    assert write_report([tmp_path / "labelled"], tmp_path / "rep").runs == 2
