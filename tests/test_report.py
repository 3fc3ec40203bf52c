"""Pareto reports and run comparison, checked against brute force and the stored Parquet alone."""

import itertools

import numpy as np
import pandas as pd
import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from typer.testing import CliRunner

from suite.cli.report import register
from suite.console import configure_logging
from suite.core.budget import Budget
from suite.errors import DepthbenchError
from suite.provenance import config_hash
from suite.run.report import (
    aggregate_seeds,
    compare_runs,
    pairwise_table,
    pareto_front,
    results_table,
    wins_table,
    write_report,
)
from suite.run.stats import pack_correct, unpack_correct, wilson_interval
from suite.run.store import CellRecord, ResultsStore, records_frame

CPU = ("cpu-onnxruntime", "c" * 64)
GPU = ("rtx2080ti-replay", "d" * 64)
METHODS = {"dp_depth": 1.0, "layerprune": 2.5, "depthshrinker": 1.5}  # accuracy lost per 10% cut
TEST_IMAGES = 360


def cell(method, budget, profile=CPU, seed=0, run_id="run-a", **measured) -> CellRecord:
    """A record with the fields a real run stores; ``measured`` holds top1 (or ``correct``, the
    per-image correctness it is computed from) and latency_ms."""
    identity = [method, budget, profile[1], seed]
    latency = measured.pop("latency_ms", None)
    correct = measured.pop("correct", None)
    if correct is not None:
        measured |= {
            "top1": 100 * float(np.mean(correct)),
            "test_images": len(correct),
            "test_correct": pack_correct(correct),
        }
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


def correctness(accuracy: float, rng: np.random.Generator, images: int = TEST_IMAGES):
    return rng.random(images) < accuracy / 100


def realistic_run(profile=CPU, run_id="run-a", seed=0) -> list[CellRecord]:
    """The original network, three methods at four budgets with noisy results on 360 test
    images, and an infeasible cell."""
    rng = np.random.default_rng(seed)
    records = [
        cell(
            "original", 1.0, profile, run_id=run_id, correct=correctness(97.2, rng), latency_ms=2.0
        )
    ]
    for method, loss in METHODS.items():
        for budget in (0.9, 0.8, 0.7, 0.6):
            records.append(
                cell(
                    method,
                    budget,
                    profile,
                    run_id=run_id,
                    correct=correctness(97.2 - loss * (1 - budget) * 10, rng),
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
            itertools.product(("results", "unmeasured"), ("csv", "md", "tex")),
            itertools.product(("pairwise",), ("csv", "md")),
            itertools.product(("accuracy_vs_latency", "speedup_vs_drop"), ("png", "svg", "pdf")),
            [("report", "html")],
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
    assert "<table" in (folder / "report.html").read_text()


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
        ("layerprune", 0.7): {"newly_wrong": 40},  # McNemar p = 2^-39: flagged
        ("layerprune", 0.8): {"newly_wrong": 3},  # p = 0.25: noise
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
        if "newly_wrong" in change:
            correct = unpack_correct(record.test_correct, record.test_images)
            correct[np.flatnonzero(correct)[: change["newly_wrong"]]] = False
            update |= {"top1": 100 * correct.mean(), "test_correct": pack_correct(correct)}
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
    app.callback()(configure_logging)  # warnings to stderr, as the depthbench app does
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
    assert "has no records.parquet (the run did not finish): reading its 14 cell files" in (
        " ".join(result.output.split())
    )
    assert not (tmp_path / "run-a" / "records.parquet").exists()  # consolidating is `run`'s job
    assert (tmp_path / "run-a" / "report" / f"cpu-onnxruntime-{'c' * 12}" / "results.md").exists()
    result = runner.invoke(
        cli, ["compare", str(tmp_path / "run-a"), str(tmp_path / "run-b")], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    # 9 of the 12 compressed cells moved beyond their latency CIs; the other 3 stay inside them
    # and inside McNemar's noise; the original's top-5 went from 97.6% to 100% (Wilson apart)
    assert "10 of 14 cells differ beyond the measured noise" in result.output


def folder_state(folder):
    """Every file under ``folder`` with its modification time and content."""
    return {
        path.relative_to(folder): (path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_report_and_compare_only_read_the_run_folders(tmp_path, cli):
    """Tests run as root, where chmod stops no write: what counts is that no file changes."""
    store = ResultsStore(tmp_path / "results")
    for run_id, seed in (("run-a", 0), ("run-b", 1)):
        for record in realistic_run(run_id=run_id, seed=seed):
            store.write(record)
        store.consolidate(run_id)
    run_a, run_b = tmp_path / "results" / "run-a", tmp_path / "results" / "run-b"
    late = realistic_run(run_id="run-b", seed=7)[0].model_copy(update={"seed": 7})
    store.write(late.model_copy(update={"cell_hash": config_hash("late")[:16]}))  # a resumed run
    for lock in (tmp_path / "results").rglob(".consolidate.lock"):
        lock.unlink()  # left by consolidate; reading must not take one
    before = folder_state(tmp_path / "results")
    for folder in (run_a, run_b, run_a / "cells", run_b / "cells"):
        folder.chmod(0o555)
    try:
        runner = CliRunner()
        reported = runner.invoke(cli, ["report", str(run_a), "--out", str(tmp_path / "report")])
        compared = runner.invoke(cli, ["compare", str(run_a), str(run_b)], env={"COLUMNS": "200"})
    finally:
        for folder in (run_a, run_b, run_a / "cells", run_b / "cells"):
            folder.chmod(0o755)

    assert reported.exit_code == 0, reported.output
    assert (tmp_path / "report" / f"cpu-onnxruntime-{'c' * 12}" / "results.csv").is_file()
    assert compared.exit_code == 0, compared.output
    assert "lacks 1 of the run's cell files: reading the cells instead" in " ".join(
        compared.output.split()
    )
    assert "of 15 cells differ" in compared.output  # the late cell is counted
    assert folder_state(tmp_path / "results") == before  # no file changed, none appeared


def test_compare_refuses_runs_of_different_profiles(tmp_path, cli):
    store = ResultsStore(tmp_path)
    for run_id, profile in (("run-a", CPU), ("run-b", GPU)):
        for record in realistic_run(profile, run_id=run_id):
            store.write(record)
        store.consolidate(run_id)

    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "run-a"), str(tmp_path / "run-b")])

    message = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert f"was measured under 'cpu-onnxruntime' (hash {'c' * 12})" in message
    assert f"under 'rtx2080ti-replay' (hash {'d' * 12}): latencies of different profiles" in message
    assert "cells differ" not in message


def test_cli_errors_are_one_message_and_exit_1(tmp_path, cli):
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "no-such-run")])
    assert result.exit_code == 1
    assert "error:" in result.output and "records.parquet does not exist" in result.output
    assert "Traceback" not in result.output


