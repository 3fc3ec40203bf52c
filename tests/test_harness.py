"""The harness: statistics against brute force, stop rule, stability gate, measure() end to end."""

import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from torch import nn
from typer.testing import CliRunner

from suite.cli.measure import register
from suite.core.chain import ConvSpec
from suite.core.export import export_onnx, write_conv_onnx
from suite.errors import DepthbenchError
from suite.measure.backends import run_protocol
from suite.measure.harness import (
    UnstableMeasurementWarning,
    measure,
    median_order_interval,
    session_interval,
    stability_gate,
    summarize,
)
from suite.measure.profiles import load_profile, read_profile
from suite.run.store import CellRecord

TEST_PROFILE = Path(__file__).parent / "data" / "profiles" / "test-cpu-fast.yaml"


@pytest.fixture
def profile():
    return read_profile(TEST_PROFILE)


@pytest.fixture
def conv_onnx(tmp_path) -> Path:
    return write_conv_onnx(
        ConvSpec(3, 8, 3, 1, 1, 1), (2, 3, 16, 16), "relu6", tmp_path / "conv.onnx"
    )


def linear_percentile(values: list[float], q: float) -> float:
    """Percentile by linear interpolation between closest ranks, written out by hand."""
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@given(st.lists(st.floats(0.01, 1000.0), min_size=2, max_size=60))
@settings(max_examples=60, deadline=None)
def test_statistics_match_brute_force(values):
    stats = summarize([np.array(values)])

    assert stats.n == len(values)
    assert stats.median_ms == pytest.approx(statistics.median(values))
    assert stats.mean_ms == pytest.approx(statistics.fmean(values))
    for q, got in [(90, stats.p90_ms), (95, stats.p95_ms), (99, stats.p99_ms)]:
        assert got == pytest.approx(linear_percentile(values, q))
    iqr = linear_percentile(values, 75) - linear_percentile(values, 25)
    assert stats.iqr_ms == pytest.approx(iqr, abs=1e-9)
    assert stats.cov == pytest.approx(
        statistics.stdev(values) / statistics.fmean(values), abs=1e-12
    )
    assert stats.robust_cov == pytest.approx(iqr / 1.349 / statistics.median(values), abs=1e-9)
    assert min(values) <= stats.ci_low_ms <= stats.ci_high_ms <= max(values)


@pytest.mark.parametrize(("n", "low_rank", "high_rank"), [(10, 2, 9), (100, 40, 61), (5, 1, 5)])
def test_one_session_interval_is_the_textbook_order_statistic_interval(n, low_rank, high_rank):
    """Known values: the distribution-free 95% interval of a median is x_(2)..x_(9) for n = 10
    and x_(40)..x_(61) for n = 100 (Conover, Practical Nonparametric Statistics, table A3);
    for n = 5 the whole range is all there is."""
    samples = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))  # x_(i) = i

    stats = summarize([samples])

    assert (stats.ci_low_ms, stats.ci_high_ms) == (low_rank, high_rank)
    assert median_order_interval(samples) == (low_rank, high_rank)


def test_one_session_interval_covers_the_true_median_at_least_95_percent_of_the_time():
    """2000 sessions of 400 lognormal(1, 0.2) samples, whose true median is e."""
    rng = np.random.default_rng(1)
    intervals = [median_order_interval(rng.lognormal(1.0, 0.2, size=400)) for _ in range(2000)]

    coverage = np.mean([low < np.e < high for low, high in intervals])

    assert 0.94 <= coverage <= 0.985  # >= 95% by construction, 2000 draws: +-1 pp of noise


def test_the_interval_comes_from_the_spread_between_sessions():
    """Three sessions whose medians differ by 10% but whose iterations agree to 0.01%: the
    interval covers every session's median (a bootstrap of the pooled iterations would give
    about [1.099, 1.101] around the pooled median)."""
    rng = np.random.default_rng(0)
    sessions = [centre + rng.normal(0, 1e-4, 200) for centre in (1.0, 1.1, 1.2)]

    stats = summarize(sessions)

    assert stats.median_ms == pytest.approx(np.median(np.concatenate(sessions)))
    assert stats.ci_low_ms < 1.0 and stats.ci_high_ms > 1.2
    assert stats.repeats == 3 and stats.n == 600


def test_session_interval_is_the_t_interval_of_the_log_medians():
    medians = np.array([0.095, 0.097, 0.139])
    logs = np.log(medians)
    expected = np.exp(scipy_stats.t.interval(0.95, 2, loc=logs.mean(), scale=scipy_stats.sem(logs)))

    assert session_interval(medians) == pytest.approx(tuple(expected))
    with pytest.raises(DepthbenchError, match="at least 2 positive session medians"):
        session_interval([0.1])


def test_sessions_that_agree_give_a_narrow_interval():
    rng = np.random.default_rng(1)
    sessions = [rng.normal(2.0, 0.05, 300) for _ in range(3)]

    stats = summarize(sessions)

    assert 1.9 < stats.ci_low_ms < stats.median_ms < stats.ci_high_ms < 2.1


def test_too_few_samples_is_an_error():
    with pytest.raises(DepthbenchError, match="at least 2 finite latency samples"):
        summarize([np.array([1.0])])


