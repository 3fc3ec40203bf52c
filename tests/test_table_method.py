"""Table methods: the cache key, the identity model, the subtraction, the additivity arithmetic.

Real ONNX Runtime and a real SQLite file; no assertion depends on how fast anything runs.
"""

import hashlib
import json
import sqlite3
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from suite.core.chain import Chain, ConvSpec, Unit
from suite.core.export import write_identity_onnx
from suite.core.trace import trace_model
from suite.errors import DepthbenchError
from suite.measure.harness import LatencyResult, summarize
from suite.measure.profiles import read_profile
from suite.measure.tables import (
    Additivity,
    AdditivityCheck,
    SegmentLatency,
    TableCache,
    build_table,
    cache_key,
    net_latency,
    outside_chain_ms,
    segment_signature,
)
from suite.run.report import table_additivity_table

PROFILES = Path(__file__).parent / "data" / "profiles"


@pytest.fixture(scope="module")
def standalone():
    return read_profile(PROFILES / "test-cpu-fast.yaml")


@pytest.fixture(scope="module")
def subtracted(standalone):
    return standalone.model_copy(update={"table_method": "overhead-subtracted"})


@pytest.fixture(scope="module")
def chain() -> Chain:
    specs = [ConvSpec(3, 8, 3, 2, 1, 1), ConvSpec(8, 8, 3, 1, 1, 8), ConvSpec(8, 16, 1, 1, 0, 1)]
    units = tuple(Unit(p, spec, "relu") for p, spec in enumerate(specs, start=1))
    shapes = ((3, 16, 16), (8, 8, 8), (8, 8, 8), (16, 8, 8))
    return Chain("tiny", units, (), (), "relu", 16, shapes)


def _result(median_ms: float, stable: bool = True) -> LatencyResult:
    samples = np.array([median_ms * 0.9, median_ms, median_ms * 1.1])
    return LatencyResult(
        **asdict(summarize([samples])),
        samples=samples,
        stable=stable,
        attempts=1,
        environment={},
        profile_hash="h",
    )


def test_table_method_is_not_in_the_profile_hash(standalone, subtracted):
    # end-to-end numbers do not depend on it; the table cache keys on it instead
    assert subtracted.hash == standalone.hash


def test_a_replay_profile_refuses_a_table_method(tmp_path):
    replay = Path(__file__).parents[1] / "hardware_profiles" / "rtx2080ti-replay-mbv2-1.0.yaml"
    path = tmp_path / "rtx2080ti-replay-mbv2-1.0.yaml"
    path.write_text(replay.read_text() + "table_method: overhead-subtracted\n")

    with pytest.raises(DepthbenchError, match="remove 'table_method'"):
        read_profile(path)


def test_cache_key_separates_methods_and_keeps_standalone_keys(chain, tmp_path):
    signature = segment_signature(chain, 0, 1, batch=2)
    cache = TableCache(tmp_path / "cache.sqlite")
    cache.write("p", cache_key(signature, "standalone"), SegmentLatency(1.0, 0.1, 5, True))
    cache.write(
        "p", cache_key(signature, "overhead-subtracted"), SegmentLatency(0.5, 0.1, 5, True, 0.25)
    )

    assert cache_key(signature, "standalone") == signature.key  # rows of older caches still serve
    found, corrupt = cache.read("p", [signature.key])
    assert found == {signature.key: SegmentLatency(1.0, 0.1, 5, True)} and corrupt == []
    subtracted_key = cache_key(signature, "overhead-subtracted")
    found, _ = cache.read("p", [subtracted_key])
    assert found == {subtracted_key: SegmentLatency(0.5, 0.1, 5, True, 0.25)}


def test_a_cache_from_before_table_methods_keeps_its_rows(chain, tmp_path):
    path = tmp_path / "old.sqlite"
    key = segment_signature(chain, 0, 1, batch=2).key
    content = ["p", key, 1.5, 0.1, 5, 1, "2025-01-01T00:00:00+00:00"]
    checksum = hashlib.sha256(json.dumps(content).encode()).hexdigest()  # the old row checksum
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE segment_latency ( profile_hash TEXT NOT NULL, signature TEXT NOT NULL,"
            " median_ms REAL, cov REAL, n INTEGER, stable INTEGER, measured_at TEXT,"
            " checksum TEXT, PRIMARY KEY (profile_hash, signature))"
        )
        db.execute(
            "INSERT INTO segment_latency VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*content, checksum)
        )

    found, corrupt = TableCache(path).read("p", [key])

    assert found == {key: SegmentLatency(1.5, 0.1, 5, True)} and corrupt == []


