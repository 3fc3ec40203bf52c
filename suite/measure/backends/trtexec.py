"""The ``trtexec`` command-line tool as a backend, and a parser for its performance summary.

Each repeat is one ``trtexec`` run (a fresh engine build) given as an argument list. The protocol
maps onto trtexec's own flags (``--warmUp`` in ms, ``--iterations`` and ``--duration`` as the stop
rule); the per-iteration GPU compute times come from ``--exportTimes`` (a JSON trace that still
holds the warm-up queries, which trtexec tells apart by their start time, and so do we). The printed
summary is parsed too, and trtexec's own diagnostics (enqueue-bound, transfer-bound, unstable) are
passed on as warnings (docs/measurement.md, "Backends").
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from suite.errors import DepthbenchError
from suite.measure.backends import register_backend
from suite.measure.backends.tensorrt import timing_cache_path
from suite.measure.profiles import Profile, Protocol, detect_machine

PERCENTILES = (90, 95, 99)

_NUMBER = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"
_LOG_PREFIX = r"^(?:\[[^\]]*\] )?(?:\[[IWEV]\] )?"
_METRIC = re.compile(
    _LOG_PREFIX + rf"(?P<name>[A-Za-z0-9][A-Za-z0-9 -]*?): min = (?P<min>{_NUMBER}) ms, "
    rf"max = (?P<max>{_NUMBER}) ms, mean = (?P<mean>{_NUMBER}) ms, "
    rf"median = (?P<median>{_NUMBER}) ms"
    r"(?P<rest>.*)$",
    re.MULTILINE,
)
_PERCENTILE = re.compile(rf"percentile\((?P<p>{_NUMBER})%\) = (?P<value>{_NUMBER}) ms")
_THROUGHPUT = re.compile(_LOG_PREFIX + rf"Throughput: (?P<value>{_NUMBER}) qps", re.MULTILINE)
_TOTAL = re.compile(
    _LOG_PREFIX + rf"Total (?P<name>Host Walltime|GPU Compute Time): (?P<value>{_NUMBER}) s",
    re.MULTILINE,
)
_WARNING = re.compile(r"^(?:\[[^\]]*\] )?\[W\] \* (?P<text>.+)$", re.MULTILINE)
_VERSION = re.compile(r"TensorRT\.trtexec \[TensorRT v(?P<code>\d+)\]")


@dataclass(frozen=True)
class MetricSummary:
    """One line of the summary: min/max/mean/median and the requested percentiles, in ms."""

    min_ms: float
    max_ms: float
    mean_ms: float
    median_ms: float
    percentiles_ms: dict[float, float]


@dataclass(frozen=True)
class TrtexecSummary:
    """The ``=== Performance summary ===`` block (plus the version from the ``&&&&`` banner)."""

    metrics: dict[str, MetricSummary]
    throughput_qps: float | None = None
    total_host_walltime_s: float | None = None
    total_gpu_compute_time_s: float | None = None
    tensorrt_version: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def gpu_compute(self) -> MetricSummary:
        return self.metrics["GPU Compute Time"]


def parse_summary(text: str) -> TrtexecSummary:
    """Parse trtexec's printed performance summary; no ``GPU Compute Time`` line is an error."""
    metrics = {
        match["name"]: MetricSummary(
            float(match["min"]),
            float(match["max"]),
            float(match["mean"]),
            float(match["median"]),
            {float(p["p"]): float(p["value"]) for p in _PERCENTILE.finditer(match["rest"])},
        )
        for match in _METRIC.finditer(text)
    }
    if "GPU Compute Time" not in metrics:
        raise DepthbenchError(
            "trtexec output has no 'GPU Compute Time' summary line; did the inference run?"
        )
    totals = {match["name"]: float(match["value"]) for match in _TOTAL.finditer(text)}
    throughput = _THROUGHPUT.search(text)
    return TrtexecSummary(
        metrics=metrics,
        throughput_qps=float(throughput["value"]) if throughput else None,
        total_host_walltime_s=totals.get("Host Walltime"),
        total_gpu_compute_time_s=totals.get("GPU Compute Time"),
        tensorrt_version=parse_version(text),
        warnings=[match["text"].strip() for match in _WARNING.finditer(text)],
    )


