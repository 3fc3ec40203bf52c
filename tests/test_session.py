"""Fair measurement: one stored base latency per run and profile, targets shipped with the cells,
and the final latencies of a profile's cells measured together in interleaved rounds.

Everything measured here is measured for real (ONNX Runtime under the test profile's tiny
protocol); the assertions are about which networks are measured, how often and in what order,
and which number ends up where, never about how fast anything is.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from suite.cli import session as cli_session
from suite.core.budget import Budget
from suite.core.export import export_onnx
from suite.measure import backends
from suite.measure.profiles import load_profile
from suite.run import baseline as baseline_module
from suite.run import session as session_module
from suite.run.config import load_experiment
from suite.run.executors import InProcessExecutor
from suite.run.grid import grid, run_experiment
from suite.run.report import results_table
from suite.run.session import (
    Session,
    SessionNetwork,
    interleaved_order,
    measure_interleaved,
    read_session,
    session_path,
)
from suite.run.store import ResultsStore, read_consolidated
from tests.test_runner import PROFILES, TINY, write_experiment
from tests.test_store import make_record


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DEPTHBENCH_PROFILE_PATH", str(PROFILES))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def test_each_round_is_a_seeded_permutation_of_every_network():
    names = [f"net{i}" for i in range(6)]

    order = interleaved_order(names, rounds=5, seed=3)

    assert len(order) == 5
    assert all(sorted(round_order) == names for round_order in order)
    assert interleaved_order(names, rounds=5, seed=3) == order  # seeded
    assert interleaved_order(names, rounds=5, seed=4) != order
    assert len({tuple(round_order) for round_order in order}) > 1  # drawn anew each round


def tiny_networks(folder: Path, depths=(1, 2, 4)) -> dict[str, Path]:
    """ONNX files of conv stacks of different depth, at the test profile's batch and size."""
    torch.manual_seed(0)
    files = {}
    for depth in depths:
        layers = [nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()) for _ in range(depth)]
        files[f"depth{depth}"] = export_onnx(
            nn.Sequential(*layers).eval(), (2, 3, 16, 16), folder / f"depth{depth}.onnx"
        )
    return files


def test_a_session_measures_every_network_once_per_round_in_the_recorded_order(
    tmp_path, monkeypatch
):
    profile = load_profile("test-cpu-fast")
    networks = tiny_networks(tmp_path)
    real = backends.get_backend(profile.backend)
    measured: list[str] = []

    def recording_repeat(model, *arguments):  # the real backend, with each call noted
        measured.append(Path(model).stem)
        return real.run_repeat(model, *arguments)

    spy = dataclasses.replace(real, run_repeat=recording_repeat)
    monkeypatch.setattr(session_module, "get_backend", lambda name: spy)

    order, samples = measure_interleaved(networks, profile, rounds=3, seed=7)

    assert order == interleaved_order(sorted(networks), 3, 7)
    assert measured == [name for round_order in order for name in round_order]
    assert {name: len(repeats) for name, repeats in samples.items()} == dict.fromkeys(networks, 3)
    assert all(
        len(repeat) >= profile.protocol.min_iterations
        for repeats in samples.values()
        for repeat in repeats
    )


def test_consolidation_takes_the_session_latency_and_keeps_the_cell_time_one(tmp_path):
    store = ResultsStore(tmp_path)
    in_session = make_record()
    stored_before = make_record(method="layerprune")
    store.write(in_session)
    store.write(stored_before)
    fields = {
        "latency_ms_median": 2.5, "latency_ms_mean": 2.6, "latency_ms_p90": 2.9,
        "latency_ms_p95": 3.0, "latency_ms_p99": 3.1, "latency_ms_iqr": 0.2, "latency_cov": 0.1,
        "latency_robust_cov": 0.05, "latency_ms_ci_low": 2.4, "latency_ms_ci_high": 2.7,
        "latency_samples": 30, "latency_repeats": 3, "stable": False,
    }  # fmt: skip
    session = Session(
        run_id="run-1",
        profile_name=in_session.profile_name,
        profile_hash=in_session.profile_hash,
        rounds=3,
        seed=0,
        order=[[in_session.cell_hash]] * 3,
        networks={in_session.cell_hash: SessionNetwork(samples_ms=[[2.5] * 10] * 3, fields=fields)},
        environment={},
        code_version="abc123",
    )
    path = session_path(tmp_path / "run-1", in_session.profile_hash)
    path.parent.mkdir(parents=True)
    path.write_text(session.model_dump_json())

    records = read_consolidated(store.consolidate("run-1").parent).set_index("method")

    chosen = records.loc[in_session.method]
    assert chosen["latency_source"] == "session"
    assert {name: chosen[name] for name in fields} == fields
    assert chosen["cell_latency_ms_median"] == in_session.latency_ms_median
    assert chosen["cell_latency_ms_ci_high"] == in_session.latency_ms_ci_high
    other = records.loc[stored_before.method]
    assert other["latency_source"] == "cell"
    assert other["latency_ms_median"] == other["cell_latency_ms_median"] == 1.25
    table = results_table(records.reset_index())
    assert dict(zip(table["method"], table["latency_source"], strict=True)) == {
        in_session.method: "session",
        stored_before.method: "cell",
    }


