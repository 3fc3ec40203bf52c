"""The trtexec summary parser, on real trtexec output from public issues (tests/data/README.md)."""

from pathlib import Path

import numpy as np
import pytest

from suite.errors import DepthbenchError
from suite.measure.backends.trtexec import gpu_compute_samples, parse_summary, parse_version

DATA = Path(__file__).parent / "data"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_tensorrt_10_summary_with_three_percentiles():
    summary = parse_summary(read("trtexec_tensorrt_issue4177.txt"))

    gpu = summary.gpu_compute
    assert (gpu.min_ms, gpu.max_ms, gpu.mean_ms, gpu.median_ms) == (
        5.34595,
        13.3388,
        7.58404,
        7.14139,
    )
    assert gpu.percentiles_ms == {90.0: 10.2881, 95.0: 10.8175, 99.0: 12.9485}
    assert summary.metrics["Latency"].median_ms == 7.16092
    assert summary.metrics["Enqueue Time"].percentiles_ms[99.0] == 14.1848
    assert summary.metrics["H2D Latency"].min_ms == 0.0065918
    assert summary.metrics["D2H Latency"].max_ms == 0.110596
    assert summary.throughput_qps == 130.298
    assert summary.total_host_walltime_s == 3.00082
    assert summary.total_gpu_compute_time_s == 2.96536
    assert summary.tensorrt_version is None
    assert summary.warnings == []


def test_summary_after_trace_lines_and_without_gpu_total():
    summary = parse_summary(read("trtexec_ptlflow_issue65.txt"))

    assert set(summary.metrics) == {
        "Latency",
        "Enqueue Time",
        "H2D Latency",
        "GPU Compute Time",
        "D2H Latency",
    }
    assert summary.gpu_compute.median_ms == 30.333
    assert summary.gpu_compute.percentiles_ms[95.0] == 30.4156
    assert summary.throughput_qps == 32.7261
    assert summary.total_host_walltime_s == 3.08622
    assert summary.total_gpu_compute_time_s is None


def test_trtexec_diagnostics_become_warnings():
    summary = parse_summary(read("trtexec_sam3_issue26.txt"))

    assert summary.gpu_compute.mean_ms == 140.98
    assert summary.throughput_qps is None
    assert summary.warnings == [
        "Throughput may be bound by Enqueue Time rather than GPU Compute and the GPU may be "
        "under-utilized."
    ]


def test_tensorrt_8_single_percentile_and_banner_version():
    text = read("trtexec_meta_tegra_pr952.txt")
    summary = parse_summary(text)

    assert summary.gpu_compute.median_ms == 0.388443
    assert summary.gpu_compute.percentiles_ms == {99.0: 0.393188}
    assert summary.throughput_qps == 41087.7
    assert summary.tensorrt_version == "8.4.0"


def test_tensorrt_10_banner_version():
    assert parse_version(read("trtexec_tensorrt_issue4036_banner.txt")) == "10.2.0"


def test_output_without_a_summary_is_an_error():
    with pytest.raises(DepthbenchError, match="GPU Compute Time"):
        parse_summary(read("trtexec_tensorrt_issue4036_banner.txt"))


def test_exported_times_drop_warmup_queries():
    # --exportTimes keys as written by exportJSONTrace in TensorRT's sampleReporting.cpp
    trace = [
        {"startComputeMs": start, "computeMs": compute}
        for start, compute in [(0.0, 9.0), (150.0, 8.0), (200.0, 7.5), (210.0, 7.25)]
    ]
    np.testing.assert_array_equal(gpu_compute_samples(trace, warmup_ms=200.0), [7.5, 7.25])
