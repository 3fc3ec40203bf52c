"""Backends: the registry, each backend's settings and timing, ONNX export checked against torch."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional

from suite.core.chain import ConvSpec
from suite.core.export import export_onnx, write_conv_onnx
from suite.errors import DepthbenchError
from suite.measure.backends import backend_names, get_backend, register_backend
from suite.measure.backends.onnxruntime import session_options
from suite.measure.backends.trtexec import RunFiles, trtexec_command
from suite.measure.harness import measure
from suite.measure.profiles import BACKENDS, Profile, load_profile, read_profile

PROFILES = Path(__file__).parent / "data" / "profiles"
HAS_CUDA = torch.cuda.is_available()
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_TRTEXEC = shutil.which("trtexec") is not None


def run_onnx(path: Path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def upstream_trtexec_profile() -> Profile:
    """The upstream protocol profile with trtexec as its backend."""
    content = load_profile("rtx2080ti-tensorrt-fp32-b128").model_dump(mode="json")
    settings = {**content.pop("tensorrt"), "spin_wait": True, "data_transfers": False}
    return Profile.model_validate({**content, "backend": "trtexec", "trtexec": settings})


def test_registry_holds_the_five_backends():
    assert (
        backend_names()
        == ["costmodel", "onnxruntime", "tensorrt", "torch", "trtexec"]
        == list(BACKENDS)
    )
    assert get_backend("torch").model_kind == "torch"
    assert get_backend("trtexec").model_kind == "onnx"
    with pytest.raises(
        DepthbenchError, match="unknown backend 'tvm'; available: costmodel, onnxruntime"
    ):
        get_backend("tvm")
    with pytest.raises(DepthbenchError, match="registered twice"):
        register_backend("onnxruntime", model_kind="onnx", check_available=print)(print)


def test_onnxruntime_session_options_come_from_the_profile():
    settings = load_profile("cpu-onnxruntime").onnxruntime.model_copy(
        update={"intra_op_threads": 3, "affinity": "1;2", "allow_spinning": False}
    )

    options = session_options(settings)

    assert options.intra_op_num_threads == 3
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.intra_op_thread_affinities") == "1;2"


def test_onnxruntime_repeat_returns_one_sample_per_iteration(tmp_path):
    profile = read_profile(PROFILES / "test-cpu-fast.yaml")
    path = write_conv_onnx(ConvSpec(3, 8, 3, 1, 1, 1), (2, 3, 16, 16), "relu", tmp_path / "c.onnx")
    inputs = np.zeros((2, 3, 16, 16), np.float32)

    samples = get_backend("onnxruntime").run_repeat(path, profile, profile.protocol, inputs)

    assert len(samples) == profile.protocol.min_iterations
    assert np.all(samples > 0)


def test_torch_eager_on_cpu_times_the_module_and_restores_threads():
    profile = read_profile(PROFILES / "test-torch-fast.yaml")
    threads = torch.get_num_threads()

    result = measure(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), profile)

    assert result.n == 10 and result.median_ms > 0
    assert result.environment["backend_settings"] == {
        "device": "cpu",
        "mode": "eager",
        "threads": 1,
    }
    assert torch.get_num_threads() == threads


@pytest.mark.slow
def test_torch_compile_on_cpu():
    profile = read_profile(PROFILES / "test-torch-fast.yaml")
    compiled = profile.model_copy(
        update={"torch": profile.torch.model_copy(update={"mode": "compile"})}
    )

    assert measure(nn.Conv2d(3, 4, 3), compiled).n == 10


@pytest.mark.skipif(HAS_CUDA, reason="checks the message shown where no GPU is visible")
def test_cuda_profiles_say_there_is_no_gpu():
    with pytest.raises(DepthbenchError, match="no CUDA GPU is visible.*use the profile cpu-torch"):
        measure(nn.Conv2d(3, 4, 3), load_profile("cuda-torch-fp32"), input_shape=(3, 16, 16))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU")
def test_torch_on_cuda_times_with_events():
    profile = load_profile("cuda-torch-fp32")
    quick = profile.protocol.model_copy(
        update={"warmup_s": 0.0, "min_iterations": 5, "min_seconds": 0.0}
    )

    result = measure(nn.Conv2d(3, 4, 3), profile, input_shape=(3, 32, 32), protocol=quick)

    assert result.n == 5 * profile.protocol.repeats and result.median_ms > 0


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown where TensorRT is missing")
def test_tensorrt_says_what_to_install():
    with pytest.raises(
        DepthbenchError,
        match=r"needs TensorRT, which is not installed: pip install 'depthbench\[tensorrt\]'",
    ):
        measure(nn.Conv2d(3, 4, 3), load_profile("rtx2080ti-tensorrt-fp32-b128"))


@pytest.mark.tensorrt
@pytest.mark.skipif(not (HAS_TENSORRT and HAS_CUDA), reason="needs TensorRT and an NVIDIA GPU")
def test_tensorrt_builds_and_times_an_engine():
    profile = load_profile("rtx2080ti-tensorrt-fp32-b128")
    quick = profile.protocol.model_copy(
        update={"min_iterations": 5, "min_seconds": 0.0, "repeats": 1}
    )

    result = measure(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), profile, protocol=quick)

    assert result.n >= 5 and result.median_ms > 0


@pytest.mark.skipif(HAS_TRTEXEC, reason="checks the message shown where trtexec is missing")
def test_trtexec_says_it_is_not_on_path():
    trtexec_profile = upstream_trtexec_profile()

    with pytest.raises(
        DepthbenchError, match="runs trtexec, which is not on PATH: install TensorRT"
    ):
        get_backend("trtexec").check_available(trtexec_profile)


def test_trtexec_command_carries_the_protocol_and_profile_flags(tmp_path):
    trtexec_profile = upstream_trtexec_profile()
    files = RunFiles("input", tmp_path / "in.bin", tmp_path / "times.json", tmp_path / "t.cache")

    command = trtexec_command(
        "trtexec", tmp_path / "m.onnx", trtexec_profile, trtexec_profile.protocol, files, True
    )

    assert command[0] == "trtexec"
    assert set(command[1:]) == {
        f"--onnx={tmp_path / 'm.onnx'}",
        f"--loadInputs=input:{tmp_path / 'in.bin'}",
        "--warmUp=200",
        "--iterations=10",
        "--duration=3",
        "--percentile=90,95,99",
        "--memPoolSize=workspace:4096",
        "--builderOptimizationLevel=3",
        f"--timingCacheFile={tmp_path / 't.cache'}",
        f"--exportTimes={tmp_path / 'times.json'}",
        "--useCudaGraph",
        "--useSpinWait",
        "--noDataTransfers",
        "--fp16",
    }


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRTEXEC, reason="needs trtexec (TensorRT) and an NVIDIA GPU")
def test_trtexec_measures_an_onnx_file(tmp_path):
    trtexec_profile = upstream_trtexec_profile()
    quick = trtexec_profile.protocol.model_copy(update={"min_seconds": 0.5, "repeats": 1})

    result = measure(nn.Conv2d(3, 8, 3), trtexec_profile, protocol=quick)

    assert result.n >= 10 and result.median_ms > 0


def test_exported_network_computes_what_torch_computes(tmp_path):
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, groups=8),
    ).eval()
    inputs = torch.randn(2, 3, 20, 20)

    path = export_onnx(module, (2, 3, 20, 20), tmp_path / "net.onnx")

    with torch.no_grad():
        expected = module(inputs).numpy()
    np.testing.assert_allclose(run_onnx(path, inputs.numpy()), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("spec", "activation"),
    [
        (ConvSpec(16, 24, 5, 2, 2, 1), "relu"),
        (ConvSpec(12, 12, 3, 1, 1, 12), "relu6"),
        (ConvSpec(8, 4, 1, 1, 0, 1), None),
    ],
)
def test_segment_onnx_is_the_conv_and_activation_it_describes(tmp_path, spec, activation):
    path = write_conv_onnx(spec, (2, spec.in_channels, 15, 15), activation, tmp_path / "seg.onnx")
    weights = {
        init.name: torch.from_numpy(numpy_helper.to_array(init).copy())
        for init in onnx.load(str(path)).graph.initializer
    }
    inputs = torch.randn(2, spec.in_channels, 15, 15)

    expected = functional.conv2d(
        inputs, weights["weight"], weights["bias"], spec.stride, spec.padding, groups=spec.groups
    )
    expected = {"relu": expected.clamp(min=0), "relu6": expected.clamp(0, 6), None: expected}[
        activation
    ]
    np.testing.assert_allclose(
        run_onnx(path, inputs.numpy()), expected.numpy(), rtol=1e-4, atol=1e-4
    )
