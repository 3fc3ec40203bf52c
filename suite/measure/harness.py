"""The latency harness: one protocol, one set of statistics, one stability gate for every backend.

``measure(model, profile)`` is the entry point. It

1. refuses replay profiles (they have no device) and backends that cannot run here, with the reason;
2. turns the model into what the backend takes (an ONNX export at the profile's batch, in half
   precision for fp16 profiles, or the torch module itself) and makes one fixed-seed input;
3. runs ``repeats`` repeats, each with a fresh session or engine (a *session*);
4. summarises them: median, mean, p90/p95/p99, IQR, coefficient of variation (CoV) and robust
   CoV of all samples pooled, n, and a 95% confidence interval of the median from the spread
   *between* sessions (``session_interval``): iterations of one session share its state (memory
   layout, thread placement, chosen kernels), so they are not independent samples of the latency a
   fresh session will show;
5. gates on stability: while the robust CoV exceeds the protocol's ``max_cov``, measure again (at most
   ``max_remeasure`` times); if it never passes, keep the steadiest attempt and flag it unstable
   with a warning, never silently;
6. records the environment: CPU model and cores, governor, GPUs and driver, CUDA, the versions of
   torch, onnxruntime and tensorrt, the backend settings and the profile hash.
"""

from __future__ import annotations

import copy
import platform
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from scipy.stats import binom
from scipy.stats import t as student_t
from torch import nn

from suite.core.export import export_onnx
from suite.errors import DepthbenchError
from suite.measure.backends import Backend, get_backend
from suite.measure.profiles import Profile, Protocol, detect_machine

CONFIDENCE = 0.95
# The IQR of a normal distribution is 1.349 standard deviations, so IQR / (1.349 * median) is the
# CoV that a normal distribution with these quartiles would have. The gate uses this robust CoV:
# the plain CoV of a sub-millisecond network is dominated by rare OS interruptions (a 0.06 ms
# MobileNetV2 on 1 CPU thread: CoV 17-60%, robust CoV 1-2.5%, run after run), so gating on it
# would flag every measurement without saying anything about whether the median is repeatable.
NORMAL_IQR = 1.349


class UnstableMeasurementWarning(UserWarning):
    """A measurement stayed above the profile's CoV threshold after every allowed re-measurement."""


@dataclass(frozen=True)
class LatencyStats:
    """Summary statistics of per-iteration latencies (ms; ``cov`` is a fraction)."""

    median_ms: float
    mean_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    iqr_ms: float
    cov: float
    robust_cov: float
    ci_low_ms: float
    ci_high_ms: float
    n: int
    repeats: int


@dataclass(frozen=True)
class LatencyResult(LatencyStats):
    """The statistics plus the raw samples, the gate's verdict and the provenance."""

    samples: np.ndarray
    stable: bool
    attempts: int
    environment: dict[str, Any]
    profile_hash: str

    def as_record_fields(self) -> dict[str, float | int | bool]:
        """The latency fields of a results-store record (``suite.run.store.CellRecord``)."""
        return {
            "latency_ms_median": self.median_ms,
            "latency_ms_mean": self.mean_ms,
            "latency_ms_p90": self.p90_ms,
            "latency_ms_p95": self.p95_ms,
            "latency_ms_p99": self.p99_ms,
            "latency_ms_iqr": self.iqr_ms,
            "latency_cov": self.cov,
            "latency_robust_cov": self.robust_cov,
            "latency_ms_ci_low": self.ci_low_ms,
            "latency_ms_ci_high": self.ci_high_ms,
            "latency_samples": self.n,
            "latency_repeats": self.repeats,
            "stable": self.stable,
        }


def summarize(repeats: Sequence[np.ndarray]) -> LatencyStats:
    """Statistics of one attempt, given as the samples of each repeat (session).

    Everything but the interval is computed over all samples pooled. The 95% interval of the
    median comes from the sessions' medians (``session_interval``); with a single session there is
    no between-session spread to use, so it falls back to the order-statistic interval of that
    session's median (``median_order_interval``), which reflects only the noise within the session.
    """
    repeats = [np.asarray(repeat, dtype=np.float64) for repeat in repeats]
    samples = np.concatenate(repeats) if repeats else np.empty(0)
    if samples.size < 2 or any(r.size == 0 for r in repeats) or not np.all(np.isfinite(samples)):
        raise DepthbenchError(
            f"need at least 2 finite latency samples, and one in every repeat, to summarise; got "
            f"{samples.size} in {len(repeats)} repeats"
        )
    p25, median, p75, p90, p95, p99 = np.percentile(samples, [25, 50, 75, 90, 95, 99])
    if len(repeats) == 1:
        ci_low, ci_high = median_order_interval(samples)
    else:
        ci_low, ci_high = session_interval([np.median(repeat) for repeat in repeats])
    mean = samples.mean()
    return LatencyStats(
        median_ms=float(median),
        mean_ms=float(mean),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        iqr_ms=float(p75 - p25),
        cov=float(samples.std(ddof=1) / mean),
        robust_cov=float((p75 - p25) / NORMAL_IQR / median),
        # the pooled median lies between the sessions' medians, so inside the interval for up to
        # 4 sessions; with more, skewed sessions could leave it outside: widen to include it
        ci_low_ms=float(min(ci_low, median)),
        ci_high_ms=float(max(ci_high, median)),
        n=int(samples.size),
        repeats=len(repeats),
    )


