"""ONNX files for the harness: networks via ``torch.onnx.export``, single convs written directly.

Exporter choice (torch 2.14): the TorchScript exporter (``dynamo=False``) exports MobileNetV2 in
about 1 s and writes one self-contained file; the default torch.export-based exporter takes about
5 s and splits the weights into a ``.data`` file. After ONNX Runtime's graph optimisation both give
the same graph (52 Conv, 35 Clip, 10 Add) and the same latency, so the faster one is used. It is
deprecated upstream; its deprecation warning is silenced here because it is a deliberate choice,
and the day it is removed the switch is ``dynamo=True, external_data=False``.

Latency-table segments are one Conv (+ activation) each; ``write_conv_onnx`` builds that graph with
``onnx.helper`` in milliseconds, which keeps a cold table build (171 segments) fast; it also writes
N copies of the conv side by side for the table's slope method.
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
    copies: int = 1,
) -> Path:
    """Write one Conv (with bias) followed by ``activation`` ('relu', 'relu6' or None) as ONNX.

    ``copies`` > 1 writes that many such convs side by side, each with weights of its own, all
    reading the one input, with outputs ``output_0``, ``output_1``...: the latency table's slope
    method times them against their number. The weights are seeded random numbers (latency does
    not depend on their values; copy 0 has those of the single conv).
    """
    if activation not in ("relu", "relu6", None):
        raise DepthbenchError(f"unknown activation {activation!r}: use 'relu', 'relu6' or None")
    rng = np.random.default_rng(seed)
    outputs = [OUTPUT_NAME] if copies == 1 else [f"{OUTPUT_NAME}_{k}" for k in range(copies)]
    nodes, initializers = [], []
    for k, output in enumerate(outputs):
        suffix = "" if copies == 1 else f"_{k}"
        weight = rng.standard_normal(
            (spec.out_channels, spec.in_channels // spec.groups, spec.kernel, spec.kernel),
            dtype=np.float32,
        )
        bias = rng.standard_normal(spec.out_channels, dtype=np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"weight{suffix}"),
            numpy_helper.from_array(bias, f"bias{suffix}"),
        ]
        conv_output = output if activation is None else f"conv{suffix}"
        nodes.append(
            helper.make_node(
                "Conv",
                [INPUT_NAME, f"weight{suffix}", f"bias{suffix}"],
                [conv_output],
                kernel_shape=[spec.kernel, spec.kernel],
                strides=[spec.stride, spec.stride],
                pads=[spec.padding] * 4,
                group=spec.groups,
            )
        )
        if activation == "relu":
            nodes.append(helper.make_node("Relu", [conv_output], [output]))
        elif activation == "relu6":
            nodes.append(helper.make_node("Clip", [conv_output, "zero", "six"], [output]))
    if activation == "relu6":
        initializers += [
            numpy_helper.from_array(np.float32(v), n) for v, n in ((0, "zero"), (6, "six"))
        ]
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
                output, TensorProto.FLOAT, [batch, spec.out_channels, *out_size]
            )
            for output in outputs
        ],
        initializers,
    )
    opset = helper.make_opsetid("", OPSET)
    # The oldest IR version that carries the opset: newer onnx writes IRs older runtimes reject.
    model = helper.make_model(
        graph, opset_imports=[opset], ir_version=helper.find_min_ir_version_for([opset])
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)
