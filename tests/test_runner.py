"""The runner: grids, content addresses, real runs into a real results store, resuming after a
SIGKILL of a real process, and a real local Ray cluster."""

import importlib.util
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from suite.cli import run as cli_run
from suite.console import configure_logging, logger
from suite.core.budget import Budget
from suite.core.models import build_model
from suite.errors import DepthbenchError
from suite.run.config import load_experiment
from suite.run.executors import InProcessExecutor, RayExecutor
from suite.run.grid import ORIGINAL_BUDGET, default_run_id, grid, run_experiment

PROFILES = Path(__file__).parent / "data" / "profiles"

# Three cells that run in seconds: the original network, DepthShrinker's published pattern A at a
# fraction budget (ok or infeasible, depending on the measurement), and the same at a budget in
# latency-table units, which only dp-depth plans in: a real error, so a failed cell.
TINY = {
    "model": {"name": "mobilenet_v2", "width": 0.25},
    "dataset": {"name": "digits", "resolution": 16},
    "base": {"train": {"steps": 2, "lr": 0.05, "batch_size": 16}},
    "methods": ["original", {"name": "depthshrinker", "config": {"pattern": "A"}}],
    "budgets": [0.9, {"kind": "table", "value": 1.0}],
    "profiles": ["test-cpu-fast"],
    "finetune": {"steps": 1, "lr": 0.01, "batch_size": 8},
    "fidelity": "smoke",
}


