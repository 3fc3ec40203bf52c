"""Table methods: the cache key, the copies graph, the slope fit, the additivity arithmetic.

Real ONNX Runtime and a real SQLite file; no assertion depends on how fast anything runs.
"""

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from typer.testing import CliRunner

from suite.cli.app import app
from suite.core.chain import Chain, ConvSpec, Unit
from suite.core.export import write_conv_onnx
from suite.core.trace import trace_model
from suite.errors import DepthbenchError
from suite.measure.profiles import read_profile
from suite.measure.tables import (
    Additivity,
    AdditivityCheck,
    SegmentLatency,
    TableCache,
    build_table,
    cache_key,
    fit_slope,
    outside_chain_ms,
    segment_signature,
)
from suite.run.report import table_additivity_table

PROFILES = Path(__file__).parent / "data" / "profiles"


@pytest.fixture(scope="module")
def standalone():
    return read_profile(PROFILES / "test-cpu-fast.yaml")


@pytest.fixture(scope="module")
def sloped(standalone):
    return standalone.model_copy(update={"table_method": "slope"})


@pytest.fixture(scope="module")
def chain() -> Chain:
    specs = [ConvSpec(3, 8, 3, 2, 1, 1), ConvSpec(8, 8, 3, 1, 1, 8), ConvSpec(8, 16, 1, 1, 0, 1)]
    units = tuple(Unit(p, spec, "relu") for p, spec in enumerate(specs, start=1))
    shapes = ((3, 16, 16), (8, 8, 8), (8, 8, 8), (16, 8, 8))
    return Chain("tiny", units, (), (), "relu", 16, shapes)


def test_table_method_is_not_in_the_profile_hash(standalone, sloped):
    # end-to-end numbers do not depend on it; the table cache keys on it instead
    assert sloped.hash == standalone.hash


def test_a_replay_profile_refuses_a_table_method(tmp_path):
    replay = Path(__file__).parents[1] / "hardware_profiles" / "rtx2080ti-replay-mbv2-1.0.yaml"
    path = tmp_path / "rtx2080ti-replay-mbv2-1.0.yaml"
    path.write_text(replay.read_text() + "table_method: slope\n")

    with pytest.raises(DepthbenchError, match="remove 'table_method'"):
        read_profile(path)


def test_cache_key_separates_methods_and_keeps_standalone_keys(chain, tmp_path):
    signature = segment_signature(chain, 0, 1, batch=2)
    cache = TableCache(tmp_path / "cache.sqlite")
    cache.write("p", cache_key(signature, "standalone"), SegmentLatency(1.0, 0.1, 5, True))
    cache.write("p", cache_key(signature, "slope"), SegmentLatency(0.5, 0.1, 5, True, 0.25))

    assert cache_key(signature, "standalone") == signature.key  # rows of older caches still serve
    found, corrupt = cache.read("p", [signature.key])
    assert found == {signature.key: SegmentLatency(1.0, 0.1, 5, True)} and corrupt == []
    sloped_key = cache_key(signature, "slope")
    found, _ = cache.read("p", [sloped_key])
    assert found == {sloped_key: SegmentLatency(0.5, 0.1, 5, True, 0.25)}


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
    key = cache_key(segment_signature(chain, 0, 1, batch=2), "slope")
    TableCache(path).write("p", key, SegmentLatency(0.5, 0.1, 5, True, 0.25))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE segment_latency SET overhead_ms = 0.0")

    found, corrupt = TableCache(path).read("p", [key])

    assert found == {} and corrupt == [key]


@pytest.mark.parametrize("activation", ["relu6", "relu", None])
def test_the_copies_graph_is_the_segment_applied_by_each_copy(tmp_path, activation):
    """Verify the construction: output k is conv k (its own weights) + activation of the input,
    recomputed by torch from the file's weights; copy 0 is the single-segment model."""
    spec, shape = ConvSpec(4, 6, 3, 2, 1, 2), (2, 4, 9, 9)
    copies = write_conv_onnx(spec, shape, activation, tmp_path / "copies.onnx", copies=4)
    single = write_conv_onnx(spec, shape, activation, tmp_path / "single.onnx")
    image = np.random.default_rng(1).standard_normal(shape).astype(np.float32)

    outputs = _run(copies, image)

    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(copies)).graph.initializer}
    assert len(outputs) == 4
    activate = {"relu6": F.relu6, "relu": F.relu, None: lambda x: x}[activation]
    for k, output in enumerate(outputs):
        expected = activate(
            F.conv2d(
                torch.from_numpy(image),
                torch.tensor(weights[f"weight_{k}"]),
                torch.tensor(weights[f"bias_{k}"]),
                stride=2,
                padding=1,
                groups=2,
            )
        )
        np.testing.assert_allclose(output, expected.numpy(), rtol=1e-4, atol=1e-4)
    assert not np.array_equal(outputs[0], outputs[1])  # each copy has weights of its own
    np.testing.assert_array_equal(outputs[0], _run(single, image)[0])


def _run(path: Path, image: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: image})


