"""An analytic cost model as a backend: plan without the hardware, deterministically.

The latency of a network is the sum over the ops it runs of a roofline estimate plus a fixed
per-op cost::

    latency = sum over ops of  max(MACs / (peak · efficiency[kind]),  bytes / bandwidth)
                               + launch_overhead

- An *op* is every aten operator the forward pass dispatches that reads a tensor and is not a
  view (reshapes, flattens and transposes move no data and launch nothing). The ops are read off
  the module itself, run once at the profile's batch, resolution and precision under a
  ``TorchDispatchMode`` on the ``meta`` device (shapes only, no arithmetic), so functional ops a
  forward hook would miss (residual additions, ``adaptive_avg_pool2d``) count too.
- *MACs*: convolutions, output elements x (input channels per group) x kernel area; matrix
  products (``linear``), M x N x K. Every other op (activations, additions, pooling, BN) is
  memory-bound: it has no compute term. Inference batch norm is free: it is folded into the conv
  before it (the deploy path folds it before export; ONNX Runtime and TensorRT fold any left).
- *kind* picks the efficiency: ``depthwise_conv`` (one input channel per output channel),
  ``dense_conv`` (every other convolution), ``linear`` (matrix products).
- *bytes*: every tensor the op reads (activations, weights, bias) and every tensor it writes, at
  their element size, so an fp16 profile moves half the bytes of an fp32 one.

Every repeat returns the same ``min_iterations`` samples, all equal to the prediction: the
harness's statistics then give IQR 0, robust CoV 0, a bootstrap interval [x, x] and a stable
result, and any budget decision made on the number is the same on a busy machine as on a quiet
one. The parameters live in the profile's ``costmodel`` section (``CostModelSettings``), so they
are part of its hash; docs/measurement.md says how the shipped profile was calibrated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from suite.measure.backends import register_backend
from suite.measure.profiles import CostModelSettings, Profile, Protocol

OpKind = Literal["dense_conv", "depthwise_conv", "linear", "memory"]
_MATRIX_PRODUCTS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
}

# Inference BN is folded into the conv before it: the deploy path folds it before export, and
# ONNX Runtime and TensorRT fold any that is left, so it costs nothing where it runs.
_FOLDED = {
    torch.ops.aten.native_batch_norm.default,
    torch.ops.aten._native_batch_norm_legit_no_training.default,
}


@dataclass(frozen=True)
class OpCost:
    """What the model charges one op for: its name, kind, multiply-accumulates and bytes moved."""

    name: str
    kind: OpKind
    macs: int
    bytes: int

    def seconds(self, settings: CostModelSettings) -> float:
        """The op's roofline time plus the launch overhead."""
        compute = 0.0
        if self.kind != "memory":
            efficiency = getattr(settings.efficiency, self.kind)
            compute = self.macs / (settings.peak_gmacs * 1e9 * efficiency)
        memory = self.bytes / (settings.bandwidth_gbs * 1e9)
        return max(compute, memory) + settings.launch_overhead_us * 1e-6


def count_ops(module: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype) -> list[OpCost]:
    """The ops ``module`` runs on one ``input_shape`` batch of ``dtype``, in eval mode."""
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    on_meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    recorder = _Recorder()
    with _eval_mode(module), torch.no_grad(), recorder:
        functional_call(module, on_meta, (torch.empty(input_shape, dtype=dtype, device="meta"),))
    return recorder.ops


def predict_ms(
    module: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype, settings: CostModelSettings
) -> float:
    """The cost model's latency of ``module`` on one batch, in milliseconds."""
    return sum(op.seconds(settings) for op in count_ops(module, input_shape, dtype)) * 1e3


def _check_available(profile: Profile) -> None:
    """The cost model needs nothing but torch, which the suite always has."""


@register_backend("costmodel", model_kind="torch", check_available=_check_available)
def run_repeat(
    model: nn.Module, profile: Profile, protocol: Protocol, inputs: np.ndarray
) -> np.ndarray:
    dtype = torch.from_numpy(inputs[:0]).dtype
    latency = predict_ms(model, inputs.shape, dtype, profile.costmodel)
    return np.full(protocol.min_iterations, latency, dtype=np.float64)


class _Recorder(TorchDispatchMode):
    """Records the cost of every non-view op that reads a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpCost] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's API
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if inputs and not func.is_view and func not in _FOLDED:
            outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            moved = sum(t.numel() * t.element_size() for t in [*inputs, *outputs])
            kind, macs = _compute(func, args, outputs)
            self.ops.append(OpCost(str(func), kind, macs, moved))
        return out


def _compute(func, args: tuple, outputs: list[torch.Tensor]) -> tuple[OpKind, int]:  # noqa: ANN001
    """The kind and MACs of one op; ops without arithmetic worth counting are memory-bound."""
    if func is torch.ops.aten.convolution.default:
        data, weight = args[0], args[1]
        transposed, groups = args[6], args[8]
        kernel_area = weight[0, 0].numel()
        if transposed:  # every input element meets (C_out / groups) x kernel weights
            macs = data.numel() * weight.shape[1] * kernel_area
        else:  # every output element sums (C_in / groups) x kernel products
            macs = outputs[0].numel() * weight.shape[1] * kernel_area
        in_per_group = weight.shape[0] // groups if transposed else weight.shape[1]
        depthwise = groups > 1 and in_per_group == 1
        return ("depthwise_conv" if depthwise else "dense_conv"), macs
    if func in _MATRIX_PRODUCTS:
        with_bias = func in (torch.ops.aten.addmm.default, torch.ops.aten.baddbmm.default)
        first = args[1] if with_bias else args[0]  # (..., M, K): each output sums K products
        return "linear", outputs[0].numel() * first.shape[-1]
    return "memory", 0


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Count the inference graph (as the ONNX export does) and restore each submodule's mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training
