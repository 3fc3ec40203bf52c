"""Bad input and faults: each is one message naming the input and the fix, a non-zero exit, and
nothing stored lost or computed in vain. Real runs (the tiny experiment of test_runner), real files,
real processes; the one stand-in is a full disk (see test_a_full_disk_...)."""

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from suite.cli.app import app
from suite.core.plan import Plan
from suite.core.trace import trace_model
from suite.errors import DepthbenchError
from suite.measure.profiles import read_profile
from suite.measure.tables import CorruptCacheFileWarning
from suite.run.config import load_experiment
from suite.run.executors import InProcessExecutor
from suite.run.grid import default_run_id, grid, run_experiment
from suite.run.store import ResultsStore, read_consolidated
from tests.test_runner import (
    PROFILES,
    THREE_SLOW_CELLS,
    TINY,
    cell_files,
    depthbench,
    write_experiment,
)
from tests.test_store import make_record

ONE_CELL = {**TINY, "methods": ["original"], "budgets": [0.9]}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Test profiles on the profile path; a private cache per test (base networks, tables)."""
    monkeypatch.setenv("DEPTHBENCH_PROFILE_PATH", str(PROFILES))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def cli(*arguments: str):
    result = CliRunner().invoke(app, list(arguments))
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def nothing_trained(tmp_path: Path) -> bool:
    return not list((tmp_path / "cache").glob("depthbench/base/*.pt"))


# --- YAML: duplicate keys, numbers, names -------------------------------------------------------


def test_a_key_given_twice_is_refused_naming_the_key_and_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(TINY) + "budgets: [0.5]\n")
    first = yaml.safe_dump(TINY).splitlines().index("budgets:") + 1

    with pytest.raises(DepthbenchError) as caught:
        load_experiment(path)

    last = len(path.read_text().splitlines())
    assert str(caught.value) == (
        f"experiment {path}, line {last}: key 'budgets' is given twice (lines {first} and {last}); "
        "keep one of them"
    )


def test_a_profile_with_a_key_given_twice_is_refused(tmp_path):
    text = (PROFILES / "test-cpu-fast.yaml").read_text()
    path = tmp_path / "test-cpu-fast.yaml"
    path.write_text(text.replace("batch: 2\n", "batch: 2\nbatch: 64\n"))

    with pytest.raises(DepthbenchError, match=r"profile .*, line \d+: key 'batch' is given twice"):
        read_profile(path)


def test_exponents_without_a_dot_are_numbers_and_infinite_budgets_are_refused(tmp_path):
    assert load_experiment(write_experiment(tmp_path, {**TINY, "budgets": [0.9]})).budgets
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(TINY).replace("- 0.9\n", "- 9e-1\n"))
    assert load_experiment(path).budgets[0].value == 0.9  # YAML 1.1 would read text

    for written in ("1e400", ".inf", ".nan"):
        path.write_text(yaml.safe_dump(TINY).replace("- 0.9\n", f"- {written}\n"))
        with pytest.raises(DepthbenchError) as caught:
            load_experiment(path)
        assert f"experiment {path} is invalid" in str(caught.value)
        assert "field 'budgets.0.value': Input should be a finite number" in str(caught.value)


def test_a_budget_written_as_text_is_refused_saying_so(tmp_path):
    path = write_experiment(tmp_path, {**TINY, "budgets": ["0.9"]})

    with pytest.raises(DepthbenchError, match="field 'budgets': '0.9' is text: write a number"):
        load_experiment(path)


def test_the_name_defaults_to_the_file_stem_or_says_why_it_cannot(tmp_path):
    assert load_experiment(write_experiment(tmp_path, TINY, name="cafe-run")).name == "cafe-run"

    with pytest.raises(DepthbenchError) as caught:
        load_experiment(write_experiment(tmp_path, TINY, name="my run"))
    assert "field 'name': not given, and the file name 'my run' cannot stand in for it" in str(
        caught.value
    )
    assert "add a line 'name: ...' or rename the file" in str(caught.value)
    with pytest.raises(DepthbenchError, match="field 'name': 'a/b' is not usable in a run id"):
        load_experiment(write_experiment(tmp_path, {**TINY, "name": "a/b"}))


def test_an_experiment_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(yaml.safe_dump(TINY).encode() + b"# caf\xe9\n")

    with pytest.raises(DepthbenchError, match=r"latin.yaml is not UTF-8 text .*save it as UTF-8"):
        load_experiment(path)


# --- environment errors are refused before anything runs ----------------------------------------


def test_a_replay_profile_is_refused_with_the_config(tmp_path):
    path = write_experiment(tmp_path, {**TINY, "profiles": ["rtx2080ti-replay-mbv2-1.0"]})

    with pytest.raises(DepthbenchError, match="'rtx2080ti-replay-mbv2-1.0' replays an upstream"):
        load_experiment(path)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is here")
def test_a_profile_whose_backend_is_missing_stops_the_run_before_anything_runs(tmp_path):
    path = write_experiment(tmp_path, {**TINY, "profiles": ["h100-tensorrt-fp16"]})

    code, output = cli("run", str(path), "--results", str(tmp_path / "results"))

    assert code == 1
    assert "error: profile 'h100-tensorrt-fp16' needs TensorRT, which is not installed" in output
    assert not (tmp_path / "results").exists()
    assert nothing_trained(tmp_path)


def test_a_results_folder_that_cannot_be_written_is_refused_before_computing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file, not a folder")  # refuses writes for root too, unlike chmod
    loaded = load_experiment(write_experiment(tmp_path, TINY))

    with pytest.raises(
        DepthbenchError, match=f"cannot write results to {blocker}/.*give --results"
    ):
        run_experiment(loaded, blocker / "results", InProcessExecutor())

    assert nothing_trained(tmp_path)
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders regardless")
def test_a_read_only_results_folder_is_refused_before_computing(tmp_path):
    results = tmp_path / "results"
    results.mkdir(mode=0o555)
    loaded = load_experiment(write_experiment(tmp_path, TINY))

    with pytest.raises(DepthbenchError, match="cannot write results to .*Permission denied"):
        run_experiment(loaded, results, InProcessExecutor())
    assert nothing_trained(tmp_path)


def test_a_resolution_at_which_the_network_vanishes_is_refused_before_training(tmp_path):
    vgg = {**TINY, "model": {"name": "vgg11_bn"}, "methods": ["original"]}
    loaded = load_experiment(write_experiment(tmp_path, vgg))

    with pytest.raises(DepthbenchError, match="smallest resolution that works is 32"):
        run_experiment(loaded, tmp_path / "results", InProcessExecutor())
    assert nothing_trained(tmp_path)
    assert not cell_files(tmp_path / "results" / default_run_id(loaded, grid(loaded)))


def test_a_garbage_latency_cache_is_moved_aside_and_the_run_goes_on(tmp_path):
    """Also: a results folder with non-ASCII characters in its name."""
    cache = tmp_path / "cache" / "depthbench" / "latency_tables.sqlite"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"\x00garbage" * 64)
    loaded = load_experiment(write_experiment(tmp_path, ONE_CELL))
    results = tmp_path / "résultats-数据"

    with pytest.warns(CorruptCacheFileWarning, match="moved it to"):
        summary = run_experiment(loaded, results, InProcessExecutor())

    assert summary.by_status == {"ok": 1}
    assert [p.read_bytes() for p in cache.parent.glob("*.corrupt-*")] == [b"\x00garbage" * 64]
    assert read_consolidated(summary.run_dir)["status"].tolist() == ["ok"]
    assert not list((summary.run_dir / "claims").glob("*.json"))  # released


# --- the network's resolution -------------------------------------------------------------------


def test_too_small_or_non_positive_resolutions_are_refused_by_the_tracer():
    with pytest.raises(DepthbenchError) as caught:
        trace_model("vgg11_bn", resolution=16, num_classes=10)
    assert str(caught.value) == (
        "vgg11_bn at resolution 16: the feature map vanishes (shape (512, 0, 0) at position 8); "
        "the smallest resolution that works is 32"
    )
    assert trace_model("vgg11_bn", resolution=32, num_classes=10).chain.shapes[-1] == (512, 1, 1)
    with pytest.raises(DepthbenchError, match="smallest resolution that works is 32"):
        trace_model("vgg19_bn", resolution=31, num_classes=10)
    for resolution in (0, -3):
        with pytest.raises(DepthbenchError, match="resolution must be a positive whole number"):
            trace_model("resnet18", resolution=resolution)
    assert trace_model("resnet18", resolution=1, num_classes=10).chain.shapes[-1] == (512, 1, 1)


def test_inspect_at_a_vanishing_resolution_is_a_message():
    code, output = cli("inspect", "vgg11_bn", "--resolution", "16")

    assert code == 1 and "error: vgg11_bn at resolution 16: the feature map vanishes" in output


# --- plan files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"activations": [1e400], "boundaries": [50]}', "'activations' holds Infinity, but"),
        (b'{"activations": [1.5], "boundaries": [50]}', "'activations' holds 1.5, but positions"),
        (b'{"activations": [], "boundaries": [true]}', "'boundaries' holds true, but positions"),
        (b'{"activations": [NaN], "boundaries": [1]}', "not valid JSON: NaN is not a JSON number"),
        (b'{"activations": "12", "boundaries": [1]}', "'activations' must be a list of positions"),
        (b'{"boundaries": [1]}', "missing key 'activations'"),
        (b'{"activations": [\xff], "boundaries": [1]}', "is not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "is nested too deeply to be a plan"),
        (
            b'{"activations": [], "boundaries": [2], "replaced": [{"start": 0, "end": 2.0}]}',
            "'replaced' start and end are integer positions",
        ),
    ],
)
def test_a_malformed_plan_file_is_one_message_naming_it(tmp_path, content, message):
    path = tmp_path / "plan.json"
    path.write_bytes(content)

    with pytest.raises(DepthbenchError) as caught:
        Plan.load(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


# --- damaged records, claims, file modes, a full disk --------------------------------------------


def stored_run(root: Path) -> Path:
    store = ResultsStore(root)
    store.write(make_record())
    store.consolidate("run-1")
    return root / "run-1"


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign"])
def test_a_damaged_records_parquet_is_named_by_report_and_compare(tmp_path, damage):
    good = stored_run(tmp_path / "good")
    run_dir = tmp_path / "bad" / "run-1"
    run_dir.mkdir(parents=True)  # no cells/: records.parquet is all there is
    parquet = (good / "records.parquet").read_bytes()
    damaged = {
        "truncated": parquet[: len(parquet) // 2],
        "empty": b"",
        "foreign": None,
    }[damage]
    if damaged is None:
        pd.DataFrame({"x": [1, 2]}).to_parquet(run_dir / "records.parquet")
    else:
        (run_dir / "records.parquet").write_bytes(damaged)
    before = (run_dir / "records.parquet").read_bytes()

    expected = "is not a depthbench records table" if damage == "foreign" else "is not a readable"
    for arguments in (["report", str(run_dir)], ["compare", str(good), str(run_dir)]):
        code, output = cli(*arguments)
        assert code == 1, output
        assert f"error: {run_dir / 'records.parquet'} {expected}" in output
    assert (run_dir / "records.parquet").read_bytes() == before


def hold_claim(root: Path, cell_hash: str) -> subprocess.Popen:
    """A real other process that claims a cell of run-1 and then waits for its stdin to close."""
    code = (
        "import sys; from suite.run.store import ResultsStore;"
        f"assert ResultsStore(sys.argv[1]).claim('run-1', '{cell_hash}') is None;"
        "print('claimed', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert holder.stdout.readline() == "claimed\n"
    return holder


def test_a_cell_claimed_by_a_live_process_is_not_claimed_again(tmp_path):
    holder = hold_claim(tmp_path, "ab" * 8)
    try:
        claim = ResultsStore(tmp_path).claim("run-1", "ab" * 8)
        assert claim is not None and claim.pid == holder.pid
        assert ResultsStore(tmp_path).claim("run-1", "cd" * 8) is None  # other cells are free
    finally:
        holder.stdin.close()
        holder.wait()


def test_a_claim_whose_process_is_gone_is_taken_over(tmp_path):
    holder = hold_claim(tmp_path, "ab" * 8)
    holder.kill()  # dies holding the claim, as a run killed with -9 would
    holder.wait()

    store = ResultsStore(tmp_path)
    assert store.claim("run-1", "ab" * 8) is None
    claim_file = tmp_path / "run-1" / "claims" / f"{'ab' * 8}.json"
    assert json.loads(claim_file.read_text())["pid"] == os.getpid()
    store.release("run-1", "ab" * 8)
    assert not claim_file.exists()


def test_result_files_are_readable_by_others_as_the_umask_allows(tmp_path):
    previous = os.umask(0o022)
    try:
        run_dir = stored_run(tmp_path)
    finally:
        os.umask(previous)
    written = [
        *run_dir.glob("cells/*.json"),
        run_dir / "records.parquet",
        run_dir / "manifest.json",
    ]

    assert {oct(path.stat().st_mode & 0o777) for path in written} == {"0o644"}


def test_a_full_disk_stops_the_write_saying_so_and_keeps_what_is_stored(tmp_path, monkeypatch):
    """The one stand-in: the disk. ENOSPC is raised where a real full disk reports it when the
    file system allocates lazily, at the store's fsync; everything else is the real store."""
    store = ResultsStore(tmp_path)
    kept = store.write(make_record())

    def full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    message = "no space left on the device writing .*cells.*run the same command again"
    with pytest.raises(DepthbenchError, match=message):
        store.write(make_record(method="layerprune"))
    monkeypatch.undo()

    assert [path.name for path in (tmp_path / "run-1" / "cells").iterdir()] == [kept.name]