def test_a_tampered_overhead_fails_the_row_checksum(chain, tmp_path):
    path = tmp_path / "cache.sqlite"
    key = cache_key(segment_signature(chain, 0, 1, batch=2), "overhead-subtracted")
    TableCache(path).write("p", key, SegmentLatency(0.5, 0.1, 5, True, 0.25))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE segment_latency SET overhead_ms = 0.0")

    found, corrupt = TableCache(path).read("p", [key])

    assert found == {} and corrupt == [key]


def test_the_identity_model_returns_its_input_unchanged(tmp_path):
    shape = (2, 8, 5, 5)
    session = ort.InferenceSession(str(write_identity_onnx(shape, tmp_path / "identity.onnx")))
    image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    (output,) = session.run(None, {session.get_inputs()[0].name: image})

    np.testing.assert_array_equal(output, image)


def test_net_latency_subtracts_the_overhead_and_floors_at_zero():
    assert net_latency(_result(3.0), None) == SegmentLatency(3.0, _result(3.0).cov, 3, True)
    net = net_latency(_result(3.0), _result(0.5))
    assert (net.median_ms, net.overhead_ms, net.stable) == (pytest.approx(2.5), 0.5, True)
    assert net_latency(_result(0.4), _result(0.5)).median_ms == 0.0
    assert not net_latency(_result(3.0), _result(0.5, stable=False)).stable


def test_an_overhead_subtracted_table_stores_its_method_and_rows(chain, subtracted, tmp_path):
    cache = TableCache(tmp_path / "cache.sqlite")

    table = build_table(chain, subtracted, cache=cache)

    assert table.method == "overhead-subtracted" and table.overhead_ms > 0
    assert table.measured == len(table.latency_ms) and all(
        ms >= 0 for ms in table.latency_ms.values()
    )
    with sqlite3.connect(cache.path) as db:
        rows = db.execute(
            "SELECT signature, median_ms, overhead_ms FROM segment_latency"
        ).fetchall()
    assert len(rows) == len(table.latency_ms)
    for signature, median_ms, overhead_ms in rows:
        assert json.loads(signature)["table_method"] == "overhead-subtracted"
        assert overhead_ms > 0
        segment = tuple(json.loads(signature)["segment"]["input_shape"])
        assert median_ms in table.latency_ms.values() and segment in chain.shapes
    again = build_table(chain, subtracted, cache=cache)
    assert again.cached == len(table.latency_ms) and again.latency_ms == table.latency_ms
    assert again.overhead_ms == table.overhead_ms


def test_a_standalone_build_does_not_read_overhead_subtracted_rows(
    chain, standalone, subtracted, tmp_path
):
    cache = TableCache(tmp_path / "cache.sqlite")
    build_table(chain, subtracted, cache=cache)

    table = build_table(chain, standalone, cache=cache)

    assert table.cached == 0 and table.measured == len(table.latency_ms)
    assert table.method == "standalone" and table.overhead_ms is None


def test_additivity_adds_the_outside_part_to_the_segments():
    check = Additivity(segment_sum_ms=8.0, end_to_end_ms=10.0, outside_ms=1.0)

    assert check.predicted_ms == 9.0
    assert check.relative_error == pytest.approx(-0.1)


def test_the_additivity_check_reports_the_median_run_and_an_interval_around_it():
    runs = tuple(Additivity(s, 10.0, 1.0) for s in (8.0, 10.0, 9.0))
    check = AdditivityCheck("overhead-subtracted", runs)

    assert check.median_run is runs[2] and check.relative_error == pytest.approx(0.0)
    low, high = check.interval
    assert -1 < low <= -0.1 and 0.1 <= high  # contains every run's error (3 runs)


def test_the_outside_part_is_measured_with_the_tables_method(subtracted):
    resnet = trace_model("resnet18", num_classes=10, resolution=16)

    assert outside_chain_ms(resnet, subtracted) > 0


def test_the_report_lists_the_additivity_the_plans_recorded():
    recorded = {"table_method": "overhead-subtracted", "segment_sum_ms": 1.0, "outside_ms": 0.1}
    recorded |= {"base_latency_ms": 1.2, "relative_error": 1.1 / 1.2 - 1}
    plan = json.dumps({"meta": {"table_additivity": recorded}})
    records = pd.DataFrame(
        {
            "model": ["m", "m", "m"],
            "dataset": ["d", "d", "d"],
            "plan": [plan, plan, None],  # two cells on one table, one without a plan
        }
    )

    table = table_additivity_table(records)

    assert table.to_dict("records") == [{"model": "m", "dataset": "d", **recorded}]
