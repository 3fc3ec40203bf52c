"""Pareto reports and run comparison, checked against brute force and the stored Parquet alone."""

import itertools

import numpy as np
import pandas as pd
import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from suite.cli.report import register
from suite.core.budget import Budget
from suite.errors import DepthbenchError
from suite.provenance import config_hash
from suite.run.report import compare_runs, pareto_front, results_table, write_report
from suite.run.store import CellRecord, ResultsStore, records_frame

CPU = ("cpu-onnxruntime", "c" * 64)
GPU = ("rtx2080ti-replay", "d" * 64)
METHODS = {"dp_depth": 1.0, "layerprune": 2.5, "depthshrinker": 1.5}  # accuracy lost per 10% cut


def cell(method, budget, profile=CPU, seed=0, run_id="run-a", **measured) -> CellRecord:
    """A record with the fields a real run stores; ``measured`` holds top1 and latency_ms."""
    identity = [method, budget, profile[1], seed]
    latency = measured.pop("latency_ms", None)
    noise = measured.pop("noise_ms", 0.01)
    if latency is not None:
        measured |= {
            "latency_ms_median": latency,
            "latency_ms_mean": latency * 1.01,
            "latency_ms_ci_low": latency - noise,
            "latency_ms_ci_high": latency + noise,
            "latency_samples": 200,
            "stable": True,
        }
    if "top1" in measured:
        measured.setdefault("top5", min(100.0, measured["top1"] + 2))
    return CellRecord(
        run_id=run_id,
        cell_hash=config_hash(identity)[:16],
        model="mobilenet_v2-0.5",
        dataset="digits",
        method=method,
        budget=Budget(kind="fraction", value=budget),
        seed=seed,
        profile_name=profile[0],
        profile_hash=profile[1],
        fidelity="full",
        code_version="test",
        **({"status": "ok"} | measured),
    )


def realistic_run(profile=CPU, run_id="run-a", seed=0) -> list[CellRecord]:
    """The original network, three methods at four budgets with noisy results, and an
    infeasible cell."""
    rng = np.random.default_rng(seed)
    records = [cell("original", 1.0, profile, run_id=run_id, top1=97.2, latency_ms=2.0)]
    for method, loss in METHODS.items():
        for budget in (0.9, 0.8, 0.7, 0.6):
            records.append(
                cell(
                    method,
                    budget,
                    profile,
                    run_id=run_id,
                    top1=97.2 - loss * (1 - budget) * 10 + rng.normal(0, 0.5),
                    latency_ms=2.0 * budget * rng.uniform(0.85, 1.0),
                )
            )
    records.append(
        cell("deeprebirth", 0.6, profile, run_id=run_id, status="infeasible", reason="no plan")
    )
    return records


def dominated_by_brute_force(points: list[tuple[float, float]]) -> list[bool]:
    return [
        any(
            other_top1 >= top1 and other_ms <= ms and (other_top1 > top1 or other_ms < ms)
            for j, (other_top1, other_ms) in enumerate(points)
            if j != i
        )
        for i, (top1, ms) in enumerate(points)
    ]


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 5)), min_size=1, max_size=12))
def test_global_front_is_the_brute_force_set_of_non_dominated_cells(points):
    records = [
        cell(f"m{i % 3}", 0.5, seed=i, top1=float(a), latency_ms=float(lat))
        for i, (a, lat) in enumerate(points)
    ]
    front = pareto_front(records_frame(records))
    assert front["global_front"].tolist() == [not d for d in dominated_by_brute_force(points)]
    for _, rows in front.groupby("method"):
        mine = list(zip(rows["top1"], rows["latency_ms_median"], strict=True))
        assert rows["method_front"].tolist() == [not d for d in dominated_by_brute_force(mine)]


def test_unmeasured_cells_are_on_no_front():
    records = [
        cell("a", 0.5, top1=90.0, latency_ms=1.0),
        cell("b", 0.5, status="failed", reason="out of memory"),
    ]
    front = pareto_front(records_frame(records))
    assert front["global_front"].tolist() == [True, False]
    assert front["method_front"].tolist() == [True, False]