# --- real processes: two runs at once, Ctrl-C ----------------------------------------------------


def environment(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DEPTHBENCH_PROFILE_PATH": str(PROFILES),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


def wait_for(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, f"{what} within 5 minutes"
        time.sleep(0.02)


@pytest.mark.slow
def test_two_runs_of_one_experiment_compute_each_cell_once(tmp_path):
    config = write_experiment(tmp_path, TINY)
    loaded = load_experiment(config)
    run_dir = tmp_path / "results" / default_run_id(loaded, grid(loaded))
    arguments = ("run", str(config), "--results", str(tmp_path / "results"))

    first = depthbench(*arguments, env=environment(tmp_path))
    wait_for(lambda: len(list(run_dir.glob("claims/*.json"))) == 3, first, "claims")
    first.send_signal(signal.SIGSTOP)  # holds its claims, computes nothing, while the second runs
    try:
        second = depthbench(*arguments, env=environment(tmp_path))
        output = " ".join(second.communicate(timeout=300)[0].decode().split())
    finally:
        first.send_signal(signal.SIGCONT)
    first_output = first.communicate(timeout=300)[0].decode()

    assert second.returncode == 0, output
    assert f"skipped 3 cells another run is computing now (pid {first.pid} on" in output
    assert first.returncode == 0, first_output
    assert len(cell_files(run_dir)) == 3 and not list(run_dir.glob("claims/*.json"))
    assert "0 were already stored" in first_output


@pytest.mark.slow
def test_ctrl_c_stops_a_run_with_a_message_and_keeps_finished_cells(tmp_path):
    config = write_experiment(tmp_path, THREE_SLOW_CELLS)
    loaded = load_experiment(config)
    run_dir = tmp_path / "results" / default_run_id(loaded, grid(loaded))
    arguments = ("run", str(config), "--results", str(tmp_path / "results"))

    run = depthbench(*arguments, env=environment(tmp_path))
    wait_for(lambda: cell_files(run_dir), run, "no cell was stored")
    run.send_signal(signal.SIGINT)
    output = " ".join(run.communicate(timeout=300)[0].decode().split())
    kept = cell_files(run_dir)

    assert run.returncode == 1, output
    assert "error: interrupted: the cells stored so far are kept in" in output
    assert "run the same command again to compute the rest" in output
    assert 1 <= len(kept) < 3, "the run must be interrupted mid-way for this test to mean anything"
    assert not list(run_dir.glob("claims/*.json"))  # released: the next run computes the rest

    again = depthbench(*arguments, env=environment(tmp_path))
    again_output = again.communicate(timeout=300)[0].decode()
    assert again.returncode == 0, again_output
    assert {name: cell_files(run_dir)[name] for name in kept} == kept
    assert len(cell_files(run_dir)) == 3
