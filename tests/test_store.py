"""The results store: atomic, never-overwriting cell files, Parquet consolidation, concurrency."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock
from pydantic import ValidationError

from suite.core.budget import Budget
from suite.errors import DepthbenchError
from suite.provenance import code_version, config_hash
from suite.run.store import CellRecord, ResultsStore, read_consolidated

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def make_record(**changes) -> CellRecord:
    fields = {
        "run_id": "run-1",
        "cell_hash": config_hash(changes.get("method", "dp_depth"))[:16],
        "model": "mobilenet_v2-0.5",
        "dataset": "digits",
        "method": "dp_depth",
        "method_config": {"prec": 20},
        "budget": Budget(kind="fraction", value=0.8),
        "seed": 0,
        "profile_name": "cpu-onnxruntime",
        "profile_hash": "f" * 64,
        "status": "ok",
        "fidelity": "full",
        "latency_ms_median": 1.25,
        "latency_ms_ci_low": 1.2,
        "latency_ms_ci_high": 1.3,
        "latency_samples": 300,
        "stable": True,
        "top1": 97.5,
        "top5": 99.9,
        "loss": 0.08,
        "params": 700_000,
        "macs": 6_000_000,
        "depth": 30,
        "activations": 20,
        "plan": {"activations": [3, 7], "boundaries": [3, 5, 7]},
        "environment": {"onnxruntime": "1.23"},
        "code_version": "abc123",
    }
    return CellRecord(**(fields | changes))


def test_config_hash_is_canonical_and_stable():
    config = {"b": [1, 2.5], "a": {"y": "x", "z": None}}
    assert config_hash(config) == config_hash({"a": {"z": None, "y": "x"}, "b": (1, 2.5)})
    assert config_hash(config) != config_hash({"b": [1, 2.5], "a": {"y": "x", "z": 0}})
    canonical = '{"a":{"y":"x","z":null},"b":[1,2.5]}'
    assert config_hash(config) == hashlib.sha256(canonical.encode()).hexdigest()
    assert config_hash(Budget(kind="ms", value=2.0)) == config_hash({"kind": "ms", "value": 2.0})


def test_config_hash_refuses_what_json_cannot_hold():
    with pytest.raises(DepthbenchError, match="cannot hash"):
        config_hash({"lr": float("nan")})


def test_unmeasured_cells_must_say_why():
    with pytest.raises(ValidationError, match="needs a reason"):
        make_record(status="infeasible")
    assert make_record(status="infeasible", reason="no plan meets 0.1 ms").reason


def test_a_written_cell_reads_back_unchanged(tmp_path):
    store = ResultsStore(tmp_path)
    record = make_record()
    path = store.write(record)
    assert path == tmp_path / "run-1" / "cells" / f"{record.cell_hash}.json"
    assert store.has("run-1", record.cell_hash) and not store.has("run-1", "0" * 16)
    assert CellRecord.model_validate_json(path.read_text()) == record
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    row = store.records("run-1").iloc[0]
    assert (row["budget_kind"], row["budget_value"]) == ("fraction", 0.8)
    assert json.loads(row["plan"]) == record.plan
    assert row["top1"] == 97.5 and row["params"] == 700_000 and row["stable"]


def test_a_stored_cell_is_never_overwritten_with_different_content(tmp_path):
    store = ResultsStore(tmp_path)
    path = store.write(make_record())
    stored = path.read_bytes()
    store.write(make_record())  # the same result again (a later created_at): accepted, no change
    assert path.read_bytes() == stored
    with pytest.raises(DepthbenchError, match="different result.*it was kept"):
        store.write(make_record(top1=12.0))
    assert path.read_bytes() == stored
    assert len(list(path.parent.iterdir())) == 1


def test_a_corrupt_cell_is_named_and_kept(tmp_path):
    store = ResultsStore(tmp_path)
    store.write(make_record())
    corrupt = tmp_path / "run-1" / "cells" / "0123456789abcdef.json"
    corrupt.write_text('{"run_id": "run-1", "cell_ha')
    with pytest.raises(DepthbenchError, match="0123456789abcdef.json"):
        store.records("run-1")
    with pytest.raises(DepthbenchError, match="0123456789abcdef.json"):
        store.consolidate("run-1")
    assert corrupt.read_text() == '{"run_id": "run-1", "cell_ha'
    assert not (tmp_path / "run-1" / "records.parquet").exists()


def test_a_cell_file_under_another_name_is_corrupt(tmp_path):
    store = ResultsStore(tmp_path)
    path = store.write(make_record())
    os.rename(path, path.with_name("00000000aaaaaaaa.json"))
    with pytest.raises(DepthbenchError, match="not the one its name says"):
        store.records("run-1")


def test_consolidate_writes_parquet_equal_to_the_cells_and_a_manifest(tmp_path):
    store = ResultsStore(tmp_path)
    store.write(make_record())
    store.write(make_record(method="layerprune", top5=None, plan=None))
    store.write(make_record(method="deeprebirth", status="failed", reason="diverged", top1=None))
    parquet = store.consolidate("run-1", run_config={"model": "mobilenet_v2"})
    from_parquet = pd.read_parquet(parquet)
    cells = store.records("run-1")
    pd.testing.assert_frame_equal(from_parquet[cells.columns], cells)
    # no session was measured: the cell-time latency is the final one, and says so
    assert list(from_parquet["latency_source"]) == ["cell"] * 3
    assert from_parquet["cell_latency_ms_median"].equals(from_parquet["latency_ms_median"])
    assert from_parquet["top5"].isna().sum() == 1 and from_parquet["plan"].isna().sum() == 1
    manifest = json.loads((tmp_path / "run-1" / "manifest.json").read_text())
    assert manifest["cells"] == 3
    assert manifest["cells_by_status"] == {"ok": 2, "failed": 1}
    assert manifest["run_configs"] == [{"model": "mobilenet_v2"}]
    store.consolidate("run-1")  # no configuration given: the stored ones are kept
    store.consolidate("run-1", run_config={"model": "resnet18"})  # another experiment: added
    store.consolidate("run-1", run_config={"model": "mobilenet_v2"})  # a known one: not repeated
    manifest = json.loads((tmp_path / "run-1" / "manifest.json").read_text())
    assert manifest["run_configs"] == [{"model": "mobilenet_v2"}, {"model": "resnet18"}]
    pd.testing.assert_frame_equal(read_consolidated(tmp_path / "run-1"), from_parquet)


def test_unknown_runs_are_clear_errors(tmp_path):
    with pytest.raises(DepthbenchError, match="has no results"):
        ResultsStore(tmp_path).records("nope")
    with pytest.raises(DepthbenchError, match="records.parquet does not exist"):
        read_consolidated(tmp_path / "nope")


def test_code_version_names_a_commit_or_the_package_version():
    version = code_version()
    assert version == metadata.version("depthbench") or len(version.removesuffix("+dirty")) == 40


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from suite.core.budget import Budget
    from suite.provenance import config_hash
    from suite.run.store import CellRecord, ResultsStore

    root, who = Path(sys.argv[1]), sys.argv[2]
    store = ResultsStore(root)
    names = [f"{who}-{i}" for i in range(25)] + [f"shared-{i}" for i in range(5)]
    for name in names:
        store.write(CellRecord(
            run_id="shared-run", cell_hash=config_hash(name)[:16], model="m", dataset="digits",
            method=name, budget=Budget(kind="fraction", value=0.5), seed=0, profile_name="p",
            profile_hash="h", status="ok", fidelity="smoke", top1=50.0,
            latency_ms_median=1.0, code_version="test",
        ))
        store.consolidate("shared-run", run_config={"writer": who})
    """
)


