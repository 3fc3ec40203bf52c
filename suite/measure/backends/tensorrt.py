"""TensorRT through its Python API (10.x and 11.x), timed with CUDA events.

Build: ONNX -> strongly or weakly typed network -> engine, with the profile's workspace pool limit
and builder optimisation level, and a timing cache persisted on disk. A timing cache is valid only
for one device, CUDA version, TensorRT version and builder configuration, so that tuple names the
file (docs/measurement.md, "Backends").

Precision recipe: fp32 needs nothing. fp16 on TensorRT 10 sets ``BuilderFlag.FP16``; TensorRT 11
removed that flag and is always strongly typed, so the fp16 must already be in the ONNX graph (the
harness exports fp16 profiles' models in half precision; for other files use ModelOpt AutoCast).

Run: I/O tensors by name (``set_tensor_address``), ``execute_async_v3`` on a torch CUDA stream,
optionally captured once in a CUDA graph and replayed; torch owns the device buffers and events.
Each repeat builds a fresh engine, since tactic choice varies between builds.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from suite.cache import TENSORRT, cache_root
from suite.errors import DepthbenchError
from suite.files import atomic_write
from suite.measure.backends import register_backend, run_protocol
from suite.measure.profiles import Profile, Protocol, TensorRTSettings
from suite.provenance import config_hash

if TYPE_CHECKING:
    import tensorrt as trt

INSTALL_HINT = "pip install 'depthbench[tensorrt]' on a machine with an NVIDIA GPU and driver"


def _check_available(profile: Profile) -> None:
    if importlib.util.find_spec("tensorrt") is None:
        raise DepthbenchError(
            f"profile {profile.name!r} needs TensorRT, which is not installed: {INSTALL_HINT}"
        )
    if not torch.cuda.is_available():
        raise DepthbenchError(
            f"profile {profile.name!r} needs an NVIDIA GPU for TensorRT, but torch sees no CUDA "
            f"device (torch {torch.__version__}, CUDA build {torch.version.cuda}); run it on a GPU "
            "machine"
        )


def timing_cache_path(key: dict[str, object]) -> Path:
    """The timing-cache file for ``key`` (device, CUDA or driver, TensorRT, builder config)."""
    return cache_root() / TENSORRT / f"timing-{config_hash(key)[:16]}.cache"


def build_engine(onnx_path: Path, settings: TensorRTSettings, precision: str) -> trt.ICudaEngine:
    """Parse the ONNX file and build an engine, reading and updating the persisted timing cache."""
    import tensorrt as trt  # noqa: F811 - optional dependency

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network()
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DepthbenchError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    config.builder_optimization_level = settings.builder_optimization_level
    _apply_precision(config, network, precision, onnx_path)
    cache_path = timing_cache_path(
        {
            "device": torch.cuda.get_device_name(),
            "capability": torch.cuda.get_device_capability(),
            "cuda": torch.version.cuda,
            "tensorrt": trt.__version__,
            "precision": precision,
            "builder": settings.model_dump(mode="json", exclude={"cuda_graph"}),
        }
    )
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DepthbenchError(
            f"TensorRT failed to build an engine from {onnx_path} (see the log above)"
        )
    # atomic, so a concurrent build never reads half a cache
    atomic_write(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return trt.Runtime(logger).deserialize_cuda_engine(plan)


def _apply_precision(
    config: trt.IBuilderConfig, network: trt.INetworkDefinition, precision: str, onnx_path: Path
) -> None:
    import tensorrt as trt  # noqa: F811 - optional dependency

    if precision == "fp32":
        return
    if int(trt.__version__.split(".")[0]) < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    elif network.get_input(0).dtype != trt.DataType.HALF:
        raise DepthbenchError(
            f"{onnx_path} is an fp32 graph, but TensorRT {trt.__version__} is strongly typed and "
            "takes its precision from the graph: export the model in half precision, or convert "
            "the file with `python -m modelopt.onnx.autocast --onnx_path model.onnx "
            "--output_path model_fp16.onnx`"
        )


@register_backend("tensorrt", model_kind="onnx", check_available=_check_available)
def run_repeat(model: Path, profile: Profile, protocol: Protocol, inputs: np.ndarray) -> np.ndarray:
    engine = build_engine(model, profile.tensorrt, profile.precision)
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    buffers = _bind_io(engine, context, inputs)
    launch = _launcher(context, stream, profile.tensorrt.cuda_graph)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def step() -> float:
        start.record(stream)
        launch()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end)

    samples = run_protocol(step, protocol)
    del buffers  # the engine's tensor addresses point into these until here
    return samples


def _bind_io(
    engine: trt.ICudaEngine, context: trt.IExecutionContext, inputs: np.ndarray
) -> list[torch.Tensor]:
    import tensorrt as trt  # noqa: F811 - optional dependency

    buffers = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            context.set_input_shape(name, inputs.shape)
            buffer = torch.from_numpy(inputs).to("cuda", dtype)
        else:
            buffer = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
        context.set_tensor_address(name, buffer.data_ptr())
        buffers.append(buffer)
    return buffers


def _launcher(
    context: trt.IExecutionContext, stream: torch.cuda.Stream, cuda_graph: bool
) -> Callable[[], None]:
    def enqueue() -> None:
        if not context.execute_async_v3(stream.cuda_stream):
            raise DepthbenchError("TensorRT execute_async_v3 failed (see the log above)")

    # One plain run first: TensorRT finishes deferred setup there, which a graph must not capture.
    enqueue()
    stream.synchronize()
    if not cuda_graph:
        return enqueue
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        enqueue()

    def replay() -> None:
        with torch.cuda.stream(stream):
            graph.replay()

    return replay