def parse_version(text: str) -> str | None:
    """The TensorRT version from trtexec's banner: ``v100200`` is 10.2.0, ``v8400`` is 8.4.0."""
    match = _VERSION.search(text)
    if match is None:
        return None
    code = int(match["code"])
    if len(match["code"]) >= 6:  # TensorRT >= 10 writes MMmmpp
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def gpu_compute_samples(trace: list[dict[str, float]], warmup_ms: float) -> np.ndarray:
    """Per-query GPU compute times from an ``--exportTimes`` trace, warm-up queries left out."""
    return np.asarray(
        [q["computeMs"] for q in trace if q["startComputeMs"] >= warmup_ms], dtype=np.float64
    )


@dataclass(frozen=True)
class RunFiles:
    """The files one trtexec run reads and writes besides the ONNX model."""

    input_name: str
    inputs: Path
    times: Path
    timing_cache: Path


def trtexec_command(
    executable: str,
    onnx_path: Path,
    profile: Profile,
    protocol: Protocol,
    files: RunFiles,
    fp16_flag: bool,
) -> list[str]:
    """The argument list for one measured trtexec run."""
    settings = profile.trtexec
    command = [
        executable,
        f"--onnx={onnx_path}",
        f"--loadInputs={files.input_name}:{files.inputs}",
        f"--warmUp={protocol.warmup_s * 1e3:g}",
        f"--iterations={protocol.min_iterations}",
        f"--duration={protocol.min_seconds:g}",
        f"--percentile={','.join(map(str, PERCENTILES))}",
        f"--memPoolSize=workspace:{settings.workspace_mib}",
        f"--builderOptimizationLevel={settings.builder_optimization_level}",
        f"--timingCacheFile={files.timing_cache}",
        f"--exportTimes={files.times}",
    ]
    command += ["--useCudaGraph"] if settings.cuda_graph else []
    command += ["--useSpinWait"] if settings.spin_wait else []
    command += [] if settings.data_transfers else ["--noDataTransfers"]
    command += ["--fp16"] if fp16_flag else []
    return command


@functools.cache
def installed_version(executable: str) -> str:
    result = subprocess.run(
        [executable, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    version = parse_version(result.stdout + result.stderr)
    if version is None:
        raise DepthbenchError(
            f"cannot tell the TensorRT version of {executable}: its --help shows no banner"
        )
    return version


def _check_available(profile: Profile) -> None:
    if shutil.which("trtexec") is None:
        raise DepthbenchError(
            f"profile {profile.name!r} runs trtexec, which is not on PATH: install TensorRT "
            "(trtexec is in its bin/ directory, or in NVIDIA's TensorRT container) on a machine "
            "with an NVIDIA GPU"
        )


@register_backend("trtexec", model_kind="onnx", check_available=_check_available)
def run_repeat(model: Path, profile: Profile, protocol: Protocol, inputs: np.ndarray) -> np.ndarray:
    executable = shutil.which("trtexec")
    version = installed_version(executable)
    fp16_flag = _fp16_flag(model, profile.precision, version)
    machine = detect_machine()
    with tempfile.TemporaryDirectory(prefix="depthbench-trtexec-") as workdir:
        files = RunFiles(
            input_name=onnx.load(model, load_external_data=False).graph.input[0].name,
            inputs=Path(workdir) / "inputs.bin",
            times=Path(workdir) / "times.json",
            timing_cache=timing_cache_path(
                {
                    "device": machine.gpu_names,
                    "driver": machine.gpu_driver,
                    "tensorrt": version,
                    "precision": profile.precision,
                    "builder": profile.trtexec.model_dump(
                        mode="json", exclude={"cuda_graph", "spin_wait", "data_transfers"}
                    ),
                }
            ),
        )
        files.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        inputs.tofile(files.inputs)
        command = trtexec_command(executable, model, profile, protocol, files, fp16_flag)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise DepthbenchError(f"trtexec failed on {model} (exit {result.returncode}):\n{tail}")
        summary = parse_summary(result.stdout)
        samples = gpu_compute_samples(json.loads(files.times.read_text()), protocol.warmup_s * 1e3)
    for message in summary.warnings:
        warnings.warn(f"trtexec on {model.name}: {message}", stacklevel=2)
    return samples


def _fp16_flag(model: Path, precision: str, version: str) -> bool:
    """TensorRT 10 takes fp16 as a flag; 11 removed it and reads the precision from the graph."""
    if precision == "fp32":
        return False
    if int(version.split(".")[0]) < 11:
        return True
    graph_input = onnx.load(model, load_external_data=False).graph.input[0]
    if graph_input.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16:
        raise DepthbenchError(
            f"{model} is an fp32 graph, but TensorRT {version} is strongly typed: export the model "
            "in half precision or convert it with `python -m modelopt.onnx.autocast`"
        )
    return False