# Three cells that each fine-tune for seconds on any machine: a signal sent as soon as the first
# is stored lands while the second runs, however fast the machine (TINY's cells after the first
# take milliseconds, so a signal could arrive after the run had finished)
THREE_SLOW_CELLS = {
    **TINY,
    "methods": ["original"],
    "budgets": [0.9],
    "seeds": [0, 1, 2],
    "finetune": {"steps": 200, "lr": 0.01, "batch_size": 8},
}


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory, monkeypatch):
    """Test profiles on the profile path; base networks and latency tables in a private cache."""
    monkeypatch.setenv("DEPTHBENCH_PROFILE_PATH", str(PROFILES))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def write_experiment(folder: Path, content: dict, name: str = "tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def experiment(tmp_path: Path, **changes):
    return load_experiment(write_experiment(tmp_path, {**TINY, **changes}))


def cell_files(run_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (run_dir / "cells").glob("*.json")}


def test_grid_has_one_original_cell_per_profile_and_seed(tmp_path):
    cells = grid(experiment(tmp_path, seeds=[0, 1], budgets=[0.9, 0.8, 0.7]))

    original = [cell for cell in cells if cell.method == "original"]
    assert [(cell.seed, cell.budget) for cell in original] == [(s, ORIGINAL_BUDGET) for s in (0, 1)]
    shrink = [cell for cell in cells if cell.method == "depthshrinker"]
    assert len(shrink) == 2 * 3
    assert {cell.budget.value for cell in shrink} == {0.9, 0.8, 0.7}
    assert len({cell.cell_hash for cell in cells}) == len(cells) == 2 + 6


def test_cell_hashes_depend_on_content_only(tmp_path):
    cells = grid(experiment(tmp_path / "a"))
    moved = grid(experiment(tmp_path / "b", dataset={**TINY["dataset"], "root": "/elsewhere"}))

    assert [c.cell_hash for c in moved] == [c.cell_hash for c in cells]
    retuned = grid(experiment(tmp_path / "c", finetune={**TINY["finetune"], "lr": 0.02}))
    assert not {c.cell_hash for c in retuned} & {c.cell_hash for c in cells}
    fewer = grid(experiment(tmp_path / "d", budgets=[0.9]))
    assert {c.cell_hash for c in fewer} < {c.cell_hash for c in cells}


def test_run_id_is_the_name_and_a_hash_of_the_cells(tmp_path):
    one = experiment(tmp_path / "a")
    changed = experiment(tmp_path / "b", seeds=[3])

    assert default_run_id(one, grid(one)) == default_run_id(one, grid(one))
    assert default_run_id(one, grid(one)).startswith("tiny-")
    assert default_run_id(one, grid(one)) != default_run_id(changed, grid(changed))


def test_a_checkpoint_is_addressed_by_its_content(tmp_path):
    checkpoint = tmp_path / "base.pt"
    torch.save(build_model("mobilenet_v2", 10, 0.25).state_dict(), checkpoint)
    base = {"checkpoint": str(checkpoint)}
    before = grid(experiment(tmp_path, base=base))
    torch.save(build_model("mobilenet_v2", 10, 0.25).state_dict(), checkpoint)  # new weights

    assert {c.cell_hash for c in grid(experiment(tmp_path, base=base))}.isdisjoint(
        {c.cell_hash for c in before}
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny experiment run once in-process: (experiment, summary, results root)."""
    folder = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEPTHBENCH_PROFILE_PATH", str(PROFILES))
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
        loaded = load_experiment(write_experiment(folder, TINY))
        summary = run_experiment(loaded, folder / "results", InProcessExecutor())
    return loaded, summary, folder / "results"


def test_every_cell_is_stored_once_and_consolidated(tiny_run):
    loaded, summary, _ = tiny_run
    records = pd.read_parquet(summary.records)

    assert summary.run_id == default_run_id(loaded, grid(loaded))
    assert summary.cells == len(records) == 3 and summary.reused == 0
    assert sorted(records["cell_hash"]) == sorted(c.cell_hash for c in grid(loaded))
    assert (summary.run_dir / "manifest.json").is_file()
    assert sum(summary.by_status.values()) == 3


def test_the_original_cell_is_measured_at_its_own_latency(tiny_run):
    records = pd.read_parquet(tiny_run[1].records)
    [original] = records[records["method"] == "original"].itertuples()

    assert (original.status, original.budget_kind, original.budget_value) == ("ok", "fraction", 1.0)
    assert original.latency_ms_median > 0 and 0 <= original.top1 <= 100
    assert original.profile_name == "test-cpu-fast" and original.model == "mobilenet_v2-0.25"


def test_a_failed_cell_is_recorded_with_its_reason_and_the_run_goes_on(tiny_run):
    records = pd.read_parquet(tiny_run[1].records)
    table = records[records["budget_kind"] == "table"].iloc[0]
    shrink = records[records["method"] == "depthshrinker"]
    fraction = shrink[shrink["budget_kind"] == "fraction"]

    assert table["status"] == "failed"
    assert "DepthbenchError" in table["reason"] and "latency-table units" in table["reason"]
    assert fraction["status"].item() in ("ok", "infeasible")


def test_running_again_skips_every_stored_cell_and_rewrites_nothing(tiny_run):
    loaded, first, results = tiny_run
    stored = cell_files(first.run_dir)
    times = {p.name: p.stat().st_mtime_ns for p in (first.run_dir / "cells").glob("*.json")}

    again = run_experiment(loaded, results, InProcessExecutor())

    assert (again.run_id, again.cells, again.reused) == (first.run_id, 3, 3)
    assert cell_files(again.run_dir) == stored
    assert {p.name: p.stat().st_mtime_ns for p in (again.run_dir / "cells").glob("*.json")} == times


def test_a_grown_grid_under_the_same_run_id_runs_only_the_new_cells(tiny_run, tmp_path):
    loaded, first, results = tiny_run
    stored = cell_files(first.run_dir)
    two_profiles = ["test-cpu-fast", "test-torch-fast"]
    grown = experiment(tmp_path, methods=["original"], profiles=two_profiles)

    summary = run_experiment(grown, results, InProcessExecutor(), run_id=first.run_id)

    assert summary.reused == 1  # the original cell under test-cpu-fast
    assert summary.cells == 4
    assert {name: cell_files(first.run_dir)[name] for name in stored} == stored


def test_methods_that_do_not_apply_are_recorded_as_infeasible_with_the_reason(tmp_path):
    vgg = experiment(  # VGG has no blocks; one tiny training step, as its classifier is large
        tmp_path,
        model={"name": "vgg11_bn"},
        base={"train": {"steps": 1, "batch_size": 4}},
        dataset={"name": "digits", "resolution": 32},
        methods=["depthshrinker"],
        budgets=[0.8],
        profiles=["cpu-onnxruntime"],
    )

    summary = run_experiment(vgg, tmp_path / "results", InProcessExecutor())

    records = pd.read_parquet(summary.records)
    assert records["status"].tolist() == ["infeasible"]
    assert records["reason"][0].startswith("depthshrinker does not apply to vgg11_bn: it has no")


def test_a_profile_at_another_resolution_is_refused_before_anything_is_stored(tmp_path):
    wrong = experiment(tmp_path, dataset={"name": "digits", "resolution": 32})

    with pytest.raises(DepthbenchError, match="profile 'test-cpu-fast' measures at 16x16 but the"):
        run_experiment(wrong, tmp_path / "results", InProcessExecutor())

    assert not (tmp_path / "results").exists()


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    checkpoint = tmp_path / "resnet.pt"
    torch.save(build_model("resnet18", 10).state_dict(), checkpoint)
    mismatched = experiment(tmp_path, base={"checkpoint": str(checkpoint)})

    with pytest.raises(DepthbenchError, match=r"base weights .*resnet.pt do not fit mobilenet_v2"):
        run_experiment(mismatched, tmp_path / "results", InProcessExecutor())


def depthbench(*arguments: str, env: dict[str, str]) -> subprocess.Popen:
    """The real CLI in a child process, with Ctrl-C (SIGINT) handled as in a terminal: a test
    session started in the background (``nohup ... &``) ignores SIGINT, and a child would
    inherit that."""
    command = [sys.executable, "-c", "from suite.cli.app import main; main()", *arguments]
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_sigkill_mid_run_then_running_again_keeps_every_finished_cell(tmp_path):
    config = write_experiment(tmp_path, THREE_SLOW_CELLS)
    env = {
        **os.environ,
        "DEPTHBENCH_PROFILE_PATH": str(PROFILES),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    results = tmp_path / "results"
    run_dir = results / default_run_id(load_experiment(config), grid(load_experiment(config)))
    arguments = ("run", str(config), "--results", str(results))

    first = depthbench(*arguments, env=env)
    deadline = time.monotonic() + 300
    while not cell_files(run_dir):
        assert first.poll() is None, first.stdout.read().decode()
        assert time.monotonic() < deadline, "no cell was stored within 5 minutes"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = cell_files(run_dir)
    assert 1 <= len(before) < 3, "the run must be killed mid-way for this test to mean anything"
    assert not (run_dir / "records.parquet").exists()

    second = depthbench(*arguments, env=env)
    output = second.communicate(timeout=300)[0].decode()

    assert second.returncode == 0, output
    after = cell_files(run_dir)
    assert len(after) == 3
    assert {name: after[name] for name in before} == before  # kept as they were
    records = pd.read_parquet(run_dir / "records.parquet")
    assert len(records) == 3 and records["cell_hash"].is_unique
    assert f"depthbench report {run_dir}" in output
    assert f"{len(before)} were already stored" in output


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_a_run_on_a_local_ray_cluster_stores_the_same_cells(tiny_run):
    loaded, in_process, results = tiny_run
    ray_results = results.parent / "ray-results"

    with RayExecutor(node_resources={"profile:test-cpu-fast": 1}) as executor:
        summary = run_experiment(loaded, ray_results, executor)

    on_ray = pd.read_parquet(summary.records).set_index("cell_hash").sort_index()
    assert summary.run_id == in_process.run_id
    assert list(on_ray.index) == sorted(cell.cell_hash for cell in grid(loaded))
    here = pd.read_parquet(in_process.records).set_index("cell_hash").loc[on_ray.index]
    # Whether pattern A meets 0.9 of the base latency depends on the measurement; the rest does not.
    unmeasured = (here["method"] == "original") | (here["budget_kind"] == "table")
    assert list(on_ray["status"][unmeasured]) == list(here["status"][unmeasured])
    assert on_ray["environment"].notna().all()


def test_budget_kinds_round_trip_through_the_store(tiny_run):
    records = pd.read_parquet(tiny_run[1].records)

    stored = zip(records["budget_kind"], records["budget_value"], strict=True)
    assert {Budget(kind=kind, value=value) for kind, value in stored} == {
        ORIGINAL_BUDGET,
        Budget(kind="fraction", value=0.9),
        Budget(kind="table", value=1.0),
    }


def test_a_run_id_that_is_not_a_folder_name_is_refused(tmp_path):
    with pytest.raises(DepthbenchError, match="run id '../elsewhere' is not a folder name"):
        run_experiment(
            experiment(tmp_path), tmp_path / "results", InProcessExecutor(), "../elsewhere"
        )

    assert not (tmp_path / "results").exists()


@pytest.fixture
def cli():
    """The `run` command on its own typer app, as suite.cli registers it."""
    app = typer.Typer()
    app.callback()(lambda: None)  # keep `run` a subcommand, as in the full app
    cli_run.register(app)
    return lambda *arguments: CliRunner().invoke(app, list(arguments))


def test_cli_reports_a_bad_experiment_file_and_exits_1(cli, tmp_path):
    path = write_experiment(tmp_path, {**TINY, "seeds": "zero"})

    result = cli("run", str(path), "--results", str(tmp_path / "results"))

    message = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 1
    assert f"experiment {path} is invalid: - field 'seeds': Input should be a valid list" in message
    assert not (tmp_path / "results").exists()


def test_cli_refuses_an_address_without_the_ray_executor(cli, tmp_path):
    result = cli("run", str(write_experiment(tmp_path, TINY)), "--address", "10.0.0.1:6379")

    assert result.exit_code == 1
    assert "--address is the address of a Ray cluster: add --executor ray" in " ".join(
        result.output.split()
    )


@pytest.fixture
def log_lines():
    """The depthbench logger writing to a stream that is no terminal, as under CI or nohup."""
    stream = io.StringIO()
    saved = logger.handlers[:], logger.level, logger.propagate
    configure_logging("normal", stream)
    yield stream
    logger.handlers[:], logger.level, logger.propagate = saved


def test_without_a_terminal_a_run_logs_one_plain_line_per_step(tmp_path, log_lines, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the base network is trained
    two_cells = experiment(tmp_path, budgets=[{"kind": "table", "value": 1.0}])  # one fails

    summary = run_experiment(two_cells, tmp_path / "results", InProcessExecutor())

    lines = log_lines.getvalue().splitlines()
    assert "\x1b" not in log_lines.getvalue()  # plain text, no terminal codes
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING) ", line) for line in lines)
    messages = [line.split(" ", 3)[3] for line in lines]
    assert messages[0] == f"run {summary.run_id}: 2 cells, 0 already stored, 2 to run"
    training = [m for m in messages if m.startswith("train the base network: ")]
    assert training[0] == "train the base network: 1/2 (50%)"  # two steps: a line each tenth
    assert training[-1] == "train the base network: 2/2 (100%)"
    started = [m for m in messages if " started: " in m]
    assert started == [
        "cell 1/2 started: original · test-cpu-fast · seed 0",
        "cell 2/2 started: depthshrinker @ table 1 · test-cpu-fast · seed 0",
    ]
    finished = [m for m in messages if " finished: " in m]
    assert re.fullmatch(
        r"cell 1/2 finished: original · test-cpu-fast · seed 0: ok in \d+ s; cells left: 1, "
        r"ETA \d+ s",
        finished[0],
    ), finished
    assert re.fullmatch(
        r"cell 2/2 finished: depthshrinker @ table 1 · test-cpu-fast · seed 0: failed in \d+ s; "
        r"cells left: 0, ETA 0 s",
        finished[1],
    ), finished
    assert any(m.startswith("failed depthshrinker (") for m in messages)
    # the original cell's steps, each from its start to its end
    assert "original · test-cpu-fast · seed 0: fine-tune: 1/1 (100%)" in messages
    assert messages.index(started[0]) < messages.index(finished[0]) < messages.index(started[1])