def test_report_numbers_are_regenerated_from_parquet_alone(tmp_path):
    store = ResultsStore(tmp_path / "results")
    for record in realistic_run():
        store.write(record)
    store.consolidate("run-a")
    (tmp_path / "results" / "run-a" / "cells").rename(tmp_path / "cells-moved-away")
    written = write_report(tmp_path / "results" / "run-a", tmp_path / "report")

    folder = tmp_path / "report" / f"cpu-onnxruntime-{'c' * 12}"
    names = {path.relative_to(folder).as_posix() for path in written}
    assert names == {
        f"{stem}.{suffix}"
        for stem, suffix in itertools.chain(
            itertools.product(("results", "unmeasured"), ("csv", "md", "tex", "html")),
            itertools.product(("accuracy_vs_latency", "speedup_vs_drop"), ("png", "svg")),
        )
    }
    assert (folder / "accuracy_vs_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "speedup_vs_drop.svg").read_text().lstrip().startswith("<?xml")

    table = pd.read_csv(folder / "results.csv")
    stored = pd.read_parquet(tmp_path / "results" / "run-a" / "records.parquet")
    measured = stored[stored["status"] == "ok"]
    points = list(zip(measured["top1"], measured["latency_ms_median"], strict=True))
    expected_front = {
        (m, b)
        for (m, b), dominated in zip(
            zip(measured["method"], measured["budget_value"], strict=True),
            dominated_by_brute_force(points),
            strict=True,
        )
        if not dominated
    }
    on_front = table[table["global_front"]]
    assert set(zip(on_front["method"], on_front["budget_value"], strict=True)) == expected_front
    original = measured[measured["method"] == "original"].iloc[0]
    for row in table.itertuples():
        source = measured[
            (measured["method"] == row.method) & (measured["budget_value"] == row.budget_value)
        ].iloc[0]
        assert row.speedup == pytest.approx(
            original["latency_ms_median"] / source["latency_ms_median"]
        )
        assert row.accuracy_drop_pp == pytest.approx(original["top1"] - source["top1"])
        assert row.latency_ms_ci_low == pytest.approx(source["latency_ms_ci_low"])
    assert "deeprebirth" not in set(table["method"])
    unmeasured = pd.read_csv(folder / "unmeasured.csv")
    assert unmeasured[["method", "status", "reason"]].values.tolist() == [
        ["deeprebirth", "infeasible", "no plan"]
    ]
    markdown = (folder / "results.md").read_text()
    assert "| dp_depth" in markdown and "2.000 [1.990, 2.010]" in markdown
    assert "\\begin{tabular}" in (folder / "results.tex").read_text()
    assert "<table" in (folder / "results.html").read_text()


def test_profiles_never_share_a_table(tmp_path):
    records = records_frame(realistic_run(CPU) + realistic_run(GPU))
    with pytest.raises(DepthbenchError, match="2 hardware profiles.*not comparable"):
        results_table(records)
    written = write_report(records, tmp_path)
    tables = sorted(p for p in written if p.name == "results.csv")
    assert [p.parent.name for p in tables] == [
        f"cpu-onnxruntime-{'c' * 12}",
        f"rtx2080ti-replay-{'d' * 12}",
    ]
    assert [len(pd.read_csv(path)) for path in tables] == [13, 13]
    assert len(results_table(records[records["profile_hash"] == GPU[1]])) == 13


def test_compare_flags_changes_beyond_the_measured_noise():
    run_a = realistic_run()
    changed = {
        ("dp_depth", 0.9): {"latency_shift": 0.005},  # inside the CIs: noise
        ("dp_depth", 0.8): {"latency_shift": 0.5},  # far outside: flagged
        ("layerprune", 0.7): {"top1_shift": -1.0},  # accuracy changed: flagged
    }
    run_b = []
    for record in run_a:
        change = changed.get((record.method, record.budget.value), {})
        if (record.method, record.budget.value) == ("depthshrinker", 0.6):
            continue  # missing in B: flagged
        update = {"run_id": "run-b"}
        if "latency_shift" in change:
            shift = change["latency_shift"]
            update |= {
                "latency_ms_median": record.latency_ms_median + shift,
                "latency_ms_ci_low": record.latency_ms_ci_low + shift,
                "latency_ms_ci_high": record.latency_ms_ci_high + shift,
            }
        if "top1_shift" in change:
            update["top1"] = record.top1 + change["top1_shift"]
        run_b.append(record.model_copy(update=update))
    differences = compare_runs(records_frame(run_a), records_frame(run_b))
    flagged = differences[differences["flagged"]]
    flagged_cells = zip(flagged["method"], flagged["budget_value"], flagged["present"], strict=True)
    assert set(flagged_cells) == {
        ("dp_depth", 0.8, "both"),
        ("layerprune", 0.7, "both"),
        ("depthshrinker", 0.6, "A only"),
    }
    moved = differences[
        (differences["method"] == "dp_depth") & (differences["budget_value"] == 0.8)
    ]
    assert moved["latency_diff_ms"].iloc[0] == pytest.approx(0.5)
    assert len(differences) == len(run_a)


def test_compare_refuses_runs_with_duplicate_cells():
    records = records_frame(realistic_run())
    doubled = pd.concat([records, records])
    with pytest.raises(DepthbenchError, match="run B has 14 cells with the same"):
        compare_runs(records, doubled)


@pytest.fixture
def cli():
    app = typer.Typer()
    register(app)
    return app


def test_cli_report_and_compare(tmp_path, cli):
    store = ResultsStore(tmp_path)
    for run_id, seed in (("run-a", 0), ("run-b", 1)):
        for record in realistic_run(run_id=run_id, seed=seed):
            store.write(record)
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(tmp_path / "run-a")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Per-method Pareto fronts" in result.output and "dp_depth" in result.output
    assert (tmp_path / "run-a" / "records.parquet").exists()  # consolidated from the cells
    assert (tmp_path / "run-a" / "report" / f"cpu-onnxruntime-{'c' * 12}" / "results.md").exists()
    result = runner.invoke(
        cli, ["compare", str(tmp_path / "run-a"), str(tmp_path / "run-b")], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "12 of 14 cells differ beyond the measured noise" in result.output


def test_cli_errors_are_one_message_and_exit_1(tmp_path, cli):
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "no-such-run")])
    assert result.exit_code == 1
    assert "error:" in result.output and "records.parquet does not exist" in result.output
    assert "Traceback" not in result.output