def counting(monkeypatch, module, name: str) -> list[int]:
    """Count the calls of ``module.name`` (which still runs for real)."""
    calls: list[int] = []
    real = getattr(module, name)

    def counted(*arguments, **keywords):
        calls.append(1)
        return real(*arguments, **keywords)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.fixture(scope="module")
def session_run(tmp_path_factory):
    """The test runner's tiny experiment, run once: (experiment, summary, results root)."""
    folder = tmp_path_factory.mktemp("session")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEPTHBENCH_PROFILE_PATH", str(PROFILES))
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
        loaded = load_experiment(write_experiment(folder, TINY))
        summary = run_experiment(loaded, folder / "results", InProcessExecutor())
    return loaded, summary, folder / "results"


def test_a_run_stores_one_base_latency_and_records_it_with_each_target(session_run):
    _, summary, _ = session_run
    profile = load_profile("test-cpu-fast")
    stored = json.loads((summary.run_dir / "baselines" / f"{profile.hash}.json").read_text())
    records = read_consolidated(summary.run_dir).set_index("budget_kind")

    assert len(stored["samples_ms"]) == stored["stats"]["latency_samples"] > 0
    assert stored["environment"]["profile_hash"] == profile.hash
    base = stored["latency_ms_median"]
    assert list(records["base_latency_ms"]) == [base] * 3
    fraction = records.loc["fraction"]
    assert np.allclose(fraction["target_ms"], base * fraction["budget_value"])
    assert pd.isna(records.loc["table", "target_ms"])  # table units have no ms target


def test_a_run_ends_with_one_interleaved_session_over_its_ok_cells(session_run):
    _, summary, _ = session_run
    profile = load_profile("test-cpu-fast")
    records = read_consolidated(summary.run_dir)
    ok = records[records["status"] == "ok"]
    session = read_session(session_path(summary.run_dir, profile.hash))

    assert sorted(session.networks) == sorted(ok["cell_hash"])
    for row in ok.itertuples():  # fp32 weights once, plus a little graph
        size = (summary.run_dir / "deploy" / f"{row.cell_hash}.onnx").stat().st_size
        assert 4 * row.params < size < 4 * row.params + 100_000
    assert session.rounds == len(session.order) == profile.protocol.repeats
    assert all(sorted(order) == sorted(session.networks) for order in session.order)
    assert all(len(n.samples_ms) == session.rounds for n in session.networks.values())
    assert list(ok["latency_source"]) == ["session"] * len(ok)
    for row in ok.itertuples():
        assert row.latency_ms_median == session.networks[row.cell_hash].fields["latency_ms_median"]
        cell = json.loads((summary.run_dir / "cells" / f"{row.cell_hash}.json").read_text())
        assert row.cell_latency_ms_median == cell["latency_ms_median"]


def test_a_second_run_reuses_the_stored_base_and_gives_each_cell_the_same_target(
    session_run, tmp_path, monkeypatch
):
    loaded, first, results = session_run
    second = results / "second"
    shutil.copytree(first.run_dir / "baselines", second / "baselines")
    base_measurements = counting(monkeypatch, baseline_module, "measure")

    summary = run_experiment(loaded, results, InProcessExecutor(), run_id="second")

    assert base_measurements == []
    targets = {
        run: read_consolidated(run_dir).set_index("cell_hash")[["target_ms", "base_latency_ms"]]
        for run, run_dir in (("first", first.run_dir), ("second", summary.run_dir))
    }
    pd.testing.assert_frame_equal(targets["first"].sort_index(), targets["second"].sort_index())