def session_interval(session_medians: Sequence[float]) -> tuple[float, float]:
    """95% confidence interval of the typical session's median latency (the geometric mean of
    session medians), from the medians of k >= 2 sessions.

    A Student-t interval on the logarithms (sessions shift latency by a factor, not by an
    offset): exp(mean(log m) +- t_{0.975, k-1} * sd(log m) / sqrt(k)). It is always positive and,
    for k <= 4 sessions, contains every session's median, since t_{0.975, k-1} >= k - 1 there.
    A bootstrap over 3 medians would be degenerate (10 distinct resamples), and their min-max range
    contains the median of the sessions' distribution only 1 - 2 / 2^3 = 75% of the time.
    """
    medians = np.asarray(session_medians, dtype=np.float64)
    if medians.size < 2 or not np.all(medians > 0):
        raise DepthbenchError(
            f"a between-session interval needs at least 2 positive session medians, got {medians}"
        )
    if np.all(medians == medians[0]):  # no spread (a cost model): exactly the value, not exp(log)
        return float(medians[0]), float(medians[0])
    logs = np.log(medians)
    half_width = (
        student_t.ppf(0.5 + CONFIDENCE / 2, logs.size - 1) * logs.std(ddof=1) / np.sqrt(logs.size)
    )
    return float(np.exp(logs.mean() - half_width)), float(np.exp(logs.mean() + half_width))


def median_order_interval(samples: np.ndarray) -> tuple[float, float]:
    """Distribution-free 95% confidence interval of the median of i.i.d. ``samples``: the order
    statistics x_(k) and x_(n+1-k), with k the largest rank such that P(Binomial(n, 1/2) < k)
    <= 2.5%, so the interval covers the median with probability >= 95% (n = 10: x_(2)..x_(9);
    n = 100: x_(40)..x_(61)). For n <= 5 no such k exists and it is the whole range.

    A bootstrap of the median says the same for large n but costs a thousand sorts; a latency
    table's segment has ~7000 samples, and the bootstrap took a third of the table's time.
    """
    ordered = np.sort(np.asarray(samples, dtype=np.float64))
    n = ordered.size
    k = max(int(binom.ppf((1 - CONFIDENCE) / 2, n, 0.5)), 1)
    return float(ordered[k - 1]), float(ordered[n - k])


def measure(
    model: nn.Module | Path,
    profile: Profile,
    input_shape: tuple[int, int, int] | None = None,
    protocol: Protocol | None = None,
) -> LatencyResult:
    """Measure the latency of a torch module or an ONNX file under ``profile``.

    ``input_shape`` is one sample's (C, H, W); the batch is always the profile's. Left out, it is
    (3, R, R) for a module, with R the profile's resolution, or read from an ONNX file. Given, it
    is used as is (callers that honour a profile's fixed resolution check it, as the CLI does).
    ``protocol`` defaults to the profile's end-to-end protocol (latency tables pass the lighter
    ``table_protocol``).
    """
    if profile.is_replay:
        raise DepthbenchError(
            f"profile {profile.name!r} replays an upstream latency table and has no device to "
            "measure on; measure under a device profile instead (`depthbench profiles detect` "
            "lists those this machine can run, e.g. cpu-onnxruntime)"
        )
    backend = get_backend(profile.backend)
    backend.check_available(profile)
    protocol = protocol or profile.protocol
    with tempfile.TemporaryDirectory(prefix="depthbench-measure-") as workdir:
        runnable, shape, dtype = _prepare(model, profile, backend, input_shape, Path(workdir))
        inputs = np.random.default_rng(protocol.seed).standard_normal(shape).astype(dtype)

        def measure_once() -> list[np.ndarray]:
            return [
                backend.run_repeat(runnable, profile, protocol, inputs)
                for _ in range(protocol.repeats)
            ]

        samples, summary, stable, attempts = stability_gate(measure_once, protocol, profile.name)
    return LatencyResult(
        **asdict(summary),
        samples=np.concatenate(samples),
        stable=stable,
        attempts=attempts,
        environment=capture_environment(profile),
        profile_hash=profile.hash,
    )


