"""Latency backends, registered by name (a timm-style registry: a dict filled by a decorator).

A backend times one *repeat*: it builds a fresh session (or engine) for a model, runs the
profile's protocol on it and returns the per-iteration latencies in milliseconds. The harness
(``suite.measure.harness``) repeats, pools, summarises and gates those samples; backends only time.

Each backend also says whether it can run here, and if not, why and what to install, so that an
unavailable backend is one clear error instead of an ImportError deep in a measurement.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from suite.errors import DepthbenchError

if TYPE_CHECKING:
    from torch import nn

    from suite.measure.profiles import Profile, Protocol

ModelKind = Literal["onnx", "torch"]
RunRepeat = Callable[["Path | nn.Module", "Profile", "Protocol", np.ndarray], np.ndarray]
CheckAvailable = Callable[["Profile"], None]


@dataclass(frozen=True)
class Backend:
    """``run_repeat(model, profile, protocol, inputs) -> samples_ms`` for a fresh session each call.

    ``model_kind`` says what ``model`` is: an ONNX file (``"onnx"``) or a torch module.
    ``check_available(profile)`` raises ``DepthbenchError`` saying why the backend cannot run here
    and what to install.
    """

    name: str
    model_kind: ModelKind
    check_available: CheckAvailable
    run_repeat: RunRepeat


_BACKENDS: dict[str, Backend] = {}


def register_backend(
    name: str, *, model_kind: ModelKind, check_available: CheckAvailable
) -> Callable[[RunRepeat], RunRepeat]:
    """Decorator: register ``run_repeat`` as the backend ``name``."""

    def register(run_repeat: RunRepeat) -> RunRepeat:
        if name in _BACKENDS:
            raise DepthbenchError(f"backend {name!r} is registered twice")
        _BACKENDS[name] = Backend(name, model_kind, check_available, run_repeat)
        return run_repeat

    return register


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise DepthbenchError(f"unknown backend {name!r}; available: {', '.join(backend_names())}")
    return _BACKENDS[name]


def run_protocol(step: Callable[[], float], protocol: Protocol) -> np.ndarray:
    """Warm up by time, then call ``step`` until both the iteration and the time minimum are met.

    ``step`` runs one inference and returns its latency in ms (wall clock on CPU, CUDA events on
    GPU).
    """
    warmup_end = time.perf_counter() + protocol.warmup_s
    while time.perf_counter() < warmup_end:
        step()
    samples = []
    start = time.perf_counter()
    while (
        len(samples) < protocol.min_iterations or time.perf_counter() - start < protocol.min_seconds
    ):
        samples.append(step())
    return np.asarray(samples, dtype=np.float64)


# Importing the built-in backends registers them.
from suite.measure.backends import costmodel, onnxruntime, tensorrt, torch, trtexec  # noqa: E402, F401, I001