def right_on(count: int, images: int = TEST_IMAGES) -> np.ndarray:
    """Correctness with the first ``count`` images right."""
    return np.arange(images) < count


def test_seeds_are_aggregated_with_a_t_interval_and_one_seed_with_its_wilson_interval():
    records = records_frame(
        [
            cell("a", 0.5, seed=seed, top1=top1, latency_ms=ms)
            for seed, top1, ms in ((0, 90.0, 1.0), (1, 92.0, 1.2), (2, 94.0, 1.1))
        ]
        + [cell("b", 0.5, seed=0, correct=right_on(342), latency_ms=0.9)]
    )

    table = aggregate_seeds(records).set_index("method")

    a, b = table.loc["a"], table.loc["b"]
    half_width = 4.302653 * 2 / np.sqrt(3)  # t_{0.975, 2} * sd / sqrt(3)
    assert (a["seeds"], a["seed"]) == (3, "0, 1, 2")
    assert (a["top1"], a["top1_ci_low"], a["top1_ci_high"]) == pytest.approx(
        (92, 92 - half_width, 92 + half_width), abs=1e-5
    )
    log_mean, log_sd = np.mean(np.log([1.0, 1.2, 1.1])), np.std(np.log([1.0, 1.2, 1.1]), ddof=1)
    assert a["latency_ms_median"] == pytest.approx(np.exp(log_mean))
    assert a["latency_ms_ci_high"] == pytest.approx(np.exp(log_mean + 4.302653 * log_sd / 3**0.5))
    expected = stats.binomtest(342, 360).proportion_ci(method="wilson")
    assert (b["seeds"], b["top1"]) == (1, 95.0)
    assert (b["top1_ci_low"], b["top1_ci_high"]) == pytest.approx(
        (100 * expected.low, 100 * expected.high)
    )
    assert (b["latency_ms_ci_low"], b["latency_ms_ci_high"]) == pytest.approx((0.89, 0.91))


def test_fronts_are_computed_on_the_seed_aggregates():
    """a's seed 1 alone would dominate b, but a's mean over seeds is below b at the same
    latency: the front holds b, not a."""
    records = records_frame(
        [
            cell("a", 0.5, seed=0, top1=80.0, latency_ms=1.0),
            cell("a", 0.5, seed=1, top1=99.0, latency_ms=1.0),
            cell("b", 0.5, seed=0, top1=95.0, latency_ms=1.0),
            cell("b", 0.5, seed=1, top1=95.0, latency_ms=1.0),
        ]
    )

    table = results_table(records).set_index("method")

    assert table["global_front"].to_dict() == {"a": False, "b": True}
    assert table.loc["a", "top1"] == pytest.approx(89.5)


def test_records_without_per_image_correctness_still_report(tmp_path):
    """Parquet of runs made before per-image correctness was stored lacks those columns."""
    records = records_frame(realistic_run()).drop(columns=["test_images", "test_correct"])

    table = results_table(records)

    assert table["top1_ci_low"].isna().all() and table["top1"].notna().all()
    assert pairwise_table(records).empty
    written = write_report(records, tmp_path)
    assert not any(path.name.startswith("pairwise") for path in written)
    assert compare_runs(records, records)["flagged"].sum() == 0