def stability_gate(
    measure_once: Callable[[], list[np.ndarray]], protocol: Protocol, profile_name: str
) -> tuple[list[np.ndarray], LatencyStats, bool, int]:
    """Stability gate: the first attempt with a robust CoV under ``max_cov``, else the steadiest,
    with a warning. ``measure_once`` returns one attempt: the samples of each repeat."""
    best: tuple[list[np.ndarray], LatencyStats] | None = None
    for attempt in range(1, protocol.max_remeasure + 2):
        samples = measure_once()
        stats = summarize(samples)
        if best is None or stats.robust_cov < best[1].robust_cov:
            best = (samples, stats)
        if stats.robust_cov <= protocol.max_cov:
            return samples, stats, True, attempt
    warnings.warn(
        f"unstable latency under {profile_name!r}: robust CoV {best[1].robust_cov:.1%} > "
        f"{protocol.max_cov:.1%} after {attempt} attempts; the result is flagged unstable "
        "(quiet the machine, or raise max_cov)",
        UnstableMeasurementWarning,
        stacklevel=3,
    )
    return best[0], best[1], False, attempt


def _prepare(
    model: nn.Module | Path,
    profile: Profile,
    backend: Backend,
    input_shape: tuple[int, int, int] | None,
    workdir: Path,
) -> tuple[nn.Module | Path, tuple[int, ...], np.dtype]:
    """What the backend runs, the batched input shape and the input dtype."""
    dtype = np.float16 if profile.precision == "fp16" else np.float32
    if isinstance(model, nn.Module):
        shape = (profile.batch, *(input_shape or _image_shape(profile)))
        if backend.model_kind == "torch":
            return (copy.deepcopy(model).half() if dtype == np.float16 else model), shape, dtype
        torch_dtype = torch.float16 if dtype == np.float16 else torch.float32
        return export_onnx(model, shape, workdir / "model.onnx", torch_dtype), shape, dtype
    path = Path(model)
    if backend.model_kind == "torch":
        raise DepthbenchError(
            f"backend {backend.name!r} of profile {profile.name!r} measures torch modules, not the file "
            f"{path}; pass the model itself, or use an ONNX profile such as cpu-onnxruntime"
        )
    shape, file_dtype = onnx_input(path, profile.batch)
    if input_shape is not None and tuple(input_shape) != shape[1:]:
        raise DepthbenchError(
            f"{path} takes input {shape[1:]}, not the requested {tuple(input_shape)}"
        )
    return path, shape, file_dtype


def _image_shape(profile: Profile) -> tuple[int, int, int]:
    if profile.resolution is None:
        raise DepthbenchError(
            f"profile {profile.name!r} takes the resolution from the model; pass "
            "input_shape=(C, H, W) (the CLI's --resolution)"
        )
    return (3, profile.resolution, profile.resolution)


def onnx_input(path: Path, batch: int) -> tuple[tuple[int, ...], np.dtype]:
    """The (batch, C, H, W) input of a single-input ONNX file at ``batch``, and its dtype."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (OSError, DecodeError) as err:
        raise DepthbenchError(f"cannot read ONNX file {path}: {err}") from err
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise DepthbenchError(
            f"{path} has {len(inputs)} inputs; the harness measures single-input models"
        )
    tensor = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if any(d is None for d in dims[1:]):
        raise DepthbenchError(
            f"{path} has a dynamic input shape {dims}; export it with a fixed (C, H, W)"
        )
    if dims[0] is not None and dims[0] != batch:
        raise DepthbenchError(
            f"{path} is exported for batch {dims[0]}, but the profile's batch is {batch}"
        )
    dtypes = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}
    if tensor.elem_type not in dtypes:
        raise DepthbenchError(
            f"{path} takes {onnx.TensorProto.DataType.Name(tensor.elem_type)} input; "
            "the harness feeds float32 or float16 images"
        )
    return (batch, *dims[1:]), np.dtype(dtypes[tensor.elem_type])


def capture_environment(profile: Profile) -> dict[str, Any]:
    """Everything about this machine and software a latency number depends on."""
    machine = detect_machine()
    return {
        "cpu_model": machine.cpu_model,
        "cpu_cores": machine.cpu_cores,
        "cpu_governor": machine.cpu_governor,
        "gpu_names": list(machine.gpu_names),
        "gpu_driver": machine.gpu_driver,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "tensorrt": _version("tensorrt"),
        "profile": profile.name,
        "profile_hash": profile.hash,
        "backend": profile.backend,
        "backend_settings": profile.settings.model_dump(mode="json"),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
