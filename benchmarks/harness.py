"""asv: the latency harness's own cost and steadiness (targets in docs/measurement.md), one question each.

All on MobileNetV2-1.0 at 224x224, batch 1, under the default profile cpu-onnxruntime:

- ``HarnessOverhead``: how much the harness adds to a bare ``session.run`` loop (goal <= 2 %);
- ``MedianSteadiness``: how much five independent medians disagree (CoV, goal <= 3 %);
- ``TableBuild``: a cold latency table (goal <= 3 min) and the same table from the cache (<= 2 s).
"""

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from suite.core.export import export_onnx
from suite.core.models import build_model
from suite.core.trace import trace_model
from suite.measure.backends.onnxruntime import session_options
from suite.measure.harness import UnstableMeasurementWarning, measure
from suite.measure.profiles import load_profile
from suite.measure.tables import TableCache, build_table

PROFILE = "cpu-onnxruntime"
SHAPE = (1, 3, 224, 224)


def _mobilenet_onnx(directory: str) -> Path:
    model = build_model("mobilenet_v2", num_classes=1000).eval()
    return export_onnx(model, SHAPE, Path(directory) / "mobilenet_v2.onnx")


def _bare_loop_median(path: Path, warmup_s: float, sessions: int, iterations: int) -> float:
    """The same settings, input and sample count as the harness, timed by the plainest loop."""
    options = session_options(load_profile(PROFILE).onnxruntime)
    feed = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    samples = []
    for _ in range(sessions):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = {session.get_inputs()[0].name: feed}
        warmup_end = time.perf_counter() + warmup_s
        while time.perf_counter() < warmup_end:
            session.run(None, inputs)
        for _ in range(iterations):
            start = time.perf_counter()
            session.run(None, inputs)
            samples.append(time.perf_counter() - start)
    return float(np.median(samples) * 1e3)


class HarnessOverhead:
    timeout = 600

    def setup(self):
        self.workdir = tempfile.TemporaryDirectory()
        self.onnx = _mobilenet_onnx(self.workdir.name)
        self.profile = load_profile(PROFILE)

    def teardown(self):
        self.workdir.cleanup()

    def track_overhead_percent(self):
        """Median over 10 interleaved rounds of (harness median / bare-loop median - 1), in %.

        The per-iteration overhead does not depend on the protocol's length, so each round uses
        a short one (one session, 0.5 s): short alternating rounds let the noise of a shared
        machine hit both sides alike.
        """
        protocol = self.profile.protocol.model_copy(
            update={"repeats": 1, "min_seconds": 0.5, "max_remeasure": 0}
        )
        ratios = []
        for _ in range(10):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnstableMeasurementWarning)
                harness = measure(self.onnx, self.profile, protocol=protocol)
            bare = _bare_loop_median(self.onnx, protocol.warmup_s, 1, harness.n)
            ratios.append(harness.median_ms / bare - 1)
        return 100 * statistics.median(ratios)

    track_overhead_percent.unit = "%"


class MedianSteadiness:
    timeout = 600

    def setup(self):
        self.workdir = tempfile.TemporaryDirectory()
        self.onnx = _mobilenet_onnx(self.workdir.name)
        self.profile = load_profile(PROFILE)

    def teardown(self):
        self.workdir.cleanup()

    def track_cov_of_five_medians_percent(self):
        medians = [measure(self.onnx, self.profile).median_ms for _ in range(5)]
        return 100 * statistics.stdev(medians) / statistics.fmean(medians)

    track_cov_of_five_medians_percent.unit = "%"


class TableBuild:
    timeout = 900

    def setup_cache(self):
        """A cache holding the MobileNetV2-1.0 table (asv runs this in a kept directory)."""
        path = Path("latency_tables.sqlite").resolve()
        build_table(
            trace_model("mobilenet_v2").chain, load_profile(PROFILE), cache=TableCache(path)
        )
        return path

    def setup(self, cache_path):
        self.chain = trace_model("mobilenet_v2").chain
        self.profile = load_profile(PROFILE)

    def track_cold_build_seconds(self, cache_path):
        with tempfile.TemporaryDirectory() as directory:
            start = time.perf_counter()
            build_table(self.chain, self.profile, cache=TableCache(Path(directory) / "cold.sqlite"))
            return time.perf_counter() - start

    track_cold_build_seconds.unit = "s"

    def time_cached_build(self, cache_path):
        build_table(self.chain, self.profile, cache=TableCache(cache_path))