def test_methods_at_one_budget_are_compared_pairwise_on_the_same_images(tmp_path):
    """b gets 30 more images right than a (and none fewer); c differs from a on 2 images each
    way. The original, alone at its budget, is compared with nothing."""
    base = right_on(300)
    better = base | (np.arange(TEST_IMAGES) >= 330)
    swapped = base.copy()
    swapped[[0, 1]], swapped[[300, 301]] = False, True
    records = records_frame(
        [
            cell("original", 1.0, correct=right_on(350), latency_ms=2.0),
            cell("a", 0.5, correct=base, latency_ms=1.0),
            cell("b", 0.5, correct=better, latency_ms=1.0),
            cell("c", 0.5, correct=swapped, latency_ms=1.0),
        ]
    )

    pairs = pairwise_table(records).set_index(["method_a", "method_b"])

    assert set(pairs.index) == {("a", "b"), ("a", "c"), ("b", "c")}
    ab = pairs.loc[("a", "b")]
    assert ab["top1_diff_pp"] == pytest.approx(100 * 30 / 360)
    assert (ab["only_a"], ab["only_b"]) == (0, 30)
    assert ab["mcnemar_p"] == pytest.approx(2 * 0.5**30)
    assert ab["diff_ci_low"] > 0 and ab["significant"] and ab["better"] == "b"
    ac = pairs.loc[("a", "c")]
    assert ac["top1_diff_pp"] == 0 and (ac["only_a"], ac["only_b"]) == (2, 2)
    assert ac["diff_ci_low"] < 0 < ac["diff_ci_high"] and not ac["significant"]
    assert ac["mcnemar_p"] == pytest.approx(1.0)

    wins = wins_table(pairwise_table(records)).set_index("method")
    assert wins.loc["b", "beats"] == "a, c" and wins.loc["b", "loses to"] == ""
    assert wins.loc["a", "loses to"] == "b" and wins.loc["a", "no significant difference"] == 1

    write_report(records, tmp_path)
    markdown = (tmp_path / f"cpu-onnxruntime-{'c' * 12}" / "pairwise.md").read_text()
    assert "## Who beats whom" in markdown and "| b " in markdown
    results = (tmp_path / f"cpu-onnxruntime-{'c' * 12}" / "results.md").read_text()
    low, high = wilson_interval(300, 360)
    assert f"83.33 [{100 * low:.2f}, {100 * high:.2f}]" in results and "1 seed" in results


def test_pairs_over_several_seeds_use_the_bootstrap_only():
    rng = np.random.default_rng(0)
    records = records_frame(
        [
            cell(method, 0.5, seed=seed, correct=correctness(accuracy, rng), latency_ms=1.0)
            for seed in (0, 1, 2)
            for method, accuracy in (("a", 70.0), ("b", 95.0))
        ]
    )

    pair = pairwise_table(records).iloc[0]

    assert pair["seeds"] == 3 and np.isnan(pair["mcnemar_p"]) and pd.isna(pair["only_a"])
    assert pair["significant"] and pair["better"] == "b"


def test_compare_without_per_image_correctness_uses_the_wilson_intervals():
    """Records with the test-image count but no per-image correctness: 2 points apart on 360
    images is noise, 10 points is not."""
    records = [cell("a", 0.5, top1=90.0, latency_ms=1.0), cell("b", 0.5, top1=90.0, latency_ms=1.0)]
    run_a = [record.model_copy(update={"test_images": 360}) for record in records]
    run_b = [
        record.model_copy(update={"test_images": 360, "top1": record.top1 - shift})
        for record, shift in zip(records, (2.0, 10.0), strict=True)
    ]

    differences = compare_runs(records_frame(run_a), records_frame(run_b)).set_index("method")

    assert differences["accuracy_changed"].to_dict() == {"a": False, "b": True}
    assert differences["top1_p_value"].isna().all()


def test_seeds_that_agree_still_show_the_test_set_noise():
    """Two seeds with the same top-1 on 360 images: the t-interval has zero width, the test set's
    sampling noise does not, so the interval is the Wilson interval of that top-1."""
    rng = np.random.default_rng(0)
    records = records_frame(
        [
            cell("a", 0.5, seed=seed, correct=rng.permutation(right_on(342)), latency_ms=1.0)
            for seed in (0, 1)
        ]
    )

    row = aggregate_seeds(records).iloc[0]

    low, high = wilson_interval(342, 360)
    assert row["top1"] == pytest.approx(95.0)
    assert (row["top1_ci_low"], row["top1_ci_high"]) == pytest.approx((100 * low, 100 * high))
    assert (row["latency_ms_ci_low"], row["latency_ms_ci_high"]) == pytest.approx((0.99, 1.01))