def test_the_slope_fit_recovers_a_known_line():
    copies = [1, 2, 4, 8]

    assert fit_slope(copies, [0.005 + 0.002 * n for n in copies]) == pytest.approx((0.002, 0.005))
    # noise that cancels in least squares (it sums to 0 and is orthogonal to the centred copies)
    noise = [0.0006, -0.0015, 0.0012, -0.0003]
    assert sum(noise) == pytest.approx(0) and sum(
        (n - 3.75) * e for n, e in zip(copies, noise, strict=True)
    ) == pytest.approx(0)
    noisy = [0.005 + 0.002 * n + e for n, e in zip(copies, noise, strict=True)]
    assert fit_slope(copies, noisy) == pytest.approx((0.002, 0.005))


def test_a_slope_table_stores_its_method_and_rows(chain, sloped, tmp_path):
    cache = TableCache(tmp_path / "cache.sqlite")

    table = build_table(chain, sloped, cache=cache)

    assert table.method == "slope" and isinstance(table.overhead_ms, float)
    assert table.measured == len(table.latency_ms) and all(
        ms >= 0 for ms in table.latency_ms.values()
    )
    with sqlite3.connect(cache.path) as db:
        rows = db.execute(
            "SELECT signature, median_ms, overhead_ms FROM segment_latency"
        ).fetchall()
    assert len(rows) == len(table.latency_ms)
    for signature, median_ms, overhead_ms in rows:
        assert json.loads(signature)["table_method"] == "slope"
        assert isinstance(overhead_ms, float)  # the fit's intercept (noise may make it < 0)
        segment = tuple(json.loads(signature)["segment"]["input_shape"])
        assert median_ms in table.latency_ms.values() and segment in chain.shapes
    again = build_table(chain, sloped, cache=cache)
    assert again.cached == len(table.latency_ms) and again.latency_ms == table.latency_ms
    assert again.overhead_ms == table.overhead_ms


def test_a_standalone_build_does_not_read_slope_rows(chain, standalone, sloped, tmp_path):
    cache = TableCache(tmp_path / "cache.sqlite")
    build_table(chain, sloped, cache=cache)

    table = build_table(chain, standalone, cache=cache)

    assert table.cached == 0 and table.measured == len(table.latency_ms)
    assert table.method == "standalone" and table.overhead_ms is None


def test_additivity_adds_the_outside_part_to_the_segments():
    check = Additivity(segment_sum_ms=8.0, end_to_end_ms=10.0, outside_ms=1.0)

    assert check.predicted_ms == 9.0
    assert check.relative_error == pytest.approx(-0.1)


def test_the_additivity_check_reports_the_median_run_and_an_interval_around_it():
    runs = tuple(Additivity(s, 10.0, 1.0) for s in (8.0, 10.0, 9.0))
    check = AdditivityCheck("slope", runs)

    assert check.median_run is runs[2] and check.relative_error == pytest.approx(0.0)
    low, high = check.interval
    assert -1 < low <= -0.1 and 0.1 <= high  # contains every run's error (3 runs)


def test_the_outside_part_is_measured_with_the_tables_method(sloped):
    resnet = trace_model("resnet18", num_classes=10, resolution=16)

    assert outside_chain_ms(resnet, sloped) > 0


def test_the_report_lists_the_additivity_the_plans_recorded_one_row_per_table():
    table_fields = {"table_method": "slope", "segment_sum_ms": 1.0, "outside_ms": 0.1}

    def plan(base_ms: float) -> str:
        screened = {"base_latency_ms": base_ms, "relative_error": 1.1 / base_ms - 1}
        return json.dumps({"meta": {"table_additivity": table_fields | screened}})

    records = pd.DataFrame(
        {
            "model": ["m"] * 5,
            "dataset": ["d"] * 5,
            # one table: a cell, a cell that shared its screening, two more screenings, no plan
            "plan": [plan(1.0), plan(1.0), plan(1.1), plan(1.375), None],
        }
    )

    table = table_additivity_table(records)

    assert table.to_dict("records") == [
        {
            "model": "m",
            "dataset": "d",
            **table_fields,
            "base_latency_ms": 1.1,
            "relative_error": pytest.approx(0.0),
            "relative_error_min": pytest.approx(-0.2),
            "relative_error_max": pytest.approx(0.1),
            "base_screenings": 3,
        }
    ]


def test_depthbench_table_prints_the_method_and_the_additivity_interval(tmp_path):
    result = CliRunner().invoke(
        app,
        ["table", "resnet18", "-p", str(PROFILES / "test-cpu-fast.yaml"), "--num-classes", "10"]
        + ["--cache", str(tmp_path / "cache.sqlite"), "--additivity-repeats", "2"],
    )

    output = " ".join(result.output.split())
    assert result.exit_code == 0, output
    assert "table method standalone" in output
    assert re.search(
        r"additivity \(standalone table, 2 fresh measurements\): .* error [+-]\d", output
    )
    assert re.search(r"95% CI [+-][\d.]+% \.\. [+-][\d.]+%", output)
