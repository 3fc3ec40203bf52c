"""Exact merging as a property: for random conv runs, one merged conv computes what the run computes.

The reference is the unmerged run written with plain torch ops and the padding relocated to the
first conv (the trainable network's form). The tolerance is relative to the output's scale: fp32
rounding of the composed kernels, documented as 1e-4 relative in the README.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from suite.core.merge import AffineConv, add, compose

RELATIVE_TOLERANCE = 1e-4


@st.composite
def conv_runs(draw):
    """A run of 1-4 convs with random channels, kernels, strides, paddings and groups, plus BN."""
    channels = [draw(st.sampled_from([1, 2, 3, 4, 6]))]
    layers = []
    for _ in range(draw(st.integers(1, 4))):
        c_in = channels[-1]
        depthwise = draw(st.booleans())
        c_out = c_in if depthwise else draw(st.sampled_from([1, 2, 3, 4, 6]))
        divisors = [g for g in range(1, min(c_in, c_out) + 1) if c_in % g == 0 and c_out % g == 0]
        groups = c_in if depthwise else draw(st.sampled_from(divisors))
        kernel = draw(st.sampled_from([1, 2, 3, 5]))
        stride = draw(st.sampled_from([1, 1, 2]))
        padding = draw(st.integers(0, kernel // 2))
        conv = nn.Conv2d(
            c_in, c_out, kernel, stride, padding, groups=groups, bias=draw(st.booleans())
        )
        bn = nn.BatchNorm2d(c_out)
        layers.append((conv, bn))
        channels.append(c_out)
    seed = draw(st.integers(0, 2**16))
    size = draw(st.integers(6, 20))
    return layers, seed, size


def _randomize(layers, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv, bn in layers:
            for tensor in (conv.weight, conv.bias) if conv.bias is not None else (conv.weight,):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=generator))
            bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.weight.copy_(torch.randn(n, generator=generator))
            bn.bias.copy_(torch.randn(n, generator=generator))
            bn.eval()


def relocated_padding(layers) -> int:
    """Total padding on the first conv so the rest run unpadded: e_{p-1} = s_p * e_p + p_p."""
    border = 0
    for conv, _ in reversed(layers):
        border = conv.stride[0] * border + conv.padding[0]
    return border


def fits(layers, size: int) -> bool:
    """Whether every conv of the relocated run still has a non-empty output at this input size."""
    size += 2 * relocated_padding(layers)
    for conv, _ in layers:
        if size < conv.kernel_size[0]:
            return False
        size = (size - conv.kernel_size[0]) // conv.stride[0] + 1
    return True


def run_relocated(layers, x):
    """The unmerged run with all padding on its input: the reference the merge must equal."""
    x = F.pad(x, [relocated_padding(layers)] * 4)
    for conv, bn in layers:
        x = bn(F.conv2d(x, conv.weight, conv.bias, stride=conv.stride, groups=conv.groups))
    return x


def merge_run(layers) -> AffineConv:
    merged = AffineConv.from_conv_bn(*layers[0])
    for conv, bn in layers[1:]:
        merged = compose(merged, AffineConv.from_conv_bn(conv, bn))
    return merged


def relative_error(actual, expected) -> float:
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-6)).item()


@settings(max_examples=200, deadline=None)
@given(conv_runs())
def test_a_merged_run_equals_the_run_with_relocated_padding(run):
    layers, seed, size = run
    assume(fits(layers, size))
    _randomize(layers, seed)
    x = torch.randn(
        2, layers[0][0].in_channels, size, size, generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        expected = run_relocated(layers, x)
        merged = merge_run(layers)
        actual = merged.to_conv()(x)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < RELATIVE_TOLERANCE
    assert merged.kernel == _expected_kernel(layers)
    all_same_groups = len({conv.groups for conv, _ in layers}) == 1
    assert (merged.groups == layers[0][0].groups) if all_same_groups else merged.groups == 1


def _expected_kernel(layers) -> int:
    """K = k1 + (k2 - 1) * s1, and on, with strides multiplying."""
    kernel, stride = 1, 1
    for conv, _ in layers:
        kernel += (conv.kernel_size[0] - 1) * stride
        stride *= conv.stride[0]
    return kernel


@settings(max_examples=100, deadline=None)
@given(conv_runs(), st.booleans())
def test_a_residual_block_folds_into_one_conv(run, projection):
    """x + block(x) (identity) or proj(x) + block(x) (1x1 strided projection) as one conv."""
    layers, seed, size = run
    c_in, c_out = layers[0][0].in_channels, layers[-1][0].out_channels
    stride = 1
    for conv, _ in layers:
        stride *= conv.stride[0]
        # a residual needs 'same'-style padding so that the block keeps the skip's alignment
        conv.padding = ((conv.kernel_size[0] - 1) // 2,) * 2
        assume(conv.kernel_size[0] % 2 == 1)
    assume(projection or (stride == 1 and c_in == c_out))
    assume(fits(layers, size))
    _randomize(layers, seed)
    shortcut = (
        (nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        if projection
        else None
    )
    if shortcut:
        _randomize([shortcut], seed + 1)
    x = torch.randn(2, c_in, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        body = run_relocated(layers, x)
        skip = x if shortcut is None else shortcut[1](shortcut[0](x))
        expected = body + skip[..., : body.shape[-2], : body.shape[-1]]
        skip_map = AffineConv.from_conv_bn(*shortcut) if shortcut else AffineConv.identity(c_in, x)
        actual = add(merge_run(layers), skip_map).to_conv()(x)
    assert relative_error(actual, expected) < RELATIVE_TOLERANCE


def test_depthwise_runs_stay_depthwise():
    layers = [(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8)) for _ in range(3)]
    _randomize(layers, 0)
    conv = merge_run(layers).to_conv()
    assert conv.groups == 8 and conv.kernel_size == (7, 7)