def test_two_processes_writing_one_run_lose_nothing(tmp_path):
    environment = os.environ | {"PYTHONPATH": str(PROJECT_ROOT)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), who], env=environment)
        for who in ("a", "b")
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    expected = {f"{who}-{i}" for who in "ab" for i in range(25)} | {f"shared-{i}" for i in range(5)}
    assert set(ResultsStore(tmp_path).records("shared-run")["method"]) == expected
    consolidated = read_consolidated(tmp_path / "shared-run")
    assert sorted(consolidated["method"]) == sorted(expected)  # the last consolidation saw all
    manifest = json.loads((tmp_path / "shared-run" / "manifest.json").read_text())
    assert manifest["cells"] == len(expected)
    assert sorted(c["writer"] for c in manifest["run_configs"]) == [
        "a",
        "b",
    ]  # merged, not replaced


CONSOLIDATOR = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from suite.run.store import ResultsStore

    store = ResultsStore(Path(sys.argv[1]))
    print("ready", flush=True)
    store.consolidate("run-1")
    """
)


def test_a_consolidation_waits_while_another_process_holds_the_run_lock(tmp_path):
    ResultsStore(tmp_path).write(make_record())
    run_dir = tmp_path / "run-1"
    environment = os.environ | {"PYTHONPATH": str(PROJECT_ROOT)}
    with FileLock(run_dir / ".consolidate.lock"):  # what a concurrent consolidation holds
        consolidator = subprocess.Popen(
            [sys.executable, "-c", CONSOLIDATOR, str(tmp_path)],
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert consolidator.stdout.readline() == "ready\n"
        # Blocked on the lock, it never finishes here; without the lock it would within seconds.
        with pytest.raises(subprocess.TimeoutExpired):
            consolidator.wait(timeout=5)
        assert not (run_dir / "records.parquet").exists()
    assert consolidator.wait(timeout=120) == 0
    assert len(read_consolidated(run_dir)) == 1
