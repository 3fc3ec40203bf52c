"""ONNX files for the harness: networks via ``torch.onnx.export``, single convs written directly.

Exporter choice (torch 2.14): the TorchScript exporter (``dynamo=False``) exports MobileNetV2 in
about 1 s and writes one self-contained file; the default torch.export-based exporter takes about
5 s and splits the weights into a ``.data`` file. After ONNX Runtime's graph optimisation both give
the same graph (52 Conv, 35 Clip, 10 Add) and the same latency, so the faster one is used. It is
deprecated upstream; its deprecation warning is silenced here because it is a deliberate choice,
and the day it is removed the switch is ``dynamo=True, external_data=False``.

Latency-table segments are one Conv (+ activation) each; ``write_conv_onnx`` builds that graph with
``onnx.helper`` in milliseconds, which keeps a cold table build (171 segments) fast;
``write_identity_onnx`` writes the empty model whose latency is a call's fixed overhead.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from suite.core.chain import ConvSpec
from suite.errors import DepthbenchError

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"


def export_onnx(
    module: nn.Module, input_shape: tuple[int, ...], path: Path, dtype: torch.dtype = torch.float32
) -> Path:
    """Export ``module`` in eval mode for a fixed ``input_shape`` (N, C, H, W); check the file."""
    path = Path(path)
    if dtype != torch.float32:
        module = copy.deepcopy(module).to(dtype)
    example = torch.zeros(input_shape, dtype=dtype)
    try:
        with warnings.catch_warnings():
            # the exporter's notices about its own deprecation (see the module docstring)
            warnings.simplefilter("ignore", DeprecationWarning)
            # shapes are fixed per export, so values computed from them are constants by design
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
            )
        onnx.checker.check_model(str(path))
    except (RuntimeError, ValueError, onnx.checker.ValidationError) as err:
        raise DepthbenchError(
            f"cannot export {type(module).__name__} with input {tuple(input_shape)} to ONNX: {err}"
        ) from err
    return path


def write_conv_onnx(
    spec: ConvSpec,
    input_shape: tuple[int, int, int, int],
    activation: str | None,
    path: Path,
    seed: int = 0,
) -> Path:
    """Write one Conv (with bias) followed by ``activation`` ('relu', 'relu6' or None) as ONNX.

    The weights are seeded random numbers: latency does not depend on their values.
    """
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(
        (spec.out_channels, spec.in_channels // spec.groups, spec.kernel, spec.kernel),
        dtype=np.float32,
    )
    bias = rng.standard_normal(spec.out_channels, dtype=np.float32)
    initializers = [
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(bias, "bias"),
    ]
    conv_output = OUTPUT_NAME if activation is None else "conv"
    nodes = [
        helper.make_node(
            "Conv",
            [INPUT_NAME, "weight", "bias"],
            [conv_output],
            kernel_shape=[spec.kernel, spec.kernel],
            strides=[spec.stride, spec.stride],
            pads=[spec.padding] * 4,
            group=spec.groups,
        )
    ]
    if activation == "relu":
        nodes.append(helper.make_node("Relu", [conv_output], [OUTPUT_NAME]))
    elif activation == "relu6":
        initializers += [
            numpy_helper.from_array(np.float32(v), n) for v, n in ((0, "zero"), (6, "six"))
        ]
        nodes.append(helper.make_node("Clip", [conv_output, "zero", "six"], [OUTPUT_NAME]))
    elif activation is not None:
        raise DepthbenchError(f"unknown activation {activation!r}: use 'relu', 'relu6' or None")
    batch, _, height, width = input_shape
    out_size = [
        (size + 2 * spec.padding - spec.kernel) // spec.stride + 1 for size in (height, width)
    ]
    graph = helper.make_graph(
        nodes,
        "segment",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(input_shape))],
        [
            helper.make_tensor_value_info(
                OUTPUT_NAME, TensorProto.FLOAT, [batch, spec.out_channels, *out_size]
            )
        ],
        initializers,
    )
    return _save_graph(graph, path)


def write_identity_onnx(input_shape: tuple[int, int, int, int], path: Path) -> Path:
    """Write the model that returns its (float32) input: one call's cost with no compute."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME])],
        "identity",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, list(input_shape))],
    )
    return _save_graph(graph, path)


def _save_graph(graph: onnx.GraphProto, path: Path) -> Path:
    opset = helper.make_opsetid("", OPSET)
    # The oldest IR version that carries the opset: newer onnx writes IRs older runtimes reject.
    model = helper.make_model(
        graph, opset_imports=[opset], ir_version=helper.find_min_ir_version_for([opset])
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)
