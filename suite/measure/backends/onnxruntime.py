"""ONNX Runtime on CPU: the embedded default backend.

Threads, affinity, spinning and graph optimisation level come from the profile (and so are in its
hash); the execution mode is sequential, which is what a chain of convs wants (docs/measurement.md, "Backends").
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from suite.measure.backends import register_backend, run_protocol
from suite.measure.profiles import OnnxRuntimeSettings, Profile, Protocol

_OPTIMIZATION_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(settings: OnnxRuntimeSettings) -> ort.SessionOptions:
    """The session options a profile's ``onnxruntime`` section stands for."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPTIMIZATION_LEVELS[settings.graph_optimization_level]
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0"
    )
    if settings.affinity is not None:
        options.add_session_config_entry("session.intra_op_thread_affinities", settings.affinity)
    return options


def _check_available(profile: Profile) -> None:
    """ONNX Runtime is a core dependency; its CPU provider is always there."""


@register_backend("onnxruntime", model_kind="onnx", check_available=_check_available)
def run_repeat(model: Path, profile: Profile, protocol: Protocol, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        str(model), session_options(profile.onnxruntime), providers=["CPUExecutionProvider"]
    )
    feed = {session.get_inputs()[0].name: inputs}

    def step() -> float:
        start = time.perf_counter()
        session.run(None, feed)
        return (time.perf_counter() - start) * 1e3

    return run_protocol(step, protocol)
