"""PyTorch eager or ``torch.compile``, on CPU or CUDA.

The thread count is fixed from the profile for the measurement (torch.utils.benchmark does the
same; docs/measurement.md, "Backends"). On CUDA each iteration is timed with CUDA events on the current stream,
so the number is GPU time, not host time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from suite.errors import DepthbenchError
from suite.measure.backends import register_backend, run_protocol
from suite.measure.profiles import Profile, Protocol


def _check_available(profile: Profile) -> None:
    if profile.torch.device == "cuda" and not torch.cuda.is_available():
        raise DepthbenchError(
            f"profile {profile.name!r} runs torch on CUDA, but no CUDA GPU is visible "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); run it on a "
            "machine with an NVIDIA GPU and a CUDA build of torch, or use the profile cpu-torch"
        )


@contextmanager
def _threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@register_backend("torch", model_kind="torch", check_available=_check_available)
def run_repeat(
    model: nn.Module, profile: Profile, protocol: Protocol, inputs: np.ndarray
) -> np.ndarray:
    settings = profile.torch
    device = torch.device(settings.device)
    module = copy.deepcopy(model).to(device).eval()
    if settings.mode == "compile":
        torch._dynamo.reset()  # a fresh compilation per repeat, like a fresh session
        module = torch.compile(module)
    batch = torch.from_numpy(inputs).to(device)
    with _threads(settings.threads), torch.inference_mode():
        step = _cuda_step(module, batch) if device.type == "cuda" else _cpu_step(module, batch)
        return run_protocol(step, protocol)


def _cpu_step(module: nn.Module, batch: torch.Tensor) -> Callable[[], float]:
    def step() -> float:
        start = time.perf_counter()
        module(batch)
        return (time.perf_counter() - start) * 1e3

    return step


def _cuda_step(module: nn.Module, batch: torch.Tensor) -> Callable[[], float]:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def step() -> float:
        start.record()
        module(batch)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return step