def test_stop_rule_needs_both_iterations_and_seconds(profile):
    def sleep_1ms() -> float:
        time.sleep(0.001)
        return 1.0

    by_count = run_protocol(sleep_1ms, profile.protocol.model_copy(update={"min_iterations": 7}))
    started = time.perf_counter()
    by_time = run_protocol(sleep_1ms, profile.protocol.model_copy(update={"min_seconds": 0.05}))

    assert len(by_count) == 7
    assert time.perf_counter() - started >= 0.05
    assert 5 <= len(by_time) <= 50


def test_measure_an_onnx_file(profile, conv_onnx):
    result = measure(conv_onnx, profile)

    assert (
        result.n
        == len(result.samples)
        == profile.protocol.repeats * profile.protocol.min_iterations
    )
    assert np.all(result.samples > 0)
    assert result.median_ms == pytest.approx(np.median(result.samples))
    assert result.repeats == profile.protocol.repeats
    assert result.stable and result.attempts == 1
    assert result.profile_hash == profile.hash == result.environment["profile_hash"]
    env = result.environment
    assert env["onnxruntime"] and env["torch"] and env["cpu_cores"] >= 1
    assert env["backend_settings"]["intra_op_threads"] == 1


def test_record_fields_fit_the_results_store(profile, conv_onnx):
    fields = measure(conv_onnx, profile).as_record_fields()

    assert set(fields) <= set(CellRecord.model_fields)
    assert fields["latency_samples"] == 10 and fields["stable"] is True
    assert fields["latency_repeats"] == profile.protocol.repeats
    assert (
        fields["latency_ms_ci_low"] <= fields["latency_ms_median"] <= fields["latency_ms_ci_high"]
    )


def test_measure_a_torch_module_exports_it_at_the_profile_batch(profile):
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()

    result = measure(module, profile)

    assert result.n == 10 and result.median_ms > 0


def test_unstable_results_are_remeasured_then_flagged(profile, conv_onnx):
    strict = profile.protocol.model_copy(update={"max_cov": 1e-9, "max_remeasure": 2})

    with pytest.warns(
        UnstableMeasurementWarning, match=r"after 3 attempts; the result is flagged unstable"
    ):
        result = measure(conv_onnx, profile, protocol=strict)

    assert not result.stable and result.attempts == 3
    assert result.as_record_fields()["stable"] is False


def test_replay_profiles_refuse_to_measure(conv_onnx):
    with pytest.raises(
        DepthbenchError, match="has no device to measure on; measure under a device profile"
    ):
        measure(conv_onnx, load_profile("rtx2080ti-replay-mbv2-1.0"))


def test_onnx_batch_must_match_the_profile(profile, tmp_path):
    path = write_conv_onnx(ConvSpec(3, 8, 3, 1, 1, 1), (4, 3, 16, 16), "relu", tmp_path / "b4.onnx")

    with pytest.raises(DepthbenchError, match="exported for batch 4, but the profile's batch is 2"):
        measure(path, profile)


def test_a_dynamic_batch_takes_the_profile_batch(profile, tmp_path):
    module = nn.Conv2d(3, 4, 3)
    path = tmp_path / "dynamic.onnx"
    export_onnx(module, (1, 3, 16, 16), path)
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(model, str(path))

    assert measure(path, profile).n == 10


def test_a_file_that_is_not_onnx_is_a_clear_error(profile, tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("not a model")

    with pytest.raises(DepthbenchError, match=f"cannot read ONNX file {path}"):
        measure(path, profile)


def test_torch_backend_takes_modules_not_files(conv_onnx):
    torch_profile = read_profile(TEST_PROFILE.with_name("test-torch-fast.yaml"))

    with pytest.raises(DepthbenchError, match="measures torch modules, not the file"):
        measure(conv_onnx, torch_profile)


def test_a_module_needs_a_resolution_from_somewhere():
    profile = load_profile("cpu-onnxruntime")

    with pytest.raises(
        DepthbenchError, match=r"takes the resolution from the model; pass input_shape"
    ):
        measure(nn.Conv2d(3, 4, 3), profile)


def test_cli_measure_prints_statistics_and_turns_errors_into_exit_1(conv_onnx):
    app = typer.Typer()
    register(app)

    measured = CliRunner().invoke(app, ["measure", str(conv_onnx), "--profile", str(TEST_PROFILE)])
    refused = CliRunner().invoke(app, ["measure", str(conv_onnx), "-p", "rtx2080ti-replay-vgg19"])

    assert measured.exit_code == 0 and "median" in measured.output and "samples" in measured.output
    assert refused.exit_code == 1 and "has no device to measure on" in refused.output


def test_rare_outliers_do_not_fail_the_gate_but_a_spread_does():
    """1% of samples 20x slower (OS interruptions) barely moves the median: stable. A uniform
    spread of +-30% around it is not."""
    rng = np.random.default_rng(0)
    steady = rng.normal(1.0, 0.01, 10_000)
    steady[::100] = 20.0
    spread = rng.uniform(0.7, 1.3, 10_000)
    protocol = read_profile(TEST_PROFILE).protocol.model_copy(
        update={"max_cov": 0.05, "max_remeasure": 1}
    )

    samples, stats, stable, attempts = stability_gate(lambda: [steady], protocol, "test")
    assert stats.cov > 1.0 and stats.robust_cov < 0.05
    assert stable and attempts == 1

    with pytest.warns(UnstableMeasurementWarning, match="robust CoV"):
        _, stats, stable, attempts = stability_gate(lambda: [spread], protocol, "test")
    assert stats.robust_cov > 0.2 and not stable and attempts == 2