def test_a_grown_grid_reuses_the_base_and_measures_a_new_session(session_run, monkeypatch):
    loaded, first, results = session_run
    grown = load_experiment(
        write_experiment(first.run_dir.parent.parent, {**TINY, "budgets": [0.9, 0.95]}, "grown")
    )
    base_measurements = counting(monkeypatch, baseline_module, "measure")
    sessions = counting(monkeypatch, session_module, "measure_interleaved")

    run_experiment(grown, results, InProcessExecutor(), run_id=first.run_id)

    assert base_measurements == []
    records = read_consolidated(first.run_dir)
    new = records[records["budget_value"] == 0.95].iloc[0]
    assert new["base_latency_ms"] == records["base_latency_ms"].iloc[0]
    ok = records.loc[records["status"] == "ok", "cell_hash"]
    stored = read_session(session_path(first.run_dir, load_profile("test-cpu-fast").hash))
    assert sorted(stored.networks) == sorted(ok)
    assert len(sessions) == (1 if new["status"] == "ok" else 0)  # only a changed set re-measures


def test_measure_run_measures_the_run_again_with_the_given_rounds_and_seed(session_run):
    _, summary, _ = session_run
    app = typer.Typer()
    app.callback()(lambda: None)
    cli_session.register(app)

    result = CliRunner().invoke(
        app, ["measure-run", str(summary.run_dir), "--rounds", "3", "--seed", "5"]
    )

    assert result.exit_code == 0, result.output
    session = read_session(session_path(summary.run_dir, load_profile("test-cpu-fast").hash))
    assert (session.rounds, session.seed) == (3, 5)
    assert session.order == interleaved_order(sorted(session.networks), 3, 5)
    records = read_consolidated(summary.run_dir)
    ok = records[records["status"] == "ok"]
    assert all(
        row.latency_repeats == 3 and row.latency_source == "session" for row in ok.itertuples()
    )


def test_a_budget_resolves_against_the_given_base():
    assert Budget(kind="fraction", value=0.8).target_ms(2.0) == pytest.approx(1.6)
    assert Budget(kind="ms", value=0.3).target_ms(2.0) == 0.3
    assert Budget(kind="table", value=5.0).target_ms(2.0) is None


def test_cells_of_a_run_ship_their_target(session_run):
    loaded, _, _ = session_run
    [cell] = [c for c in grid(loaded) if c.budget.kind == "fraction" and c.method != "original"]

    shipped = cell.with_base(0.5)

    assert (shipped.base_latency_ms, shipped.target_ms) == (0.5, pytest.approx(0.45))
    assert shipped.cell_hash == cell.cell_hash
    assert cell.with_base(None) is cell


@pytest.mark.parametrize(("at_cell_time", "in_the_report"), [(True, False), (None, None)])
def test_budget_met_is_judged_on_the_session_latency(tmp_path, at_cell_time, in_the_report):
    """A cell that met its target at cell time but not in the session is shown as missed; one
    without a budget to meet (the original: its target is its fraction 1.0) stays unjudged."""
    store = ResultsStore(tmp_path)
    cell = make_record().model_copy(update={"target_ms": 2.0, "budget_met": at_cell_time})
    store.write(cell)
    fields = {"latency_ms_median": 2.5, "latency_ms_ci_low": 2.4, "latency_ms_ci_high": 2.7}
    session = Session(
        run_id="run-1",
        profile_name=cell.profile_name,
        profile_hash=cell.profile_hash,
        rounds=3,
        seed=0,
        order=[[cell.cell_hash]] * 3,
        networks={cell.cell_hash: SessionNetwork(samples_ms=[[2.5] * 10] * 3, fields=fields)},
        environment={},
        code_version="abc123",
    )
    path = session_path(tmp_path / "run-1", cell.profile_hash)
    path.parent.mkdir(parents=True)
    path.write_text(session.model_dump_json())

    record = read_consolidated(store.consolidate("run-1").parent).iloc[0]

    assert cell.latency_ms_median <= 2.0 and record["latency_ms_median"] == 2.5
    if in_the_report is None:
        assert pd.isna(record["budget_met"])
    else:
        assert record["budget_met"] == in_the_report
